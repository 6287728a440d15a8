"""Spans over the wire: OTLP/HTTP to a real loopback receiver that decodes the protobuf."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import ReceivedSpan, closed_port_url

import sdk
from sdk import runtime
from sdk.export.batch import BatchExportProcessor

SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY


def run_with_watchdog(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Run `fn` in a thread; fail if it has not returned when the watchdog fires."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked: still running after the {seconds}s watchdog"
    if "error" in result:
        raise result["error"]
    return result["value"]


@sdk.tool
def lookup(order: str) -> str:
    sdk.event("order.lookup", order=order)
    return order.upper()


def traced_work(user: str) -> sdk.Session:
    """One session with a tool span and a raw OpenTelemetry span inside."""
    with sdk.session("chat", user_id=user, tags=["otlp"]) as s:
        lookup("a-1")
        with trace.get_tracer("tests.raw").start_as_current_span("raw-step"):
            pass
    return s


def by_session(spans: Sequence[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    groups: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        groups.setdefault(span.attributes["session.id"], []).append(span)
    return groups


def assert_session_traces(spans: Sequence[ReceivedSpan], sessions: Sequence[sdk.Session]) -> None:
    """Each session is one trace whose root is the session span, parent of every other span."""
    assert all("session.id" in span.attributes for span in spans), [s.name for s in spans]
    groups = by_session(spans)
    assert set(groups) == {s.id for s in sessions}
    for session in sessions:
        group = groups[session.id]
        roots = [span for span in group if span.parent_span_id == ""]
        assert len(roots) == 1
        root = roots[0]
        assert root.name == session.name
        assert root.attributes["session.state"] == "success"
        assert root.attributes["session.name"] == session.name
        assert {span.trace_id for span in group} == {session.trace_id}
        children = [span for span in group if span is not root]
        assert sorted(span.name for span in children) == ["execute_tool lookup", "raw-step"]
        assert all(span.parent_span_id == root.span_id for span in children)
    assert len({s.trace_id for s in sessions}) == len(sessions)


def test_sessions_and_spans_arrive_over_otlp_http(receiver):
    """Sessions sent with init(endpoint=, headers=) arrive as one trace each, stamped and parented, with the headers."""
    sdk.init(
        service_name="otlp-tests",
        endpoint=receiver.url,
        headers={"authorization": "Bearer x"},
        export_interval=0.05,
    )
    sessions = [traced_work("u-1"), traced_work("u-2")]
    assert sdk.flush()

    spans = receiver.spans
    assert len(spans) == 6
    assert_session_traces(spans, sessions)
    tool = next(s for s in spans if s.name == "execute_tool lookup")
    assert tool.events == [("order.lookup", {"order": "a-1"})]
    root = next(s for s in spans if s.parent_span_id == "" and s.attributes["session.id"] == sessions[0].id)
    assert root.attributes["user.id"] == "u-1"
    assert root.attributes["session.tags"] == ["otlp"]
    assert root.resource["service.name"] == "otlp-tests"
    assert root.resource["telemetry.distro.name"] == "sessiontrace"
    assert {request.path for request in receiver.requests} == {"/v1/traces", "/v1/metrics"}
    for request in receiver.requests:  # metrics go to the same backend, with the same headers
        assert request.headers["authorization"] == "Bearer x"
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.error is None


def test_configured_through_otel_environment_variables(receiver, monkeypatch):
    """OTEL_EXPORTER_OTLP_ENDPOINT/HEADERS (and gzip compression) alone route spans to the receiver."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x,x-tenant=t1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-service")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    config = sdk.init()
    assert config.exporter_kind == "otlp"

    session = traced_work("u-env")
    assert sdk.flush()

    assert_session_traces(receiver.spans, [session])
    assert receiver.spans[0].resource["service.name"] == "env-service"
    for request in receiver.requests:
        assert request.headers["authorization"] == "Bearer x"
        assert request.headers["x-tenant"] == "t1"
        assert request.headers["content-encoding"] == "gzip"
    assert not Path(".sessiontrace", "traces").exists()


