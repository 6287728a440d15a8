"""Sessions that survive restarts: the session store, resume, crashes and lifecycle callbacks.

Cross-process behaviour runs real child processes against real SQLite files (and a real
redis-server where the `store_url` fixture gives Redis); in-process behaviour uses the memory store.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

import sdk
from sdk import runtime
from sdk.export.jsonl import read_otlp_json_spans
from sdk.store import SegmentUpdate, SessionRecord, SessionStore, StoreError
from sdk.store.memory import MemoryStore
from sdk.store.sqlite import SQLiteStore
from sdk.testing import CapturedSpans, FakeClock, capture

try:
    from redis_server import RedisServer, redis_server_available
except ImportError:  # pragma: no cover - the Redis helper lands with the Redis store
    RedisServer = None  # type: ignore[assignment,misc]

    def redis_server_available() -> bool:  # type: ignore[misc]
        return False


def session_spans(captured: CapturedSpans) -> list[ReadableSpan]:
    return [s for s in captured.spans() if (s.attributes or {}).get("sessiontrace.span.kind") == "session"]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values())) for kv in span.get("attributes", ())}


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"
    env.update(extra)
    return env


def run_child(script: str, cwd: Path, store: str, timeout: float = 60) -> str:
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=child_env(SESSIONTRACE_SESSION_STORE=store, SESSIONTRACE_EXPORTER="file"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert child.returncode == 0, child.stderr
    return child.stdout


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A session_store setting for child processes: the default SQLite file, or a real redis-server."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    if not redis_server_available():
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with RedisServer(tmp_path / "redis") as server:
        yield server.url


def open_test_store(url: str, cwd: Path) -> SessionStore:
    if url == "sqlite":
        return SQLiteStore(cwd / ".sessiontrace" / "sessions.db")
    from sdk.store.redis import RedisStore

    return RedisStore(url, expiry=24 * 3600.0)


TURN = """
import sdk
from opentelemetry import trace
sdk.init(service_name="chat-server")
with sdk.session("chat", session_id="conv-1", user_id="u-1", resume=True) as s:
    with trace.get_tracer("tests").start_as_current_span("turn"):
        pass
    print(s.trace_id, s.span_id, s.segment)
"""


def session_roots(cwd: Path, session_id: str) -> list[dict[str, Any]]:
    spans = read_otlp_json_spans(cwd / ".sessiontrace" / "traces")
    roots = [
        s
        for s in spans
        if attrs(s).get("sessiontrace.span.kind") == "session" and attrs(s)["session.id"] == session_id
    ]
    return sorted(roots, key=lambda s: int(attrs(s).get("session.segment", 1)))


@pytest.mark.subprocess
def test_resume_across_process_restarts_continues_the_same_trace(tmp_path: Path, store_url: str) -> None:
    """Three processes, one after the other, resume one conversation: one session.id, one trace,
    segments 1, 2, 3, each linked to the one before; the store holds the three segments."""
    outputs = [run_child(TURN, tmp_path, store_url).split() for _ in range(3)]
    trace_ids = {out[0] for out in outputs}
    assert len(trace_ids) == 1
    assert [int(out[2]) for out in outputs] == [1, 2, 3]

    roots = session_roots(tmp_path, "conv-1")
    assert [int(attrs(r)["session.segment"]) for r in roots] == [1, 2, 3]
    assert [r["spanId"] for r in roots] == [out[1] for out in outputs]
    assert {r["traceId"] for r in roots} == trace_ids
    assert all(not r.get("parentSpanId") for r in roots), "each segment is a root span of the trace"
    assert "links" not in roots[0] or not roots[0]["links"]
    for before, after in itertools.pairwise(roots):
        assert [link["spanId"] for link in after["links"]] == [before["spanId"]]
        assert after["links"][0]["traceId"] == before["traceId"]
    turns = [s for s in read_otlp_json_spans(tmp_path / ".sessiontrace" / "traces") if s["name"] == "turn"]
    assert len(turns) == 3
    assert {t["traceId"] for t in turns} == trace_ids
    assert {attrs(t)["session.id"] for t in turns} == {"conv-1"}

    store = open_test_store(store_url, tmp_path)
    record = store.get("conv-1")
    assert record is not None
    assert record.trace_id == trace_ids.pop()
    assert record.user_id == "u-1"
    assert [s.number for s in record.segments] == [1, 2, 3]
    assert list(record.span_ids) == [out[1] for out in outputs]
    assert [s.state for s in record.segments] == ["success"] * 3
    assert record.usage.spans == 6  # each segment: its root and one turn


RACER = """
import pathlib, sys, time
import sdk
sdk.init(service_name="racer")
go = pathlib.Path("go")
while not go.exists():
    time.sleep(0.005)
