"""Never break the host: internal failures are caught, logged once, counted; user errors are clear."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import sdk
from sdk.testing import capture


@pytest.fixture
def swallow_internal_errors(monkeypatch):
    """Run as a user would: internal errors swallowed (the suite otherwise re-raises them)."""
    monkeypatch.delenv("SESSIONTRACE_RAISE_INTERNAL_ERRORS")


class ExplodingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise ConnectionError("backend exploded")

    def shutdown(self) -> None:
        raise RuntimeError("shutdown exploded too")


class ExplodingProcessor(SpanProcessor):
    def on_start(self, span, parent_context=None) -> None:
        raise RuntimeError("on_start exploded")

    def on_end(self, span) -> None:
        raise RuntimeError("on_end exploded")


def test_exporter_exception_never_reaches_user_code(swallow_internal_errors, tracer, caplog):
    """An exporter raising on every batch: the program runs on, the error is logged once and counted."""
    exporter = ExplodingExporter()
    before = sdk.stats()
    sdk.init(exporter=exporter, export_interval=0.01, max_export_batch_size=1)
    for i in range(3):
        with sdk.session(f"s{i}"), tracer.start_as_current_span("work"):
            pass
        assert sdk.flush(timeout=5)
    after = sdk.stats()
    assert exporter.calls == 6
    assert after.internal_errors - before.internal_errors == 6
    assert after.spans_dropped - before.spans_dropped == 6
    logged = [
        r for r in caplog.records if "internal error in exporter ExplodingExporter.export" in r.getMessage()
    ]
    assert len(logged) == 1
    sdk.shutdown()


def test_span_processor_exception_never_reaches_user_code(swallow_internal_errors, tracer, caplog):
    """A failing extra span processor does not change what user code sees."""
    captured = capture(span_processors=[ExplodingProcessor()])
    with sdk.session("s") as s:
        with tracer.start_as_current_span("work") as span:
            span.set_attribute("ok", True)
        result = "still running"
    assert result == "still running"
    assert s.state is sdk.SessionState.SUCCESS
    assert {x.name for x in captured.spans()} == {"s", "work"}
    assert sum("on_start exploded" in str(r.exc_info) for r in caplog.records if r.exc_info) == 1


def test_internal_errors_reraised_under_the_sdk_test_flag(tracer):
    """With SESSIONTRACE_RAISE_INTERNAL_ERRORS=1 (the SDK's own tests) internal errors surface."""
    capture(span_processors=[ExplodingProcessor()])
    with pytest.raises(RuntimeError, match="on_start exploded"):
        tracer.start_span("x")


def test_unprintable_attribute_values_are_accepted(captured):
    """Attributes of any type, even ones whose str() raises, are converted, never rejected."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with sdk.session("s", attributes={"hostile": Hostile(), "big": 10**30, "none": None}) as s:
        s.set_attribute("obj", Hostile())
        sdk.event("e", hostile=Hostile(), blob=b"\xff\x00bytes")
    root = captured.named("s")
    assert root.attributes["hostile"] == "<unprintable Hostile>"
    assert root.attributes["big"] == str(10**30)
    assert "none" not in root.attributes
    assert root.attributes["obj"] == "<unprintable Hostile>"


def test_oversized_attribute_values_truncated_to_configured_limit():
    """String attributes from the SDK's API are truncated to attribute_max_length."""
    captured = capture(attribute_max_length=10)
    with sdk.session("s", attributes={"long": "x" * 100}):
        sdk.event("e", text="y" * 100)
    root = captured.named("s")
    assert len(root.attributes["long"]) == 10
    assert len(root.events[0].attributes["text"]) == 10


def test_user_errors_are_specific(captured):
    """Mistakes in the user's own calls raise with a message naming what is wrong."""
    with pytest.raises(sdk.ConfigError, match="service_nam"):
        sdk.init(service_nam="typo")
    with pytest.raises(TypeError, match="Session or a session id"):
        sdk.end_session(42)  # type: ignore[arg-type]


def test_logger_is_named_sessiontrace(swallow_internal_errors, tracer, caplog):
    """The SDK logs under the 'sessiontrace' logger so applications can route or silence it."""
    capture(span_processors=[ExplodingProcessor()])
    caplog.set_level(logging.ERROR, logger="sessiontrace")
    tracer.start_span("x").end()
    assert {r.name for r in caplog.records} == {"sessiontrace"}