def test_init_with_refused_connection_returns_and_counts_drops(receiver):
    """With the backend refusing connections (and the spool off) init() returns, traced work runs, and flushed spans count as dropped."""
    before = sdk.stats()

    def work() -> sdk.Session:
        sdk.init(
            endpoint=closed_port_url(), export_timeout=0.3, export_interval=0.05, spool=False, metrics=False
        )
        return traced_work("u-refused")

    session = run_with_watchdog(work)
    assert session.state == "success"
    assert lookup("b") == "B"
    assert sdk.flush()

    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 4  # the session, its 2 children, the lone tool
    assert after.spans_exported == before.spans_exported
    assert after.export_errors > before.export_errors
    assert after.internal_errors == before.internal_errors
    assert receiver.requests == []


def test_exporter_logs_each_failure_message_once(caplog):
    """While the backend is down, each failure message is logged once, not once per failed batch."""
    caplog.set_level(logging.INFO)
    before = sdk.stats()
    sdk.init(endpoint=closed_port_url(), export_timeout=0.3, export_interval=0.05, spool=False, metrics=False)
    for _ in range(3):
        lookup("a")
        assert sdk.flush()

    assert sdk.stats().export_errors - before.export_errors == 3
    messages = [
        r.msg for r in caplog.records if r.name.startswith(("opentelemetry.exporter", "sessiontrace"))
    ]
    assert len(messages) == len(set(messages)) >= 1
    assert not [r for r in caplog.records if r.exc_info]  # no tracebacks


@pytest.mark.parametrize("status", [503, 429])
def test_error_status_from_backend_counts_drops(receiver, status):
    """With the spool off, a backend answering 503 or 429 past the export timeout makes the batch count as dropped."""
    receiver.fail(status)
    before = sdk.stats()
    sdk.init(endpoint=receiver.url, export_timeout=0.3, export_interval=0.05, spool=False, metrics=False)
    session = traced_work("u-busy")
    assert session.state == "success"
    assert sdk.flush()

    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 3
    assert after.spans_exported == before.spans_exported
    assert len(receiver.requests) >= 1  # the backend was reached and said no
    assert receiver.requests[0].spans  # with well-formed spans


def test_init_with_hanging_backend_returns_and_counts_drops(receiver):
    """With a backend that never answers (and the spool off), init() returns, work runs, and the timed-out export is dropped."""
    receiver.hang()
    before = sdk.stats()

    def work() -> sdk.Session:
        sdk.init(endpoint=receiver.url, export_timeout=0.5, export_interval=0.05, spool=False, metrics=False)
        return traced_work("u-hang")

    session = run_with_watchdog(work)
    assert session.state == "success"
    assert sdk.flush()  # the export gave up at export_timeout, within flush_timeout

    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 3
    assert after.spans_exported == before.spans_exported
    assert receiver.wait_for_requests(1)  # the request did reach the (silent) backend


def test_flush_returns_while_backend_hangs_and_spans_go_out_when_it_recovers(receiver):
    """flush() returns False instead of waiting on a hanging backend; once it answers, the same spans arrive once."""
    receiver.hang()
    before = sdk.stats()
    sdk.init(endpoint=receiver.url, export_timeout=5, export_interval=0.05, metrics=False)
    session = traced_work("u-slow")
    assert receiver.wait_for_requests(1)

    assert sdk.flush(timeout=0.2) is False
    receiver.release()
    assert sdk.flush()

    assert_session_traces(receiver.spans, [session])
    after = sdk.stats()
    assert after.spans_exported - before.spans_exported == 3
    assert after.spans_dropped == before.spans_dropped


