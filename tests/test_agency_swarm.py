"""Agency Swarm 1.x, real, in a Python 3.12 venv: examples/agency_swarm's server, many users, a restart, every span in its chat's session.

Agency Swarm 1.x needs Python >= 3.12 and pins openai-agents and openai (it cannot share the test
venv), so it is installed into a venv of its own, cached under ~/.cache/sessiontrace-test/ (see
tests/backends.py); the server runs there with this checkout's `sdk` on its PYTHONPATH, exporting
over OTLP/HTTP to a loopback receiver, against the loopback model server.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from backends import cached_venv
from frameworks import NETWORK_LOG
from llm_server import LLMServer
from otlp_receiver import OTLPReceiver
from test_multi_tenant import ServerProcess, child_env, finished_spans

pytestmark = [pytest.mark.frameworks, pytest.mark.subprocess]

SWARM_VERSION = "1.11.0"
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLE = ROOT / "examples" / "agency_swarm"
USERS, MESSAGES, RESTART_AFTER = 10, 5, 2


def python_312() -> str | None:
    """A Python >= 3.12 interpreter on this machine (pyenv's shims refuse versions not selected)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (12, 13)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[23]*/bin/python3.1[23]")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="module")
def swarm_python() -> str:
    """The venv's python, with Agency Swarm and sessiontrace's dependencies (not sessiontrace: it comes from this checkout)."""
    python = python_312()
    if python is None:
        pytest.skip(
            "Agency Swarm 1.x needs Python >= 3.12, and none was found (python3.12, ~/.pyenv/versions)"
        )
    try:
        venv = cached_venv(
            f"agency-swarm-{SWARM_VERSION}-py3.12",
            f"agency-swarm=={SWARM_VERSION}",
            "opentelemetry-sdk>=1.45,<2",
            "opentelemetry-exporter-otlp-proto-http>=1.45,<2",
            "wrapt>=1.16",
            python=python,
        )
    except pytest.fail.Exception as failed:
        pytest.skip(
            f"cannot build the Agency Swarm {SWARM_VERSION} venv with {python}: {str(failed)[-1500:]}"
        )
    return str(venv / "bin" / "python")


def test_ten_users_five_messages_across_a_restart_each_chat_one_session_and_trace(swarm_python, tmp_path):
    """Acceptance: 2 agents, 10 users x 5 streamed messages at once, a server restart after message 2: every span in its user's chat session, the chat continuing in the same trace."""
    network_log = tmp_path / "network.log"
    with LLMServer() as llm, OTLPReceiver() as receiver:
        env = child_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            SESSIONTRACE_FLUSH_TIMEOUT="10",
            OPENAI_BASE_URL=llm.openai_url,
            OPENAI_API_KEY="test-key",  # the Agents SDK would export with it: the server turns that off
            AGENCY_MODEL="script",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), str(TESTS / "network_guard")]),
            **{NETWORK_LOG: str(network_log)},
        )
        report = tmp_path / "report.jsonl"
        outputs = []
        for first, last in ((0, RESTART_AFTER), (RESTART_AFTER, MESSAGES)):
            server = ServerProcess(
                tmp_path,
                env,
                "--data",
                str(tmp_path / "chats"),
                program=(swarm_python, str(EXAMPLE / "server.py")),
            )
            try:
                load = subprocess.run(
                    [
                        sys.executable,
                        str(EXAMPLE / "load.py"),
                        server.url,
                        "--users",
                        str(USERS),
                        "--first",
                        str(first),
                        "--messages",
                        str(last),
                        "--run",
                        "t",
                        "--report",
                        str(report),
                        "--echo",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert load.returncode == 0, load.stdout + load.stderr + server.stderr()[-3000:]
                outputs.append(server.stop(signal.SIGTERM, timeout=60))
            finally:
                server.kill()
        requests = len(llm.requests)
        spans = finished_spans(receiver.spans)
    assert all("internal_errors=0" in output for output in outputs), outputs
    assert (
        network_log.read_text() == ""
    )  # the guard ran in the servers (it writes the file at exit) and saw nothing

    chats = {f"t-chat-{i}" for i in range(USERS)}
    segments = defaultdict(list)
    for span in spans:
        if span.attributes.get("sessiontrace.span.kind") == "session":
            segments[span.attributes["session.id"]].append(span)
    assert set(segments) == chats
    trace_of = {}
    for chat, found in segments.items():
        first, second = sorted(found, key=lambda s: s.attributes["session.segment"])
        assert first.trace_id == second.trace_id  # the restart continued the chat's trace
        assert (first.attributes["session.segment"], second.attributes["session.segment"]) == (1, 2)
        assert second.attributes["session.resumed"] is True
        assert (first.trace_id, first.span_id) in {(t, s) for t, s, _ in second.links}
        assert first.attributes["gen_ai.conversation.id"] == chat
        trace_of[chat] = first.trace_id

    # FastAPI records its own request spans (a trace per HTTP request, before the chat is known):
    # those alone are outside the chats' sessions.
    http = [s for s in spans if s.scope == "fastapi"]
    assert all("session.id" not in s.attributes for s in http)
    work = [
        s for s in spans if s.attributes.get("sessiontrace.span.kind") != "session" and s.scope != "fastapi"
    ]
    for span in work:
        chat = span.attributes.get("session.id")
        assert chat in chats, (span.name, chat)
        assert span.trace_id == trace_of[chat], span.name
        for name, attributes in span.events:
            if name == "orders.lookup":  # the tool's argument came from this chat's message
                assert str(attributes["query"]).startswith(f"{chat} message"), (chat, attributes)
    per_chat = defaultdict(Counter)
    for span in work:
        per_chat[span.attributes["session.id"]][span.name] += 1
    for chat in chats:
        assert per_chat[chat]["invoke_agent CEO"] == MESSAGES, per_chat[chat]
        assert per_chat[chat]["invoke_agent Worker"] == MESSAGES
        assert per_chat[chat]["execute_tool lookup_order"] == MESSAGES
        assert per_chat[chat]["execute_tool orders.lookup"] == MESSAGES
    model = [s for s in work if s.attributes.get("sessiontrace.span.kind") == "llm"]
    assert len(model) == requests == USERS * MESSAGES * 4  # CEO, Worker x2, CEO: one span per request