s = sdk.start_session("race", session_id="shared-1", resume=True)
print(s.trace_id, s.span_id, s.segment)
s.end()
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("exists", [False, True], ids=["new-id", "stored-id"])
def test_two_processes_resuming_one_id_at_once_share_one_trace(
    tmp_path: Path, store_url: str, exists: bool
) -> None:
    """Two processes resume the same id at the same moment: one trace, two segments, nothing lost."""
    if exists:
        run_child(RACER.replace('go = pathlib.Path("go")', 'go = pathlib.Path(".")'), tmp_path, store_url)
    env = child_env(SESSIONTRACE_SESSION_STORE=store_url, SESSIONTRACE_EXPORTER="file")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RACER)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)  # let both reach the starting line (correctness does not depend on it)
    (tmp_path / "go").touch()
    outs = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        outs.append(out.split())
    first = 1 if exists else 0
    assert outs[0][0] == outs[1][0], "both segments are in one trace"
    assert sorted(int(o[2]) for o in outs) == [first + 1, first + 2]

    record = open_test_store(store_url, tmp_path).get("shared-1")
    assert record is not None
    assert record.trace_id == outs[0][0]
    assert len(record.segments) == first + 2
    assert set(record.span_ids[first:]) == {o[1] for o in outs}
    assert all(s.state == "success" for s in record.segments)


KILLED = """
import sys, time
import sdk
from opentelemetry import trace
sdk.init(service_name="crashy")
s = sdk.start_session("long-job", session_id="job-7", resume=True)
with trace.get_tracer("tests").start_as_current_span("step-1"):
    pass
sdk.flush()
print(s.trace_id, s.span_id, flush=True)
time.sleep(600)
"""