def test_shutdown_with_hanging_backend_counts_the_batch_in_flight(receiver):
    """With the spool off, shutdown(timeout) returns with the backend hanging, and the batch stuck in the exporter counts as dropped."""
    receiver.hang()
    before = sdk.stats()
    sdk.init(endpoint=receiver.url, export_interval=0.05, spool=False, metrics=False)  # export_timeout: 10 s
    (processor,) = runtime.current().processors
    assert isinstance(processor, BatchExportProcessor)
    traced_work("u-stuck")
    assert receiver.wait_for_requests(1)

    run_with_watchdog(lambda: sdk.shutdown(timeout=0.3))

    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 3
    assert after.spans_exported == before.spans_exported
    receiver.release()  # the stuck export now ends; its late result is not counted a second time
    processor._worker.join(5)
    assert not processor._worker.is_alive()
    assert sdk.stats().spans_exported == before.spans_exported
    assert sdk.stats().spans_dropped == after.spans_dropped


def test_queue_is_bounded_and_every_span_is_accounted_for(receiver):
    """With the backend stuck (and the spool off), spans beyond max_queue_size are dropped at once and every span ends up counted."""
    receiver.hang()
    before = sdk.stats()
    sdk.init(
        endpoint=receiver.url,
        max_queue_size=10,
        max_export_batch_size=5,
        export_interval=0.05,
        spool=False,
        metrics=False,
        live_sessions=False,
    )
    tracer = trace.get_tracer("tests.raw")
    with tracer.start_as_current_span("first"):
        pass
    assert receiver.wait_for_requests(1)  # the worker is now stuck in the exporter
    for i in range(50):
        with tracer.start_as_current_span(f"span-{i}"):
            pass

    middle = sdk.stats()
    assert middle.spans_dropped - before.spans_dropped == 50 - 10  # the queue holds 10; the rest are refused
    sdk.shutdown(timeout=0.2)
    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 51  # plus the 10 queued and the 1 in flight
    assert after.spans_exported == before.spans_exported


