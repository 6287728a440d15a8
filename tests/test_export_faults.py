"""Fault injection: a real program against a backend behind a loopback proxy that refuses, resets,
answers 503/429 or hangs. The program exits within its flush timeout, memory stays bounded, and once
the backend is back every span arrives exactly once (counted at a real receiver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from opentelemetry import trace
from otlp_receiver import OTLPReceiver

import sdk
from sdk import runtime
from sdk.export.batch import OVERFLOW_FACTOR

pytestmark = pytest.mark.subprocess

FLUSH_TIMEOUT = 2.0
CHILD = f"""
import atexit, json, os, time
import sdk
from opentelemetry import trace

# Registered before init(): runs after the SDK's exit handler.
atexit.register(lambda: print("EXITED", time.monotonic(), json.dumps(sdk.stats()._asdict()), flush=True))
sdk.init(
    endpoint=os.environ["ENDPOINT"], protocol=os.environ.get("PROTOCOL", "http/protobuf"),
    flush_timeout={FLUSH_TIMEOUT}, export_timeout=1, export_interval=0.05, metrics=False,
    spool_retry_interval=0.2,
)
tracer = trace.get_tracer("child")
count = int(os.environ["SPANS"])
with sdk.session("faulty") as s:
    for i in range(count):
        with tracer.start_as_current_span(f"span-{{i}}"):
            pass
print("DONE", time.monotonic(), flush=True)
if os.environ.get("WAIT_FOR_KILL"):
    assert sdk.flush()
    print("STATS", json.dumps(sdk.stats()._asdict()), flush=True)
    time.sleep(60)
"""


def child_env(endpoint: str, spans: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
    env.update(ENDPOINT=endpoint, SPANS=str(spans), PYTHONUNBUFFERED="1", **extra)
    return env


def deliver_the_spool(
    grpc_receiver: OTLPReceiver, proxy: FaultProxy, expected: int, **settings: object
) -> None:
    """Bring the backend back and start a pipeline in the same folder (as the next process would)."""
    proxy.set_mode("forward")
    sdk.init(endpoint=proxy.url, export_interval=0.05, spool_retry_interval=0.05, metrics=False, **settings)
    assert grpc_receiver.wait_for_spans(expected, timeout=30), (len(grpc_receiver.accepted_spans), expected)
    time.sleep(0.3)  # anything sent twice would arrive now


def assert_exactly_once(grpc_receiver: OTLPReceiver, count: int) -> None:
    names = [s.name for s in grpc_receiver.accepted_spans if s.name.startswith("span-")]
    assert len(names) == count, f"{len(names)} span-* received for {count}"
    assert len(set(names)) == count, "a span arrived twice"
    assert len({s.name for s in grpc_receiver.accepted_spans if s.name == "faulty"}) == 1


@pytest.mark.parametrize(
    ("mode", "status"),
    [("refuse", 0), ("reset", 0), ("status", 503), ("status", 429), ("hang", 0)],
    ids=["refused", "reset", "503", "429", "hanging"],
)
def test_backend_fault_program_exits_in_time_and_nothing_is_lost(tmp_path, grpc_receiver, mode, status):
    """Under each fault the program exits within flush_timeout, loses nothing, and the spool delivers each span once."""
    spans = 1500
    with FaultProxy(("127.0.0.1", grpc_receiver.port)) as proxy:
        proxy.set_mode(mode, status, retry_after="0" if status == 429 else None)
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            env=child_env(proxy.url, spans),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 0, child.stderr
        assert "Traceback" not in child.stderr
        done = float(child.stdout.split("DONE ")[1].split()[0])
        exited_line = child.stdout.split("EXITED ")[1]
        exited = float(exited_line.split()[0])
        stats = json.loads(exited_line.split(" ", 1)[1])
        assert exited - done < FLUSH_TIMEOUT + 0.5, "the exit handler outlasted flush_timeout"
        assert stats["spans_dropped"] == 0
        assert stats["spans_spooled"] + stats["spans_exported"] == stats["spans_ended"] >= spans + 1
        assert grpc_receiver.accepted_spans == []  # nothing got through the fault
        assert "unreachable" in child.stderr  # one warning says where the spans are kept

        deliver_the_spool(grpc_receiver, proxy, spans + 1, live_sessions=False)
        assert_exactly_once(grpc_receiver, spans)
        assert not list(Path(".sessiontrace", "spool").glob("*/*.otlp"))


def test_program_killed_while_backend_down_its_spool_is_delivered_by_the_next(tmp_path, grpc_receiver):
    """SIGKILL with the backend down: the next process in the folder sends the spooled spans, each once."""
    spans = 400
    with FaultProxy(("127.0.0.1", grpc_receiver.port)) as proxy:
        proxy.set_mode("refuse")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=child_env(proxy.url, spans, WAIT_FOR_KILL="1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("STATS "):
                    stats = json.loads(line[len("STATS ") :])
                    break
            else:
                pytest.fail(f"child ended early: {child.stderr.read() if child.stderr else ''}")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert stats["spans_spooled"] == spans + 1  # and the session's own span
        deliver_the_spool(grpc_receiver, proxy, spans + 1, live_sessions=False)
        names = [s.name for s in grpc_receiver.accepted_spans]
        assert len(names) == len(set(names)) == spans + 1
        assert [n for n in names if not n.startswith("span-")] == ["faulty"]


def test_grpc_backend_refusing_then_back(tmp_path, grpc_receiver):
    """Over gRPC too: a refusing backend's spans are spooled and delivered once when it is back."""
    with FaultProxy(("127.0.0.1", grpc_receiver.grpc_port)) as proxy:
        proxy.set_mode("refuse")
        sdk.init(
            endpoint=proxy.url, protocol="grpc", export_interval=0.02, export_timeout=1,
            spool_retry_interval=0.05, metrics=False, live_sessions=False,
        )  # fmt: skip
        tracer = trace.get_tracer("grpc")
        for i in range(50):
            with tracer.start_as_current_span(f"span-{i}"):
                pass
        assert sdk.flush()
        assert sdk.stats().spans_spooled == 50
        proxy.set_mode("forward")
        assert grpc_receiver.wait_for_spans(50, timeout=30)
        time.sleep(0.3)
        names = [s.name for s in grpc_receiver.accepted_spans]
        assert len(names) == len(set(names)) == 50
        assert {r.path for r in grpc_receiver.requests} == {
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        }