@pytest.mark.subprocess
def test_sigkill_leaves_a_stale_running_session_that_resume_continues(tmp_path: Path, store_url: str) -> None:
    """A process killed mid-session leaves it `running` in the store; it is listed as stale, a later
    resume continues its trace, and ending the stale segment exports its root span after all."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED)],
        cwd=tmp_path,
        env=child_env(SESSIONTRACE_SESSION_STORE=store_url, SESSIONTRACE_EXPORTER="file"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, child.stderr.read() if child.stderr else ""
    trace_id, span_id = line.split()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    if child.stderr:
        child.stderr.close()

    store = open_test_store(store_url, tmp_path)
    record = store.get("job-7")
    assert record is not None
    assert record.state == "running"
    assert record.latest.span_id == span_id

    sdk.init(session_store=store_url, exporter="file", service_name="janitor")
    stale = sdk.sessions(stale=True)
    assert [r.id for r in stale] == ["job-7"]
    assert stale[0].trace_id == trace_id

    # A later process resumes it: same trace, segment 2, linked to the killed segment.
    out = run_child(
        KILLED.replace("time.sleep(600)", "s.end()").replace("crashy", "crashy-again"), tmp_path, store_url
    )
    assert out.split()[0] == trace_id
    record = store.get("job-7")
    assert record is not None
    assert [s.number for s in record.segments] == [1, 2]
    assert record.segments[0].state == "running"  # the killed segment, still open
    assert record.state == "success"

    # Ending stale work: the killed segment is no longer the latest, so it is not listed as stale.
    assert sdk.sessions(stale=True) == []


@pytest.mark.subprocess
def test_ending_a_stale_session_marks_it_and_exports_its_missing_root(tmp_path: Path, store_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED)],
        cwd=tmp_path,
        env=child_env(SESSIONTRACE_SESSION_STORE=store_url, SESSIONTRACE_EXPORTER="file"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    trace_id, span_id = child.stdout.readline().split()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()

    sdk.init(session_store=store_url, exporter="file", service_name="janitor")
    for record in sdk.sessions(stale=True):
        sdk.end_session(record.id, "indeterminate", "stale")
    assert sdk.flush()

    stored = open_test_store(store_url, tmp_path).get("job-7")
    assert stored is not None
    assert stored.state == "indeterminate"
    assert stored.reason == "stale"
    assert stored.ended is not None
    roots = session_roots(tmp_path, "job-7")
    assert len(roots) == 1, "the killed process never exported its root; the janitor did"
    root = roots[0]
    assert (root["traceId"], root["spanId"]) == (trace_id, span_id)
    assert attrs(root)["session.state"] == "indeterminate"
    assert attrs(root)["session.end_reason"] == "stale"
    step = [s for s in read_otlp_json_spans(tmp_path / ".sessiontrace" / "traces") if s["name"] == "step-1"]
    assert step
    assert step[0]["parentSpanId"] == span_id
    assert sdk.sessions(stale=True) == []


# ---------------------------------------------------------------------------------------------
# In-process behaviour (memory store)


def test_resume_of_an_unknown_id_starts_a_new_session_with_that_id() -> None:
    captured = capture(session_store="memory")
    session = sdk.start_session("chat", session_id="fresh-1", resume=True)
    session.end()
    root = session_spans(captured)[-1]
    assert root.attributes is not None
    assert root.attributes["session.id"] == "fresh-1"
    assert root.attributes["session.segment"] == 1
    assert root.attributes["session.resumed"] is False
    assert list(root.links) == []
    assert session.segment == 1


def test_resume_after_a_normal_end_continues_the_session() -> None:
    """Decision: a session that ended normally can be resumed (a conversation picked up later)."""
    captured = capture(session_store="memory")
    first = sdk.start_session("chat", session_id="conv-2", resume=True)
    first.end()
    second = sdk.start_session("chat", session_id="conv-2", resume=True)
    second.end("fail", "bad answer")
    roots = session_spans(captured)
    assert [r.context.trace_id for r in roots] == [first.trace_id_int] * 2
    assert second.segment == 2
    assert roots[1].attributes is not None
    assert roots[1].attributes["session.resumed"] is True
    assert [link.context.span_id for link in roots[1].links] == [roots[0].context.span_id]
    assert sdk.flush()
    store = runtime.current().store
    record = store.get("conv-2") if store else None
    assert record is not None
    assert [s.state for s in record.segments] == ["success", "fail"]
    assert record.state == "fail"
    assert record.reason == "bad answer"


def test_resume_of_an_expired_record_starts_a_new_trace(clock: FakeClock) -> None:
    """A resume after `session_expiry` has passed since the record's last activity starts a new trace."""
    capture(session_store="memory", session_expiry=60)
    first = sdk.start_session("chat", session_id="old-1", resume=True)
    first.end()
    assert sdk.flush()
    clock.advance(61)
    second = sdk.start_session("chat", session_id="old-1", resume=True)
    second.end()
    assert second.trace_id != first.trace_id
    assert second.segment == 1


def test_resume_while_the_session_is_open_in_this_process_adds_a_segment() -> None:
    """Two requests of one conversation at once in one process: both segments share the trace."""
    captured = capture(session_store="memory")
    with sdk.session("chat", session_id="busy-1", resume=True) as first:
        with sdk.session("chat", session_id="busy-1", resume=True) as second:
            with trace.get_tracer("tests").start_as_current_span("inner"):
                pass
    assert first.trace_id == second.trace_id
    assert (first.segment, second.segment) == (1, 2)
    inner = [s for s in captured.spans() if s.name == "inner"]
    assert inner[0].attributes is not None
    assert inner[0].attributes["session.id"] == "busy-1"


def test_resume_needs_a_session_id() -> None:
    capture(session_store="memory")
    with pytest.raises(ValueError, match="resume=True needs the session_id"):
        sdk.start_session("chat", resume=True)


def test_resume_without_a_store_warns_once_and_starts_the_session(caplog: pytest.LogCaptureFixture) -> None:
    capture(session_store="none")
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        a = sdk.start_session("chat", session_id="nostore-1", resume=True)
        a.end()
        b = sdk.start_session("chat", session_id="nostore-1", resume=True)
        b.end()
    assert a.trace_id != b.trace_id
    assert len([r for r in caplog.records if "session_store=none" in r.getMessage()]) == 1


