"""The multi-tenant chat example, run for real: a server subprocess, 50 concurrent users, a loopback OTLP backend.

The server (examples/multi_tenant_server/server.py) exports over OTLP/HTTP to an `OTLPReceiver`
set through OTEL_EXPORTER_OTLP_ENDPOINT, so the spans checked here are the ones that crossed the
wire. The load script (load.py) drives the users and writes one JSON line per reply (conversation,
request id, session id, trace id), which is what each exported span is checked against.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from otlp_receiver import OTLPReceiver, ReceivedSpan

pytestmark = pytest.mark.subprocess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multi_tenant_server"
SERVER = EXAMPLE / "server.py"
LOAD = EXAMPLE / "load.py"
USERS, MESSAGES, BURST = 50, 4, 2
TURNS = MESSAGES + BURST
PORT_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+) port=\d+")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any SESSIONTRACE_/OTEL_ setting of the developer's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"  # an SDK bug in the server fails the test
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServerProcess:
    """The example server (or `program`, another that prints the same line) as a child process on a free port of 127.0.0.1."""

    def __init__(
        self,
        cwd: Path,
        env: dict[str, str],
        *args: str,
        program: tuple[str, ...] = (sys.executable, str(SERVER)),
    ) -> None:
        self.stderr_path = cwd / "server.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [*program, "--port", "0", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_port(timeout=20)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._lines.put(line)
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str | None:
        line = self._lines.get(timeout=timeout)
        if line is not None:
            self.stdout.append(line)
        return line

    def _wait_for_port(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._next_line(max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.kill()
                pytest.fail(f"the server printed no port within {timeout} s; stderr:\n{self.stderr()}")
            if line is None:
                self.kill()  # it has exited: this waits for it and closes its files
                pytest.fail(f"the server exited ({self.proc.returncode}) before listening:\n{self.stderr()}")
            match = PORT_LINE.search(line)
            if match:
                return match.group(1)

    def stop(self, signum: int, timeout: float = 20) -> str:
        """Signal the server, wait for it to exit on its own, and return everything it printed."""
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server did not stop within {timeout} s of signal {signum}:\n{self.stderr()}")
        while self._next_line(timeout=5) is not None:
            pass
        self._reader.join(5)
        assert self.proc.returncode == 0, f"server exited {self.proc.returncode}:\n{self.stderr()}"
        return "".join(self.stdout)

    def kill(self) -> None:
        """Kill the server if it still runs, and release its pipes and files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._stderr.close()

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (also after `kill()` closed the file)."""
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()


def finished_spans(received: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The received spans without start markers (a session still `running`); each span must arrive once."""
    spans = [s for s in received if s.attributes.get("session.state") != "running"]
    duplicated = [key for key, n in Counter((s.trace_id, s.span_id) for s in spans).items() if n > 1]
    assert not duplicated, f"spans exported twice: {duplicated[:5]}"
    return spans