def test_memory_stays_bounded_while_the_backend_is_down(tmp_path, grpc_receiver):
    """20k spans with the backend refusing: the queue never passes its cap (with a spool behind it,
    OVERFLOW_FACTOR x max_queue_size, docs/export.md) and the spans wait on disk, not in memory."""
    with FaultProxy(("127.0.0.1", grpc_receiver.port)) as proxy:
        proxy.set_mode("refuse")
        sdk.init(
            endpoint=proxy.url, export_interval=0.05, max_queue_size=1000, metrics=False,
            spool_retry_interval=0.5, live_sessions=False,
        )  # fmt: skip
        (batch,) = runtime.current().batches
        tracer = trace.get_tracer("memory")
        tracemalloc.start()
        try:
            longest = 0
            for i in range(20_000):
                with tracer.start_as_current_span("s", attributes={"i": i, "payload": "x" * 200}):
                    pass
                longest = max(longest, len(batch._queue))
            assert sdk.flush(timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stats = sdk.stats()
        assert longest <= OVERFLOW_FACTOR * 1000  # more than 1,000 only while the worker gets no CPU
        assert stats.spans_spooled + stats.spans_dropped == 20_000
        assert stats.spans_dropped == stats.spool_dropped + (
            20_000 - stats.spans_spooled - stats.spool_dropped
        )
        # 20k spans of ~1 KB each would need over 20 MB if they were held in memory.
        assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_exit_with_backend_hanging_spools_the_request_in_flight(tmp_path, grpc_receiver):
    """The batch whose request hangs at exit is spooled (not lost) and sent once by the next process."""
    script = textwrap.dedent(
        """
        import os, sdk
        from opentelemetry import trace
        sdk.init(endpoint=os.environ["ENDPOINT"], flush_timeout=1, metrics=False, export_interval=0.05)
        with trace.get_tracer("t").start_as_current_span("span-0"):
            pass
        """
    )  # export_timeout stays 10 s: the request is still in flight at exit
    with FaultProxy(("127.0.0.1", grpc_receiver.port)) as proxy:
        proxy.set_mode("hang")
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, "-c", script], env=child_env(proxy.url, 0), cwd=tmp_path,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        assert time.monotonic() - started < 1 + 8  # interpreter start, plus flush_timeout
        deliver_the_spool(grpc_receiver, proxy, 1, live_sessions=False)
        assert [s.name for s in grpc_receiver.accepted_spans] == ["span-0"]