class CountingStore(MemoryStore):
    """A real memory store that counts what it is asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.begins: list[SessionRecord] = []
        self.updates: list[SegmentUpdate] = []

    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord:
        self.begins.append(record)
        return super().begin_segment(record, resume=resume)

    def update(self, updates: Sequence[SegmentUpdate]) -> None:
        self.updates.extend(updates)
        super().update(updates)


def test_the_store_is_not_written_per_span() -> None:
    store = CountingStore()
    capture(session_store=store, store_write_interval=3600)
    tracer = trace.get_tracer("tests")
    with sdk.session("busy", session_id="many-spans"):
        for _ in range(5000):
            with tracer.start_as_current_span("work"):
                pass
    assert sdk.flush()
    assert len(store.begins) == 1
    assert len(store.updates) <= 2  # the end (and at most one activity write by the flush)
    record = store.get("many-spans")
    assert record is not None
    assert record.usage.spans == 5001
    assert record.state == "success"


def test_a_running_session_writes_its_activity_every_interval() -> None:
    store = CountingStore()
    capture(session_store=store, store_write_interval=0.05)
    tracer = trace.get_tracer("tests")
    session = sdk.start_session("long", session_id="active-1")
    deadline = time.monotonic() + 30
    record = None
    while time.monotonic() < deadline:
        with tracer.start_as_current_span("tick"):
            pass
        record = store.get("active-1")
        if record is not None and record.usage.spans > 1:
            break
        time.sleep(0.01)
    assert record is not None
    assert record.usage.spans > 1
    assert record.state == "running"
    session.end()
    assert sdk.flush()
    final = store.get("active-1")
    assert final is not None
    assert final.state == "success"
    assert final.usage.spans == session.span_count


class BrokenStore(MemoryStore):
    """A store whose backend is down: every call fails as a real one would."""

    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord:
        raise StoreError("connection refused")

    def update(self, updates: Sequence[SegmentUpdate]) -> None:
        raise StoreError("connection refused")

    def get(self, session_id: str) -> SessionRecord | None:
        raise StoreError("connection refused")

    def list(self, **filters: Any) -> list[SessionRecord]:  # type: ignore[override]
        raise StoreError("connection refused")


def test_a_store_that_is_down_never_breaks_sessions(caplog: pytest.LogCaptureFixture) -> None:
    captured = capture(session_store=BrokenStore())
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        for i in range(3):
            with sdk.session("chat", session_id=f"down-{i}", resume=True) as s:
                with trace.get_tracer("tests").start_as_current_span("turn"):
                    pass
            assert s.state == "success"
        assert sdk.flush()
        assert sdk.sessions(stale=True) == []
    assert len([s for s in captured.spans() if s.name == "turn"]) == 3
    warnings = [r for r in caplog.records if "session store" in r.getMessage()]
    assert len(warnings) == 1
    assert "connection refused" in warnings[0].getMessage()
    assert sdk.stats().store_errors >= 4


# ---------------------------------------------------------------------------------------------
# Lifecycle callbacks


def test_callbacks_get_the_session_in_the_thread_that_started_and_ended_it() -> None:
    calls: list[tuple[str, str, str, int]] = []

    def started(session: sdk.Session) -> None:
        calls.append(("start", session.id, session.state.value, threading.get_ident()))

    def ended(session: sdk.Session) -> None:
        calls.append(("end", session.id, session.state.value, threading.get_ident()))

    capture(session_store="none", on_session_start=[started], on_session_end=ended)
    ending: list[int] = []

    def worker(session: sdk.Session) -> None:
        ending.append(threading.get_ident())
        session.end("fail", "worker gave up")

    s = sdk.start_session("chat", session_id="cb-1")
    t = threading.Thread(target=worker, args=(s,))
    t.start()
    t.join()
    assert calls == [
        ("start", "cb-1", "running", threading.get_ident()),
        ("end", "cb-1", "fail", ending[0]),
    ]


def test_a_raising_callback_is_logged_once_counted_and_never_breaks_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def broken(session: sdk.Session) -> None:
        raise RuntimeError("mapping service down")

    captured = capture(session_store="none", on_session_start=[broken, lambda s: seen.append(s.id)])
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        for i in range(3):
            with sdk.session("chat", session_id=f"cb-{i}") as s:
                pass
            assert s.state == "success"
    assert seen == ["cb-0", "cb-1", "cb-2"], "a broken callback does not stop the next one"
    assert sdk.stats().callback_errors == 3
    logged = [r for r in caplog.records if "mapping service down" in r.getMessage()]
    assert len(logged) == 1
    assert "on_session_start" in logged[0].getMessage()
    assert len(session_spans(captured)) == 3


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(sdk.ConfigError, match="on_session_start"):
        sdk.init(on_session_start="not callable")


# ---------------------------------------------------------------------------------------------
# Totals on the session span


def test_session_span_carries_llm_totals_and_errors() -> None:
    captured = capture(session_store="none")
    started: list[sdk.Session] = []

    def priced_work() -> None:
        with sdk.session("priced") as session:
            started.append(session)
            session.add_llm_usage(input_tokens=100, output_tokens=20, cost_usd=0.0012)
            session.add_llm_usage(input_tokens=50, output_tokens=None, cost_usd=None, error=True)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        priced_work()
    (s,) = started
    root = session_spans(captured)[-1]
    assert root.attributes is not None
    assert root.attributes["session.llm.calls"] == 2
    assert root.attributes["session.llm.input_tokens"] == 150
    assert root.attributes["session.llm.output_tokens"] == 20
    assert root.attributes["session.llm.cost_usd"] == pytest.approx(0.0012)
    assert root.attributes["session.errors"] == 2  # the failed LLM call and the session's own exception
    usage = s.usage
    assert (usage.llm_calls, usage.input_tokens, usage.output_tokens, usage.errors) == (2, 150, 20, 2)


def test_reinit_with_the_same_store_settings_keeps_the_store() -> None:
    from sdk import runtime

    sdk.init(session_store="memory", exporter="none")
    writer = runtime.current().store_writer
    sdk.init(session_store="memory", exporter="none", service_name="renamed")
    assert runtime.current().store_writer is writer
    sdk.init(session_store="none", exporter="none")
    assert runtime.current().store_writer is None


def test_redis_stopped_mid_run_sessions_go_on_and_are_stored_again_when_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """A real redis-server stopped mid-run: sessions (resumed ones too) go on, spans are exported,
    one warning, failures counted; a resume that could not reach the store never overwrites the
    stored session later; when Redis is back, new sessions are stored and resumes work again."""
    if not redis_server_available():
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from sdk.store.redis import RedisStore
    from sdk.store.writer import RETRY_AFTER

    # With an append-only file, as a production Redis keeps its data across a restart.
    with RedisServer(
        tmp_path / "redis", extra_args=("--appendonly", "yes", "--appendfsync", "always")
    ) as server:
        captured = capture(session_store=server.url, store_write_interval=0.05)
        tracer = trace.get_tracer("tests")
        with sdk.session("chat", session_id="r-before", resume=True) as before:
            with tracer.start_as_current_span("turn"):
                pass
        assert sdk.flush()
        reader = RedisStore(server.url, expiry=3600)
        assert reader.get("r-before") is not None

        server.stop()
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            during = []
            for session_id in ("r-before", "r-down-1", "r-down-2"):
                with sdk.session("chat", session_id=session_id, resume=True) as s:
                    with tracer.start_as_current_span("turn"):
                        pass
                during.append(s)
            with sdk.session("chat", session_id="r-plain") as plain:
                pass
            sdk.flush(timeout=5)
        assert [s.state for s in during] == ["success"] * 3
        assert during[0].trace_id != before.trace_id  # the store was out of reach: a fresh start
        assert len([s for s in captured.spans() if s.name == "turn"]) == 4
        warnings = [r for r in caplog.records if "session store" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert sdk.stats().store_errors >= 1

        server.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and reader.get("r-plain") is None:
            sdk.flush(timeout=5)
            time.sleep(0.1)
        assert (stored := reader.get("r-plain")) is not None
        assert stored.trace_id == plain.trace_id
        kept = reader.get("r-before")
        assert kept is not None
        assert kept.trace_id == before.trace_id, "not overwritten"
        assert len(kept.segments) == 1
        clock.advance(RETRY_AFTER)  # resumes do not wait on a store that just failed; then they try again
        again = sdk.start_session("chat", session_id="r-before", resume=True)
        again.end()
        assert (again.trace_id, again.segment) == (before.trace_id, 2)
        reader.close()