def post(url: str, user: str, message: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps({"user": user, "message": message}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@dataclass
class ChatRun:
    load: subprocess.CompletedProcess[str]
    replies: list[dict[str, Any]]
    server_output: str
    received: list[ReceivedSpan]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatRun]:
    """One real run, shared by the tests below: server, 50 users, SIGTERM, every span received."""
    cwd = tmp_path_factory.mktemp("multi_tenant")
    report = cwd / "replies.jsonl"
    with OTLPReceiver() as receiver:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, SESSIONTRACE_FLUSH_TIMEOUT="10")
        server = ServerProcess(cwd, env)
        try:
            args = ["--users", str(USERS), "--messages", str(MESSAGES), "--burst", str(BURST)]
            load = subprocess.run(
                [sys.executable, str(LOAD), server.url, *args, "--report", str(report)],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            output = server.stop(signal.SIGTERM)
        finally:
            server.kill()
        replies = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
        yield ChatRun(load, replies, output, receiver.spans)


def test_load_script_reports_no_history_mixup(chat_run):
    """Fifty concurrent users each get every reply, history and trace of their own conversation only, and are refused each other's."""
    load = chat_run.load
    assert load.returncode == 0, load.stdout + load.stderr
    assert f"{USERS * TURNS}/{USERS * TURNS} messages answered" in load.stdout
    assert f"{USERS}/{USERS} conversations intact, 0 mix-ups, 0 failed requests" in load.stdout
    assert f"{USERS}/{USERS} cross-tenant requests refused" in load.stdout
    assert len(chat_run.replies) == USERS * TURNS
    turns: dict[str, list[int]] = defaultdict(list)
    for reply in chat_run.replies:
        assert reply["session_id"] == reply["conversation_id"]
        turns[reply["conversation_id"]].append(reply["turn"])
    assert len(turns) == USERS
    assert all(sorted(numbers) == list(range(1, TURNS + 1)) for numbers in turns.values())


def test_every_exported_span_belongs_to_the_conversation_of_its_request(chat_run):
    """Span by span, every exported span (thread-pool model and tool spans included) is in the session and trace of the request that caused it, and the counts match the messages sent."""
    assert chat_run.load.returncode == 0, chat_run.load.stdout + chat_run.load.stderr
    stats = dict(re.findall(r"(\w+)=(\d+)", chat_run.server_output.splitlines()[-1]))
    assert stats["spans_dropped"] == "0", chat_run.server_output
    assert stats["internal_errors"] == "0", chat_run.server_output
    assert stats["spans_exported"] == str(len(chat_run.received)), chat_run.server_output
    spans = finished_spans(chat_run.received)
    by_id = {span.span_id: span for span in spans}
    owner = {r["conversation_id"]: r["user"] for r in chat_run.replies}
    by_request = {r["request_id"]: r for r in chat_run.replies}
    assert len(by_request) == USERS * TURNS

    # Each trace is one conversation's session: one root (the session span), one session.id throughout.
    traces: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        assert span.resource["service.name"] == "multi-tenant-chat"
        assert span.attributes.get("session.id") in owner, f"span outside every conversation: {span}"
        traces[span.trace_id].append(span)
    session_of_trace: dict[str, str] = {}
    for trace_id, members in traces.items():
        roots = [s for s in members if not s.parent_span_id]
        assert len(roots) == 1, f"trace {trace_id} has {len(roots)} roots"
        root = roots[0]
        conversation = root.attributes["session.id"]
        assert root.name == "chat"
        assert root.attributes["sessiontrace.span.kind"] == "session"
        assert root.attributes["chat.conversation_id"] == conversation
        assert root.attributes["user.id"] == owner[conversation]
        assert root.attributes["session.state"] == "success"
        for span in members:
            assert span.attributes["session.id"] == conversation, f"{span.name} in {conversation}'s trace"
            assert span is root or by_id[span.parent_span_id].trace_id == trace_id
        session_of_trace[trace_id] = conversation
    # No idle period in this run: one session (one trace) per conversation.
    assert sorted(session_of_trace.values()) == sorted(owner)

    def request_of(span: ReceivedSpan) -> dict[str, Any]:
        """The reply (request) whose chat.turn span is this span's nearest chat.turn ancestor."""
        node = span
        while node.name != "chat.turn":
            node = by_id[node.parent_span_id]
        return by_request[node.attributes["chat.request_id"]]

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    seen_requests: set[str] = set()
    for span in spans:
        conversation = span.attributes["session.id"]
        if span.parent_span_id == "":
            continue
        request = request_of(span)
        assert request["conversation_id"] == conversation, f"{span.name} of {request} in {conversation}"
        assert request["trace_id"] == span.trace_id
        parent = by_id[span.parent_span_id]
        if span.name == "chat.turn":
            assert parent.parent_span_id == "", "a turn sits right under its conversation's session span"
            assert span.attributes["chat.conversation_id"] == conversation
            assert span.attributes["chat.user"] == owner[conversation]
            assert span.attributes["chat.turn"] == request["turn"]
            assert span.attributes["chat.request_id"] not in seen_requests
            seen_requests.add(span.attributes["chat.request_id"])
        elif span.name == "invoke_agent chat-agent":
            assert parent.name == "chat.turn"
        elif span.name == "fake_model" or span.name.startswith("execute_tool "):
            assert parent.name == "invoke_agent chat-agent"
            (event_name, event), *_ = span.events
            assert event["thread"].startswith("chat-pool"), "model and tools run in the thread pool"
            if span.name == "fake_model":
                assert event_name == "model.input"
                assert event["message"] == request["message"]
            else:
                assert event_name == "tool.input"
                assert event["argument"] in request["message"]
        else:
            pytest.fail(f"unexpected span {span.name!r}")
        kind = "tool" if span.name.startswith("execute_tool ") else span.name
        counts[conversation][kind] += 1

    assert seen_requests == set(by_request)
    for conversation in owner:
        expected = {"chat.turn": TURNS, "invoke_agent chat-agent": TURNS, "fake_model": TURNS, "tool": TURNS}
        assert counts[conversation] == expected, conversation
    assert len(spans) == USERS * (1 + 4 * TURNS)


def test_idle_conversation_ends_its_session_and_the_next_message_resumes_it(tmp_path):
    """After the idle timeout a conversation's session ends as success; its next message resumes it:
    same session id, same trace, segment 2 linked to segment 1, with the history kept."""
    with OTLPReceiver() as receiver:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, SESSIONTRACE_FLUSH_TIMEOUT="10")
        server = ServerProcess(tmp_path, env, "--idle-timeout", "0.3")
        try:
            url = f"{server.url}/conversations/c-idle/messages"
            first = post(url, "ada", "where is order A-1?")
            time.sleep(1.0)
            second = post(url, "ada", "and A-2?")
            server.stop(signal.SIGINT)
        finally:
            server.kill()
        spans = finished_spans(receiver.spans)
    assert first["session_id"] == second["session_id"] == "c-idle"
    assert first["trace_id"] == second["trace_id"]
    assert (first["segment"], second["segment"]) == (1, 2)
    assert second["history"] == ["where is order A-1?", "and A-2?"]
    assert_two_linked_segments(spans, first, second)


