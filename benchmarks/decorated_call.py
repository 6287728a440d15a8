"""A call of a trivial function decorated with ``@sdk.tool``, inside a session.

SDK: ``work(i)`` where ``work`` is ``@sdk.tool``-decorated (one span with the tool's attributes,
stamped with ``session.id``). Reference: ``with tracer.start_as_current_span("execute_tool work"):
plain(i)`` on the local reference provider, inside one parent span. A second, informational row
gives the reference span the same four attributes the decorator sets, which separates what the
attributes cost from what the SDK's machinery costs.
"""

from __future__ import annotations

from benchmarks.common import Pipelines, Workload, pipelines, run_workload
from benchmarks.harness import Result, Settings, cpus, walls

NAME = "decorated_call"
BUDGET = 1.25


def plain(x: int) -> int:
    return x + 1


def workload(p: Pipelines, same_attributes: bool = False) -> Workload:
    import sdk

    work = sdk.tool(plain)
    ref_tracer = p.ref_provider.get_tracer("benchmarks.decorated")
    attrs = (
        {
            "sessiontrace.span.kind": "tool",
            "code.function.name": f"{plain.__module__}.{plain.__qualname__}",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "plain",
        }
        if same_attributes
        else None
    )

    def sdk_body(n: int) -> None:
        for i in range(n):
            work(i)

    def ref_body(n: int) -> None:
        start = ref_tracer.start_as_current_span
        for i in range(n):
            with start("execute_tool plain", attributes=attrs):
                plain(i)

    return Workload(
        sdk_body=sdk_body,
        ref_body=ref_body,
        sdk_scope=lambda: sdk.session("bench-tools"),
        ref_scope=lambda: ref_tracer.start_as_current_span("bench-parent"),
        sdk_spans_per_sample=1,
        ref_spans_per_sample=1,
    )


def run(settings: Settings) -> list[Result]:
    p = pipelines()
    results = []
    for same in (False, True):
        sdk_samples, ref_samples, checks, ok = run_workload(workload(p, same), p, settings, settings.ops)
        results.append(
            Result(
                name=NAME + ("_same_attributes" if same else ""),
                title="@sdk.tool call" + (" (ref. with the same 4 attributes)" if same else ""),
                sdk_label="a trivial `@sdk.tool` function called inside `with sdk.session(...)`",
                sdk=walls(sdk_samples),
                sdk_cpu=cpus(sdk_samples),
                ref_label="`with tracer.start_as_current_span('execute_tool plain'"
                + (", attributes=<the decorator's 4>)" if same else ")")
                + ": plain(i)` on the reference provider, inside one parent span",
                ref=walls(ref_samples),
                ref_cpu=cpus(ref_samples),
                budget_ratio=None if same else BUDGET,
                ops_per_sample=settings.ops,
                checks=checks,
                checks_ok=ok,
                informational=same,
            )
        )
    return results
