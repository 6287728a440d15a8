"""Starting and ending a session, against starting and ending one raw span.

SDK: ``with sdk.session("s"): pass`` (a new trace whose root span is the session, registered,
made current, ended as ``success`` and exported). Reference: ``with
tracer.start_as_current_span("s"): pass`` (a new root span) on the local reference provider.
"""

from __future__ import annotations

import contextlib

from benchmarks.common import Pipelines, Workload, pipelines, run_workload
from benchmarks.harness import Result, Settings, cpus, walls

NAME = "session_start_end"
BUDGET = 1.5


def workload(p: Pipelines) -> Workload:
    import sdk

    ref_tracer = p.ref_provider.get_tracer("benchmarks.session")

    def sdk_body(n: int) -> None:
        session = sdk.session
        for _ in range(n):
            with session("s"):
                pass

    def ref_body(n: int) -> None:
        start = ref_tracer.start_as_current_span
        for _ in range(n):
            with start("s"):
                pass

    return Workload(
        sdk_body=sdk_body,
        ref_body=ref_body,
        sdk_scope=contextlib.nullcontext,
        ref_scope=contextlib.nullcontext,
    )


def run(settings: Settings) -> list[Result]:
    p = pipelines()
    ops = max(settings.ops // 2, 1000)  # at least 1,000: both workers wake at 512 queued spans
    sdk_samples, ref_samples, checks, ok = run_workload(workload(p), p, settings, ops)
    return [
        Result(
            name=NAME,
            title="session start + end",
            sdk_label='`with sdk.session("s"): pass`',
            sdk=walls(sdk_samples),
            sdk_cpu=cpus(sdk_samples),
            ref_label='`with tracer.start_as_current_span("s"): pass` (a root span) on the reference provider',
            ref=walls(ref_samples),
            ref_cpu=cpus(ref_samples),
            budget_ratio=BUDGET,
            ops_per_sample=ops,
            checks=checks,
            checks_ok=ok,
        )
    ]
