"""Nothing is lost under overload, crashes and a slow backend (issue 14): spans overflow to disk instead
of being dropped, a `kill -9` loses nothing older than the documented window whatever the backend does,
every started session reaches the store, a span open at fork() is exported once, and console summaries
are whole lines under any concurrency."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from backends import wait_until
from fault_proxy import FaultProxy
from opentelemetry import trace

import sdk
from sdk import runtime
from sdk.export.jsonl import read_otlp_json_spans
from sdk.store import writer as store_writer

DATA = Path(".sessiontrace")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# -- overload ---------------------------------------------------------------------------------


def test_load_with_a_slow_backend_that_recovers_loses_nothing(receiver):
    """Real threads (a server's: each waits on I/O between requests), the SQLite store, a backend slow then back:
    every ended span arrives exactly once or is counted as dropped with the disk budget spent; every started
    session is in the store; every span sits in its own session's trace."""
    receiver.slow(0.3)
    sdk.init(
        endpoint=receiver.url, export_interval=0.05, spool_retry_interval=0.05, metrics=False,
        live_sessions=False, console_summary=False,
    )  # fmt: skip
    tracer = trace.get_tracer("tests.load")
    started: list[tuple[str, str]] = []  # (session id, its trace id)
    stop = time.monotonic() + 2.0

    def user(n: int) -> None:

        while time.monotonic() < stop:
            with sdk.session("load", user_id=f"u{n}") as s:
                started.append((s.id, s.trace_id))
                for step in range(3):
                    with tracer.start_as_current_span(f"step-{step}"):
                        pass
            time.sleep(0.002)  # the next request's I/O

    threads = [threading.Thread(target=user, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    receiver.slow(0)
    assert sdk.flush(timeout=60)
    stats = sdk.stats()
    assert stats.spans_ended == len(started) * 4
    assert receiver.wait_for_spans(stats.spans_ended - stats.spans_dropped, timeout=60)
    time.sleep(0.3)  # anything sent twice would arrive now

    delivered = receiver.accepted_spans
    assert len({s.span_id for s in delivered}) == len(delivered), "a span arrived twice"
    assert len(delivered) + stats.spans_dropped == stats.spans_ended
    assert stats.spans_dropped == stats.spool_dropped  # only the disk budget may drop
    assert stats.spans_spooled > 0  # the slow backend made batches wait on disk
    sessions_by_trace = {trace_id: sid for sid, trace_id in started}
    for span in delivered:
        assert span.attributes["session.id"] == sessions_by_trace[span.trace_id]

    store = runtime.current().store
    assert store is not None
    stored = {record.id for record in store.list()}
    assert stored == {sid for sid, _ in started}
    assert stats.store_dropped == 0


def test_a_backed_up_queue_spills_to_disk_for_the_local_file_and_everything_is_written():
    """File destination: batches of a queue past half full overflow to the spool (protobuf) and become JSON lines
    later, oldest first; nothing is dropped and each thread's spans keep their order."""
    sdk.init(
        max_queue_size=64, max_export_batch_size=8, export_interval=0.05, console_summary=False,
        live_sessions=False, session_store="none",
    )  # fmt: skip
    (batch,) = runtime.current().batches
    tracer = trace.get_tracer("tests.spill")
    start = threading.Barrier(4)

    def burst_of_spans(n: int) -> None:
        start.wait()
        for i in range(15):
            with tracer.start_as_current_span(f"t{n}-{i:03d}"):
                pass

    with batch._flush_lock:  # the worker waits at its next round: the queue backs up meanwhile
        threads = [threading.Thread(target=burst_of_spans, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sdk.flush(timeout=30)
    stats = sdk.stats()
    names = [s["name"] for s in read_otlp_json_spans(DATA / "traces")]
    assert sorted(names) == sorted(f"t{n}-{i:03d}" for n in range(4) for i in range(15))
    assert stats.spans_spooled == stats.spans_exported == 60
    assert stats.spans_dropped == 0
    assert [p for p in (DATA / "spool" / "traces").iterdir() if p.is_file()] == []
    for n in range(4):
        mine = [name for name in names if name.startswith(f"t{n}-")]
        assert mine == sorted(mine)


def test_queue_full_drops_are_counted_per_reason_and_warned_about_once_per_interval(caplog, clock):
    """A queue that cannot spill (a custom exporter) drops: counted as queue-full, one warning per interval,
    each giving the figure since the last one."""
    from test_export_otlp import RecordingExporter

    from sdk.export.batch import DROP_WARNING_INTERVAL

    gate = threading.Event()

    class Stuck(RecordingExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            gate.wait(10)
            return super().export(spans)

    exporter = Stuck()
    sdk.init(exporter=exporter, max_queue_size=10, max_export_batch_size=5, export_interval=0.01)
    tracer = trace.get_tracer("tests.full")

    def burst(prefix: str) -> None:
        gate.clear()
        for i in range(40):
            with tracer.start_as_current_span(f"{prefix}{i}"):
                pass
        gate.set()
        assert sdk.flush()

    def figures() -> list[int]:
        warnings = [r.getMessage() for r in caplog.records if "export queue full" in r.getMessage()]
        return [int(re.search(r"; (\d+) spans were dropped", w).group(1)) for w in warnings]  # type: ignore[union-attr]

    burst("a")
    first = sdk.stats().spans_dropped_queue_full
    assert figures() == [first]  # the first drops are reported at once
    burst("b")  # within the interval: added up, reported when it has passed
    assert figures() == [first]
    clock.advance(DROP_WARNING_INTERVAL)
    assert wait_until(lambda: len(figures()) == 2, timeout=10, interval=0.01)  # by the export thread
    second = sdk.stats().spans_dropped_queue_full - first
    assert figures() == [first, second]
    burst("c")
    clock.advance(DROP_WARNING_INTERVAL)
    assert wait_until(lambda: len(figures()) == 3, timeout=10, interval=0.01)
    stats = sdk.stats()
    assert figures() == [first, second, stats.spans_dropped_queue_full - first - second]
    assert stats.spans_dropped_queue_full == stats.spans_dropped
    assert first > 0
    assert second > 0
    assert len(exporter.spans) + stats.spans_dropped == 120


def test_store_overflow_goes_to_disk_and_every_session_reaches_the_store(monkeypatch):
    """Past the writer's queue cap, starts and ends go to the overflow file: every session is stored, none dropped."""
    monkeypatch.setattr(store_writer, "MAX_QUEUED", 20)
    sdk.init(exporter="none", console_summary=False)
    writer = runtime.current().store_writer
    assert writer is not None
    ids: list[str] = []

    def user(n: int) -> None:
        for _ in range(150):
            with sdk.session("burst", user_id=f"u{n}") as s:
                ids.append(s.id)

    with writer._idle:  # the writer thread cannot start a round meanwhile: the queue backs up
        threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sdk.flush(timeout=30)
    stats = sdk.stats()
    assert stats.store_spilled > 0
    assert stats.store_dropped == stats.store_errors == 0
    store = runtime.current().store
    assert store is not None
    records = {r.id: r for r in store.list()}
    assert set(records) == set(ids)
    assert {r.state for r in records.values()} == {"success"}
    assert list((DATA / "store-overflow").iterdir()) == []


def test_an_overflow_file_still_being_appended_to_ends_once_the_writer_is_close_behind(tmp_path):
    """The writer reads a short rest of the overflow file and ends the file in one step under its lock:
    a program that keeps starting sessions cannot keep the file (and its cost) alive for ever."""
    sdk.init(exporter="none", console_summary=False, session_store="memory")
    store = runtime.current().store
    assert store is not None
    overflow = store_writer.Overflow(tmp_path, store)
    sessions = []
    for n in range(10):
        with sdk.session(f"s{n}") as s:
            sessions.append(s)
    for s in sessions:
        assert overflow.append("s", s.store_record())
    assert overflow.active
    lines = overflow.read(limit=3)  # more than the limit: the whole rest, as the file ends
    assert [item.id for _, item in lines] == [s.id for s in sessions]
    assert not overflow.active
    assert list((tmp_path / "store-overflow").iterdir()) == []


# -- crashes ----------------------------------------------------------------------------------

KILLED = """
import json, os, sys, time
import sdk
from opentelemetry import trace
sdk.init(endpoint=os.environ["ENDPOINT"], export_interval=0.2, metrics=False, live_sessions=False,
         session_store="none", spool_retry_interval=0.2)
tracer = trace.get_tracer("killed")
for n in range(20):
    with sdk.session(f"s{n}"):
        for i in range(5):
            with tracer.start_as_current_span(f"s{n}-span-{i}"):
                pass
print("ENDED", time.monotonic(), flush=True)
time.sleep(60)
"""
WINDOW = 0.2 + 1.0  # export_interval + 1 s: what docs/export.md promises to keep


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("mode", "status"), [("hang", 0), ("refuse", 0), ("status", 503)], ids=["hanging", "refusing", "503"]
)
def test_kill_9_loses_nothing_ended_before_the_window_whatever_the_backend_does(
    tmp_path, receiver, mode, status
):
    """kill -9 while the backend hangs, refuses or answers 503; a second process with the backend up delivers
    every span ended more than export_interval + 1 s before the kill, each once."""
    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        proxy.set_mode(mode, status)
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED)], cwd=tmp_path, env=child_env(ENDPOINT=proxy.url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("ENDED"), child.stderr.read() if child.stderr else ""
            time.sleep(WINDOW)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert receiver.accepted_spans == []  # nothing got through the fault

        proxy.set_mode("forward")  # a second process in the same folder (this one: its cwd is tmp_path)
        sdk.init(endpoint=proxy.url, export_interval=0.05, spool_retry_interval=0.05, metrics=False,
                 live_sessions=False, session_store="none")  # fmt: skip
        assert receiver.wait_for_spans(120, timeout=30), len(receiver.accepted_spans)
        time.sleep(0.5)  # anything sent twice would arrive now
    names = [s.name for s in receiver.accepted_spans]
    assert len(names) == len(set(names)) == 120
    leftovers = [p for p in Path(tmp_path, ".sessiontrace", "spool").rglob("*") if p.is_file()]
    assert leftovers == []


# -- fork -------------------------------------------------------------------------------------

FORKED = """
import os, sys
import sdk
from opentelemetry import trace
sdk.init(endpoint=os.environ["ENDPOINT"], export_interval=0.05, metrics=False, live_sessions=False,
         session_store="none")
tracer = trace.get_tracer("fork")
with sdk.session("parent-session"):
    with tracer.start_as_current_span("open-at-fork"):
        pid = os.fork()
        if pid == 0:
            with tracer.start_as_current_span("child-own"):
                pass
            sys.exit(0)  # leaves both with blocks in the child: their spans are the parent's
        os.waitpid(pid, 0)
    with tracer.start_as_current_span("parent-after"):
        pass
"""


@pytest.mark.subprocess
def test_a_span_open_at_fork_is_exported_once_by_the_parent(tmp_path, receiver):
    """A child leaving through sys.exit inside the with blocks exports only its own span; the parent exports its own, once."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKED)], cwd=tmp_path, env=child_env(ENDPOINT=receiver.url),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert receiver.wait_for_spans(4)
    time.sleep(0.3)
    by_name: dict[str, list[int]] = {}
    for span in receiver.accepted_spans:
        by_name.setdefault(span.name, []).append(span.resource["process.pid"])
    assert sorted(by_name) == ["child-own", "open-at-fork", "parent-after", "parent-session"]
    assert all(len(pids) == 1 for pids in by_name.values()), by_name
    parent_pid = by_name["parent-session"][0]
    assert by_name["open-at-fork"] == by_name["parent-after"] == [parent_pid]
    assert by_name["child-own"] != [parent_pid]


# -- console summaries ------------------------------------------------------------------------

SUMMARIES = """
import threading
import sdk
sdk.init(session_store="none", export_interval=0.05)
start = threading.Barrier(32)
def user(n):
    start.wait()
    for i in range(40):
        with sdk.session(f"user-{n:02d}-session-{i:02d}-" + "x" * 200, tags=["t"]):
            pass
threads = [threading.Thread(target=user, args=(n,)) for n in range(32)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
SUMMARY_LINE = re.compile(
    r"^sessiontrace: session 'user-\d\d-session-\d\d-x{200}' [0-9a-f-]+ success in \d+\.\d\ds, 1 span$"
)


@pytest.mark.subprocess
def test_console_summaries_are_whole_lines_under_concurrency(tmp_path):
    """32 threads ending 1,280 sessions at once: stderr holds 1,280 whole summary lines, no blank or mixed line."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SUMMARIES)], cwd=tmp_path, env=child_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    lines = child.stderr.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    bad = [line for line in lines if not SUMMARY_LINE.match(line)]
    assert bad == []
    assert len(lines) == len(set(lines)) == 32 * 40
