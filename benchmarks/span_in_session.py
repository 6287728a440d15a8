"""A raw OpenTelemetry span inside a session, through the SDK's global provider.

SDK: ``with tracer.start_as_current_span("x"): pass`` inside ``with sdk.session(...)``, the tracer
from OpenTelemetry's global provider after ``sdk.init(exporter=NullExporter())``: the SDK's span
processor stamps ``session.id`` and its BatchExportProcessor exports.
Reference: the same statement on a local ``TracerProvider`` with ``BatchSpanProcessor(NullExporter())``,
inside one reference parent span (so both sides make child spans of an open parent).
"""

from __future__ import annotations

from opentelemetry import trace

from benchmarks.common import Pipelines, Workload, pipelines, run_workload
from benchmarks.harness import Result, Settings, cpus, walls

NAME = "span_in_session"
BUDGET = 1.10


def workload(p: Pipelines) -> Workload:
    import sdk

    sdk_tracer = trace.get_tracer("benchmarks.raw")
    ref_tracer = p.ref_provider.get_tracer("benchmarks.raw")

    def sdk_body(n: int) -> None:
        start = sdk_tracer.start_as_current_span
        for _ in range(n):
            with start("x"):
                pass

    def ref_body(n: int) -> None:
        start = ref_tracer.start_as_current_span
        for _ in range(n):
            with start("x"):
                pass

    return Workload(
        sdk_body=sdk_body,
        ref_body=ref_body,
        sdk_scope=lambda: sdk.session("bench-spans"),
        ref_scope=lambda: ref_tracer.start_as_current_span("bench-parent"),
        sdk_spans_per_sample=1,
        ref_spans_per_sample=1,
    )


def run(settings: Settings) -> list[Result]:
    p = pipelines()
    sdk_samples, ref_samples, checks, ok = run_workload(workload(p), p, settings, settings.ops)
    return [
        Result(
            name=NAME,
            title="span inside a session",
            sdk_label='`tracer.start_as_current_span("x")` + end inside `with sdk.session(...)`, '
            "global provider after `sdk.init(exporter=NullExporter())`",
            sdk=walls(sdk_samples),
            sdk_cpu=cpus(sdk_samples),
            ref_label="same call on a local `TracerProvider` + `BatchSpanProcessor(NullExporter())`, "
            "inside one parent span",
            ref=walls(ref_samples),
            ref_cpu=cpus(ref_samples),
            budget_ratio=BUDGET,
            ops_per_sample=settings.ops,
            checks=checks,
            checks_ok=ok,
        )
    ]
