"""Edge cases found in review: out-of-order ends, attribute limits, re-init at exit, hostile exceptions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from opentelemetry.sdk.trace import SpanProcessor

import sdk
from sdk.export.jsonl import read_otlp_json_spans
from sdk.testing import capture


def test_sessions_ended_out_of_order_never_stay_current(captured, tracer):
    """start a, start b, end a, end b: nothing ended stays current, and later spans are not put in a."""
    a = sdk.start_session("a")
    b = sdk.start_session("b")
    a.end()
    b.end()
    assert sdk.current_session() is None
    with tracer.start_as_current_span("later"):
        pass
    later = captured.named("later")
    assert "session.id" not in later.attributes
    assert later.context.trace_id not in (a.trace_id_int, b.trace_id_int)


def test_out_of_order_end_returns_to_the_running_outer_session(captured, tracer):
    """outer (with), a, b started; a ended; b ended: outer is current again, with its span as parent."""
    with sdk.session("outer") as outer:
        a = sdk.start_session("a")
        b = sdk.start_session("b")
        a.end()
        b.end()
        assert sdk.current_session() is outer
        with tracer.start_as_current_span("back-in-outer"):
            pass
    span = captured.named("back-in-outer")
    assert span.attributes["session.id"] == outer.id
    assert span.parent.span_id == outer.span.get_span_context().span_id


def test_session_id_survives_the_attribute_count_limit(captured, tracer):
    """A span with more attributes than OpenTelemetry keeps (128) still carries session.id."""
    with sdk.session("big") as s, tracer.start_as_current_span("many") as span:
        for i in range(140):
            span.set_attribute(f"gen_ai.prompt.{i}.content", f"text {i}")
    many = captured.named("many")
    assert many.attributes["session.id"] == s.id
    assert len(many.attributes) == 128


def test_duplicate_session_id_exports_no_ghost_span(captured):
    """A refused duplicate session id starts no span: one root is exported for that id."""
    with sdk.session(session_id="chat-7"):
        with pytest.raises(ValueError, match="already open"):
            sdk.start_session("again", session_id="chat-7")
    roots = [s for s in captured.spans() if s.parent is None and s.attributes.get("session.id") == "chat-7"]
    assert len(roots) == 1


async def test_one_scope_object_entered_by_concurrent_tasks(captured):
    """One sdk.session(...) object used by two tasks at once ends each task's own session."""
    scope = sdk.session("shared")
    results: dict[str, tuple[sdk.Session, str]] = {}
    a_inside = asyncio.Event()
    b_inside = asyncio.Event()

    async def task_a() -> None:
        with scope as s:
            sdk.start_session("inner")  # current in task A only, never ended here
            a_inside.set()
            await b_inside.wait()
        results["a"] = (s, s.state.value)

    async def task_b() -> None:
        await a_inside.wait()
        with scope as s:
            b_inside.set()
            await asyncio.sleep(0.01)
            results["b-inside"] = (s, s.state.value)
        results["b"] = (s, s.state.value)

    await asyncio.gather(task_a(), task_b())
    assert results["b-inside"][1] == "running"
    assert results["a"][1] == "success"
    assert results["b"][1] == "success"
    assert results["a"][0] is not results["b"][0]


def test_open_sessions_are_bounded_before_init():
    """Before init() the default max_open_sessions (10,000) bounds open sessions too."""
    first = sdk.start_session("first")
    for _ in range(10_000):
        sdk.context.run(sdk.start_session)
    assert len(sdk.sessions()) == 10_000
    assert first.state is sdk.SessionState.INDETERMINATE
    assert first.reason == "max_open_sessions"
    sdk.end_session(first)


def test_exception_whose_str_raises_still_ends_the_span(captured):
    """A decorated call raising an exception whose str() raises ends its span and re-raises it."""

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    @sdk.tool
    def hostile() -> None:
        raise Weird

    with pytest.raises(Weird):
        hostile()
    span = captured.named("execute_tool hostile")
    assert span.attributes["error.type"].endswith("Weird")
    assert span.events[0].name == "exception"


def test_disabling_mid_run_exports_the_open_sessions(tracer):
    """init(enabled=False) ends open sessions first, so their spans are exported, not lost."""
    captured = capture(auto_start_session=True)
    open_session = sdk.start_session("open")
    sdk.init(enabled=False)
    roots = {s.name: s.attributes["session.state"] for s in captured.spans() if s.parent is None}
    assert roots == {"auto": "success", "open": "indeterminate"}
    assert open_session.reason == "sdk disabled"


def test_span_ending_after_shutdown_is_counted_as_dropped(tracer):
    """A span that started before shutdown() and ends after it is counted in spans_dropped."""
    capture()
    span = tracer.start_span("straddles-shutdown")
    sdk.shutdown()
    dropped = sdk.stats().spans_dropped
    span.end()
    assert sdk.stats().spans_dropped == dropped + 1


class _BlockingFlush(SpanProcessor):
    def __init__(self) -> None:
        self.release = threading.Event()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.release.wait(10)
        return True


def test_flush_timeout_holds_with_a_processor_that_ignores_it():
    """flush(timeout) returns False when an extra processor's flush does not finish in time."""
    blocking = _BlockingFlush()
    capture(span_processors=[blocking])
    try:
        assert sdk.flush(timeout=0.2) is False
    finally:
        blocking.release.set()
    assert sdk.flush(timeout=5) is True


def _run(script: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.subprocess
def test_spans_of_a_replaced_pipeline_are_delivered_at_exit(tmp_path):
    """Spans still held by a pipeline that a re-init replaced are delivered by the exit handler."""
    proc = _run(
        """
        import sdk
        sdk.init(data_dir="first", export_interval=60, console_summary=False)
        for i in range(10):
            with sdk.session(f"s{i}"):
                pass
        sdk.init(data_dir="second", export_interval=60, console_summary=False)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first = read_otlp_json_spans(tmp_path / "first" / "traces")
    assert sorted(s["name"] for s in first) == sorted(f"s{i}" for i in range(10))


@pytest.mark.subprocess
def test_uncaught_exception_fails_the_auto_session_with_a_later_excepthook(tmp_path):
    """An excepthook installed after init() that does not chain to ours still gives a fail auto session."""
    proc = _run(
        """
        import sys
        import sdk
        sdk.init(auto_start_session=True, console_summary=False)
        sys.excepthook = lambda t, v, tb: print("my hook:", t.__name__, file=sys.stderr)
        raise KeyError("boom")
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    assert "my hook: KeyError" in proc.stderr
    roots = [
        s for s in read_otlp_json_spans(tmp_path / ".sessiontrace" / "traces") if "parentSpanId" not in s
    ]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in roots[0]["attributes"]}
    assert attrs["session.state"] == "fail", json.dumps(attrs)
    assert attrs["session.end_reason"] == "uncaught KeyError"


@pytest.mark.subprocess
def test_process_pool_patched_when_imported_after_init_and_init_does_not_import_it(tmp_path):
    """init() does not import concurrent.futures.process (30 ms); importing it later gets the patch."""
    proc = _run(
        """
        import sys
        import sdk
        sdk.init(exporter="none")
        print("imported by init:", "concurrent.futures.process" in sys.modules)
        from concurrent.futures import ProcessPoolExecutor
        print("patched:", hasattr(ProcessPoolExecutor.submit, "__wrapped__"))
        sdk.shutdown()
        print("removed:", not hasattr(ProcessPoolExecutor.submit, "__wrapped__"))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["imported by init: False", "patched: True", "removed: True"]
