"""Helpers for testing code instrumented with sessiontrace (and for the SDK's own tests).

from sdk.testing import capture, reset

def test_refund_flow():
    captured = capture(service_name="test")
    run_refund_flow()
    assert {s.attributes["session.id"] for s in captured.spans()} == {...}
    reset()

A test of a time window (an idle timeout, a grace period, a session expiry) freezes the SDK's clock
and moves it instead of sleeping through the window:

    clock = freeze_clock()
    clock.advance(31)   # the sessions' idle time and the grace periods see 31 s more
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sdk import lifecycle
from sdk.state import STATE, Clock


class CapturedSpans:
    """Spans recorded synchronously in memory (no batching), for assertions."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def spans(self) -> Sequence[ReadableSpan]:
        """Every ended span so far, in the order they ended."""
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> ReadableSpan:
        """The one ended span with this name (AssertionError if there are none or several)."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, f"expected one span named {name!r}, found {len(found)}"
        return found[0]

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        self.exporter.clear()


def capture(**settings: Any) -> CapturedSpans:
    """`sdk.init(**settings)` with no exporter and an in-memory recorder of every ended span."""
    exporter = InMemorySpanExporter()
    settings.setdefault("exporter", "none")
    processors = [SimpleSpanProcessor(exporter), *settings.pop("span_processors", ())]
    lifecycle.init(span_processors=processors, **settings)
    return CapturedSpans(exporter)


class FakeClock(Clock):
    """A clock that stands still until `advance` moves it (monotonic and wall time together).

    It starts at the real clocks' readings, so the time windows of sessions made before it was
    installed are measured on the same scale.
    """

    def __init__(self) -> None:
        real = Clock()
        self._monotonic_ns = real.monotonic_ns()
        self._time_ns = int(real.time() * 1e9)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (ValueError if negative: time does not go back)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back (advance({seconds!r}))")
        step = round(seconds * 1e9)
        self._monotonic_ns += step
        self._time_ns += step

    def monotonic(self) -> float:
        return self._monotonic_ns / 1e9

    def monotonic_ns(self) -> int:
        return self._monotonic_ns

    def time(self) -> float:
        return self._time_ns / 1e9


def freeze_clock() -> FakeClock:
    """Make the SDK read time from a new `FakeClock` (until `reset()`), and return it."""
    clock = FakeClock()
    STATE.clock = clock
    return clock


def reset() -> None:
    """Shut the SDK down and forget its process state, so the next test starts clean."""
    lifecycle.shutdown(timeout=2.0)
    STATE.reset()
    for listener in STATE.registry.auto_listeners:
        listener(False)
