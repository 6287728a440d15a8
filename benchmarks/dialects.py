"""What the backend dialects cost (issue 17): the same work with each `dialects` setting, against raw OpenTelemetry.

Three workloads, the ones of span_in_session, decorated_call and session_start_end (a raw span
inside a session, an ``@sdk.tool`` call, a session started and ended). For each, four sides
interleaved in one process, rotating which goes first: the reference (raw OpenTelemetry, as in
those benchmarks) and the SDK with ``dialects="none"``, ``"openinference"`` (the default) and
``"openinference,langfuse"``. Before every sample, untimed, the SDK is re-initialised (on the same
null exporter) with the SDK side's setting, or the default before a reference sample, and both
pipelines are flushed: every sample follows the same set-up, and the SDK sides differ in nothing
but the setting.

The dialects' attributes are added on the export worker (sdk/dialects.py), so what a program's
thread feels is the worker's share of the GIL; with content capture on, an LLM call also notes the
session's first question and last answer (not measured here: capture is off by default). The
rows compare each SDK side with the reference, and the default with ``none`` (the dialect's own
cost). The default is only on because its span-in-session row keeps within 1.10 times raw OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from benchmarks import decorated_call, session_start_end, span_in_session
from benchmarks.common import Pipelines, Workload, counts, pipelines
from benchmarks.harness import Result, Settings, Timing, cpus, interleave_many, time_loop, walls

NAME = "dialects"
SDK_SIDES = {"none": "none", "default": "openinference", "langfuse": "openinference,langfuse"}
"""Side name -> the `dialects` setting it runs with ("default" is the SDK's default)."""
WORKLOADS = (
    (span_in_session, "span inside a session", span_in_session.BUDGET),
    (decorated_call, "@sdk.tool call", decorated_call.BUDGET),
    (session_start_end, "session start + end", session_start_end.BUDGET),
)


def _measure(
    p: Pipelines, settings: Settings, workload: Workload
) -> tuple[dict[str, list[Timing]], dict[str, Any], bool]:
    """Interleaved samples of the reference and each SDK side, and the fairness checks."""
    during = dict.fromkeys(["ref", *SDK_SIDES], 0)

    def sample(side: str) -> Callable[[], Timing]:
        is_ref = side == "ref"
        exporter = p.ref_exporter if is_ref else p.sdk_exporter
        scope: Callable[[], AbstractContextManager[Any]] = (
            workload.ref_scope if is_ref else workload.sdk_scope
        )
        body = workload.ref_body if is_ref else workload.sdk_body

        def run() -> Timing:
            p.reinit(dialects=SDK_SIDES["default" if is_ref else side])
            p.flush()
            with scope():
                before_sample = exporter.exported
                timing = time_loop(settings, body, settings.ops)
                during[side] += exporter.exported - before_sample
            return timing

        return run

    before = counts(p)
    samples = interleave_many(
        {side: sample(side) for side in during}, rounds=settings.rounds, warmup=settings.warmup
    )
    p.flush()
    after = counts(p)
    n = settings.rounds + settings.warmup
    sdk_made = len(SDK_SIDES) * n * (settings.ops * workload.sdk_spans_per_op + workload.sdk_spans_per_sample)
    ref_made = n * (settings.ops * workload.ref_spans_per_op + workload.ref_spans_per_sample)
    sdk_exported = after.sdk_exported - before.sdk_exported
    ref_exported = after.ref_exported - before.ref_exported
    checks: dict[str, Any] = {
        "sdk spans exported / made (every setting)": f"{sdk_exported} / {sdk_made}",
        "reference spans exported / made": f"{ref_exported} / {ref_made}",
        "spans exported while samples were timed (" + " / ".join(during) + ")": " / ".join(
            str(v) for v in during.values()
        ),
        "sdk.stats().spans_dropped (delta)": after.spans_dropped - before.spans_dropped,
        "sdk.stats().internal_errors (delta)": after.internal_errors - before.internal_errors,
        "sdk.stats().export_errors (delta)": after.export_errors - before.export_errors,
    }
    ok = (
        sdk_exported == sdk_made
        and ref_exported == ref_made
        and all(v > 0 for v in during.values())
        and after.spans_dropped == before.spans_dropped
        and after.internal_errors == before.internal_errors
        and after.export_errors == before.export_errors
    )
    return samples, checks, ok


def _row(
    module: Any,
    title: str,
    samples: dict[str, list[Timing]],
    side: str,
    against: str,
    settings: Settings,
    **extra: Any,
) -> Result:
    """One row: `side`'s samples of a workload against `against`'s (the reference or another setting)."""
    ref_label = (
        f"raw OpenTelemetry, as in the benchmark {module.NAME}"
        if against == "ref"
        else f"the SDK with `dialects={SDK_SIDES[against]}`"
    )
    vs = "raw OpenTelemetry" if against == "ref" else f"dialects {SDK_SIDES[against]}"
    return Result(
        name=f"{NAME}_{module.NAME}_{side}" + ("" if against == "ref" else f"_vs_{against}"),
        title=f"{title}, dialects {SDK_SIDES[side]}" + ("" if against == "ref" else f" vs {vs}"),
        sdk_label=f"{module.NAME}'s SDK side with `dialects={SDK_SIDES[side]}`",
        sdk=walls(samples[side]),
        sdk_cpu=cpus(samples[side]),
        ref_label=ref_label,
        ref=walls(samples[against]),
        ref_cpu=cpus(samples[against]),
        ops_per_sample=settings.ops,
        **extra,
    )


def run(settings: Settings) -> list[Result]:
    p = pipelines()
    results: list[Result] = []
    try:
        for module, title, budget in WORKLOADS:
            samples, checks, ok = _measure(p, settings, module.workload(p))
            common = {"checks": checks, "checks_ok": ok}
            results += [
                _row(module, title, samples, "default", "ref", settings, budget_ratio=budget, **common),
                _row(module, title, samples, "none", "ref", settings, informational=True, **common),
                _row(module, title, samples, "langfuse", "ref", settings, informational=True, **common),
                _row(module, title, samples, "default", "none", settings, informational=True, **common),
            ]
    finally:
        p.reinit()  # as pipelines() left it
    return results