def test_spans_ending_during_shutdown_are_exported_or_counted():
    """Spans that end while the processor shuts down are each exported or counted as dropped, never lost."""
    exporter = RecordingExporter()
    processor = BatchExportProcessor(
        exporter, max_queue_size=1_000_000, max_export_batch_size=64, export_interval=0.01
    )
    span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("s")
    span.end()
    assert isinstance(span, ReadableSpan)
    before = sdk.stats()
    ready = threading.Barrier(5)
    ended = [0] * 4

    def spin(i: int) -> None:
        ready.wait()
        for _ in range(5000):
            processor.on_end(span)
            ended[i] += 1

    threads = [threading.Thread(target=spin, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    ready.wait()
    processor.shutdown(timeout=5)
    for t in threads:
        t.join()

    dropped = sdk.stats().spans_dropped - before.spans_dropped
    assert len(exporter.spans) + dropped == sum(ended) == 20000
    assert sdk.stats().spans_exported - before.spans_exported == len(exporter.spans)


@pytest.fixture
def fake_requests_instrumentation(monkeypatch) -> list[bool]:
    """Patch requests as opentelemetry-instrumentation-requests does; records whether each call was suppressed."""
    calls: list[bool] = []
    original = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        suppressed = bool(otel_context.get_value(SUPPRESS_KEY))
        calls.append(suppressed)
        if suppressed:
            return original(self, request, **kwargs)
        with trace.get_tracer("fake.requests").start_as_current_span(
            str(request.method),
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": str(request.method), "url.full": str(request.url)},
        ):
            return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return calls


def test_sdk_export_traffic_is_never_traced(receiver, fake_requests_instrumentation):
    """An HTTP instrumentation traces the user's requests but never the SDK's own export requests."""
    sdk.init(endpoint=receiver.url, export_interval=0.05)
    with sdk.session("calls-out") as s:
        response = requests.post(receiver.url + "/not-traces", data=b"x", timeout=5)
        assert response.status_code == 404
    for _ in range(3):
        traced_work("u-x")
        assert sdk.flush()

    http_spans = [span for span in receiver.spans if span.attributes.get("http.request.method")]
    assert [span.attributes["url.full"] for span in http_spans] == [receiver.url + "/not-traces"]
    assert http_spans[0].attributes["session.id"] == s.id
    assert not [span for span in receiver.spans if "v1/traces" in json.dumps(span.attributes)]
    assert fake_requests_instrumentation.count(False) == 1  # the user's request
    assert fake_requests_instrumentation.count(True) >= 3  # the SDK's exports, suppressed


class RecordingExporter(SpanExporter):
    """Records the spans it gets and the instrumentation-suppression flag in effect during export()."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.suppressed: list[object] = []
        self.threads: list[str] = []
        self.shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.suppressed.append(otel_context.get_value(SUPPRESS_KEY))
        self.threads.append(threading.current_thread().name)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True


def test_exporter_instance_runs_in_a_suppressed_worker_thread():
    """A SpanExporter instance given to init() gets every span, off the caller's thread, with instrumentation suppressed."""
    exporter = RecordingExporter()
    before = sdk.stats()
    config = sdk.init(exporter=exporter, export_interval=0.05)
    assert config.exporter_kind == "custom"
    session = traced_work("u-custom")
    assert sdk.flush()

    assert {span.attributes["session.id"] for span in exporter.spans} == {session.id}
    assert len(exporter.spans) == 3
    assert exporter.suppressed
    assert all(flag is True for flag in exporter.suppressed)
    assert threading.current_thread().name not in exporter.threads
    assert otel_context.get_value(SUPPRESS_KEY) is None  # the caller's context is untouched
    assert sdk.stats().spans_exported - before.spans_exported == 3
    assert not Path(".sessiontrace", "traces").exists()
    sdk.shutdown()
    assert exporter.shut_down


def test_extra_span_processors_run_beside_the_exporter():
    """span_processors= get every span too, next to the configured exporter."""
    exporter = RecordingExporter()
    extra = InMemorySpanExporter()
    sdk.init(exporter=exporter, span_processors=[SimpleSpanProcessor(extra)], export_interval=0.05)
    session = traced_work("u-extra")
    assert sdk.flush()

    assert len(extra.get_finished_spans()) == 3
    assert {span.attributes["session.id"] for span in extra.get_finished_spans()} == {session.id}
    assert len(exporter.spans) == 3


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SESSIONTRACE_*/OTEL_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update(extra)
    return env


@pytest.mark.subprocess
def test_console_exporter_prints_span_json(tmp_path):
    """exporter="console" prints each span as JSON on the process's stdout, session.id included, and writes no file."""
    script = """
import sdk

@sdk.tool
def lookup(order):
    return order

sdk.init(exporter="console", export_interval=0.05)
with sdk.session("console-chat") as s:
    lookup("a-1")
sdk.flush()
print("SESSION", s.id, s.trace_id, flush=True)
"""
    child = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    out = child.stdout
    session_id, trace_id = out.rsplit("SESSION ", 1)[1].split()
    assert '"name": "execute_tool lookup"' in out
    assert '"name": "console-chat"' in out
    assert out.count(f'"session.id": "{session_id}"') == 2
    assert out.count(f'"trace_id": "0x{trace_id}"') == 2
    assert not (tmp_path / ".sessiontrace" / "traces").exists()


def test_exporter_none_exports_nothing_and_the_api_still_works(capfd):
    """exporter="none": sessions and spans work as usual, nothing is exported, written or printed."""
    before = sdk.stats()
    sdk.init(exporter="none", export_interval=0.05)
    session = traced_work("u-none")
    assert session.state == "success"
    assert session.span_count == 3
    assert sdk.flush()

    after = sdk.stats()
    assert after.spans_ended - before.spans_ended == 3
    assert after.spans_exported == before.spans_exported
    assert after.spans_dropped == before.spans_dropped
    assert not Path(".sessiontrace", "traces").exists()
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "sessiontrace" not in captured.err
