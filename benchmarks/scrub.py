"""What scrubbing secrets costs: the export worker's scrubbing of a span, against making that span.

Scrubbing (docs/security.md) runs on the export worker, never on the program's threads: the span
path itself does not change (see ``span_in_session``). This measures the CPU it adds per exported
span, as a share of what a raw OpenTelemetry span costs to make. Both sides start and end the
same spans on a local provider with a null processor; the SDK side also passes each one through
`sdk.export.scrub.scrub_spans` (with the default settings), as the worker does. Two rows:

- a span as the SDK makes it in a session (its name and ``session.id``): the budget row;
- an HTTP client span with seven attributes and a URL unique to each span (informational: the
  worst common case, every value new to the scrubber's cache of clean values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from benchmarks.harness import Result, Settings, Timing, cpus, interleave, time_loop, walls

NAME = "scrub"
BUDGET = 1.10


class _Keep(SpanProcessor):
    """Keeps the last batch of ended spans (what the worker would be handed)."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _make(kind: str) -> Callable[[int, int], None]:
    provider = TracerProvider(shutdown_on_exit=False)
    keep = _Keep()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("benchmarks.scrub")
    session_id = "5f0c2d1e9a8b4c3d2e1f0a9b8c7d6e5f"

    def attributes(i: int) -> dict[str, Any]:
        if kind == "session":
            return {"session.id": session_id}
        return {
            "session.id": session_id,
            "http.request.method": "GET",
            "url.full": f"https://orders.internal:8443/api/v1/orders/{i}?expand=items&page=2",
            "server.address": "orders.internal",
            "server.port": 8443,
            "http.response.status_code": 200,
            "user_agent.original": "python-httpx/0.28.1",
        }

    def body(n: int, scrub: int) -> None:
        from sdk.export.scrub import scrub_spans
        from sdk.redaction import scrubber_for

        scrubber = scrubber_for(None)
        keep.ended.clear()
        start = tracer.start_span
        for i in range(n):
            start("GET /api/v1/orders" if kind == "http" else "x", attributes=attributes(i)).end()
        if scrub:
            scrub_spans(keep.ended, scrubber)

    return body


def run(settings: Settings) -> list[Result]:
    results = []
    for kind, title, budget in (
        ("session", "scrubbing a span of a session (export worker)", BUDGET),
        ("http", "scrubbing an HTTP client span, 7 attributes, unique URL (export worker)", None),
    ):
        body = _make(kind)

        def sdk_sample(body: Callable[[int, int], None] = body) -> Timing:
            return time_loop(settings, lambda n: body(n, 1), settings.ops)

        def ref_sample(body: Callable[[int, int], None] = body) -> Timing:
            return time_loop(settings, lambda n: body(n, 0), settings.ops)

        sdk_samples, ref_samples = interleave(sdk_sample, ref_sample, settings.rounds, settings.warmup)
        results.append(
            Result(
                name=f"{NAME}_{kind}",
                title=title,
                sdk_label="make and end the span, then `scrub_spans` over the batch (default settings)",
                sdk=walls(sdk_samples),
                sdk_cpu=cpus(sdk_samples),
                ref_label="make and end the same span (raw OpenTelemetry, same provider)",
                ref=walls(ref_samples),
                ref_cpu=cpus(ref_samples),
                budget_ratio=budget,
                informational=budget is None,
                ops_per_sample=settings.ops,
            )
        )
    return results