def test_a_server_restart_between_two_messages_continues_the_conversation_in_the_same_trace(tmp_path):
    """The server is stopped after a conversation's first message and started again (same place, so
    same session store): the second message continues the session, in the same trace."""
    with OTLPReceiver() as receiver:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, SESSIONTRACE_FLUSH_TIMEOUT="10")
        replies = []
        for message in ("where is order A-1?", "and A-2?"):
            server = ServerProcess(tmp_path, env)
            try:
                replies.append(post(f"{server.url}/conversations/c-restart/messages", "ada", message))
                server.stop(signal.SIGTERM)
            finally:
                server.kill()
        spans = finished_spans(receiver.spans)
    first, second = replies
    assert first["session_id"] == second["session_id"] == "c-restart"
    assert first["trace_id"] == second["trace_id"]
    assert (first["segment"], second["segment"]) == (1, 2)
    assert second["history"] == ["and A-2?"]  # the demo's history is in memory; the session is not
    assert_two_linked_segments(spans, first, second)


def assert_two_linked_segments(spans: list[Any], first: dict[str, Any], second: dict[str, Any]) -> None:
    sessions = sorted((s for s in spans if s.name == "chat"), key=lambda s: s.attributes["session.segment"])
    assert [
        (s.trace_id, s.attributes["session.segment"], s.attributes["session.state"]) for s in sessions
    ] == [
        (first["trace_id"], 1, "success"),
        (second["trace_id"], 2, "success"),
    ]
    assert sessions[0].parent_span_id == sessions[1].parent_span_id == ""  # each segment is a root
    assert [(trace_id, span_id) for trace_id, span_id, _ in sessions[1].links] == [
        (sessions[0].trace_id, sessions[0].span_id)
    ]
    turns = {s.attributes["chat.request_id"]: s for s in spans if s.name == "chat.turn"}
    assert turns[first["request_id"]].parent_span_id == sessions[0].span_id
    assert turns[second["request_id"]].parent_span_id == sessions[1].span_id
    assert all(s.attributes["session.id"] == first["session_id"] for s in spans)


class _MixingHandler(http.server.BaseHTTPRequestHandler):
    """A deliberately broken chat server: conversations have owners, but share one history."""

    history: ClassVar[list[str]] = []
    owners: ClassVar[dict[str, str]] = {}
    lock = threading.Lock()

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        conversation = self.path.split("/")[2]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            if self.owners.setdefault(conversation, body["user"]) != body["user"]:
                return self._answer(403, {})
            self.history.append(body["message"])  # the bug: one history for every conversation
            history = list(self.history)
        trace_id = f"{zlib.crc32(conversation.encode()):032x}"
        reply = {"conversation_id": conversation, "user": body["user"], "turn": len(history)}
        reply.update(reply=body["message"], history=history, request_id="r", trace_id=trace_id)
        return self._answer(200, {**reply, "session_id": conversation})

    def do_GET(self) -> None:
        conversation = self.path.split("/")[2]
        user = self.path.rsplit("user=", 1)[-1]
        with self.lock:
            if self.owners.get(conversation) != user:
                return self._answer(403, {})
            return self._answer(200, {"conversation_id": conversation, "history": list(self.history)})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_load_script_detects_a_server_that_mixes_histories(tmp_path):
    """The load script fails (exit 1, mix-ups listed) against a server whose conversations share one history, so its OK above means something."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MixingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        load = subprocess.run(
            [sys.executable, str(LOAD), f"http://127.0.0.1:{server.server_address[1]}", "--users", "5"],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert load.returncode == 1, load.stdout + load.stderr
    assert "load: FAILED" in load.stdout
    assert re.search(r"\b[1-9]\d* mix-ups", load.stdout), load.stdout
    assert "history" in load.stdout
    assert "0 failed requests" in load.stdout
    assert "5/5 cross-tenant requests refused" in load.stdout
