"""A raw OpenTelemetry span inside a session with `sample_rate=0.1`: in a dropped session and a kept one.

SDK: the span_in_session statement after ``sdk.init(exporter=NullExporter(), sample_rate=0.1)``,
inside a session whose id the head decision drops (its spans are held until it ends, then
discarded) or keeps (exported as without sampling, after a per-span look at its id). Reference: the
same statement on the local ``TracerProvider`` with ``BatchSpanProcessor(NullExporter())`` inside one
parent span. Each sample uses a new session id; the pipeline is set back to ``sample_rate=1`` after.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace

from benchmarks.common import Pipelines, Workload, counts, pipelines
from benchmarks.harness import Result, Settings, Timing, cpus, interleave, time_loop, walls

NAME = "sampling"
RATE = 0.1


def _ids(keep: bool) -> Iterator[str]:
    from sdk.export.sampling import head_keeps

    return (sid for n in itertools.count() if head_keeps(sid := f"bench-{n}", RATE) is keep)


def _workload(p: Pipelines, keep: bool) -> Workload:
    import sdk

    sdk_tracer = trace.get_tracer("benchmarks.raw")
    ref_tracer = p.ref_provider.get_tracer("benchmarks.raw")
    ids = _ids(keep)

    def body(tracer: trace.Tracer) -> Callable[[int], None]:
        def run(n: int) -> None:
            start = tracer.start_as_current_span
            for _ in range(n):
                with start("x"):
                    pass

        return run

    return Workload(
        sdk_body=body(sdk_tracer),
        ref_body=body(ref_tracer),
        sdk_scope=lambda: sdk.session("bench-sampled", session_id=next(ids)),
        ref_scope=lambda: ref_tracer.start_as_current_span("bench-parent"),
        sdk_spans_per_sample=1,
        ref_spans_per_sample=1,
    )


def _measure(p: Pipelines, settings: Settings, keep: bool) -> Result:
    import sdk

    workload = _workload(p, keep)
    before = counts(p)
    sampled_out_before = sdk.stats().spans_sampled_out

    def sample(scope: Callable[[], AbstractContextManager[Any]], body: Callable[[int], None]) -> Timing:
        with scope():
            return time_loop(settings, body, settings.ops)

    sdk_samples, ref_samples = interleave(
        lambda: sample(workload.sdk_scope, workload.sdk_body),
        lambda: sample(workload.ref_scope, workload.ref_body),
        rounds=settings.rounds,
        warmup=settings.warmup,
        between=p.flush,
    )
    p.flush()
    after = counts(p)
    made = (settings.rounds + settings.warmup) * (settings.ops + 1)
    sdk_exported = after.sdk_exported - before.sdk_exported
    sampled_out = sdk.stats().spans_sampled_out - sampled_out_before
    expected_exported, expected_out = (made, 0) if keep else (0, made)
    checks = {
        "sdk spans exported / made": f"{sdk_exported} / {made}",
        "sdk spans sampled out / made": f"{sampled_out} / {made}",
        "reference spans exported / made": f"{after.ref_exported - before.ref_exported} / {made}",
        "sdk.stats().spans_dropped (delta)": after.spans_dropped - before.spans_dropped,
        "sdk.stats().internal_errors (delta)": after.internal_errors - before.internal_errors,
    }
    ok = (
        sdk_exported == expected_exported
        and sampled_out == expected_out
        and after.ref_exported - before.ref_exported == made
        and after.spans_dropped == before.spans_dropped
        and after.internal_errors == before.internal_errors
    )
    which = "kept" if keep else "dropped"
    return Result(
        name=f"{NAME}_{which}",
        title=f"span in a session the head decision {which} (sample_rate={RATE})",
        sdk_label=f'`tracer.start_as_current_span("x")` + end inside `with sdk.session(...)` whose id is '
        f"{which} at `sample_rate={RATE}`"
        + ("" if keep else " (held until the session ends, then discarded)"),
        sdk=walls(sdk_samples),
        sdk_cpu=cpus(sdk_samples),
        ref_label="same call on a local `TracerProvider` + `BatchSpanProcessor(NullExporter())`, "
        "inside one parent span",
        ref=walls(ref_samples),
        ref_cpu=cpus(ref_samples),
        budget_ratio=1.10 if keep else None,
        informational=not keep,
        ops_per_sample=settings.ops,
        checks=checks,
        checks_ok=ok,
    )


def run(settings: Settings) -> list[Result]:

    p = pipelines()
    p.reinit(sample_rate=RATE)
    try:
        return [_measure(p, settings, keep=False), _measure(p, settings, keep=True)]
    finally:
        p.reinit()
