"""Throughput under concurrency: spans per second with 1, 8 and 32 threads and 1,000 asyncio tasks.

Each worker (a thread, or an asyncio task on one event loop) runs inside its own scope and makes
raw ``tracer.start_as_current_span("x")`` spans in a loop. SDK side: the scope is
``with sdk.session(...)`` and the tracer comes from OpenTelemetry's global provider after
``sdk.init(exporter=NullExporter())``, so every span is stamped with its worker's session and goes
through the SDK's BatchExportProcessor. Reference side: the scope is one parent span
(``start_as_current_span``) on the local ``TracerProvider`` + ``BatchSpanProcessor(NullExporter())``.

One sample: the workers are started and enter their scope (untimed), wait at a barrier, and the
clock runs from their release until the last one has made its spans; then both pipelines are
flushed (untimed) and the workers leave their scopes (the session / parent spans end). The sample's
time divided by its span count is the time per span under that concurrency; its inverse is the
throughput. An asyncio task awaits ``asyncio.sleep(0)`` after every span, so the 1,000 sessions
really interleave on the loop (that switch is part of both sides' time). A sample makes about
2,000 spans, under both pipelines' default queue of 2,048, and both are flushed before every
sample, so nothing is dropped, which the fairness checks verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from benchmarks.common import Pipelines, counts, fairness_checks, pipelines
from benchmarks.harness import Result, Settings, Timing, cpus, gc_policy, interleave, walls

NAME = "throughput"
BUDGET = 1.15
TASKS_BUDGET = 1.10
"""1,000 asyncio tasks, a session each: the tighter budget (issue 14)."""
SPANS_PER_SAMPLE = 2000  # with the workers' scope spans, under the default queue (2,048) of both sides
THREAD_COUNTS = (1, 8, 32)
TASKS = 1000


@dataclass
class Side:
    """One side of the comparison: the exporter it feeds, the worker's scope, the span loops."""

    name: str
    scope: Callable[[], AbstractContextManager[Any]]
    body: Callable[[int], None]
    abody: Callable[[int], Any]


def sides(p: Pipelines) -> tuple[Side, Side]:
    import sdk

    sdk_tracer = trace.get_tracer("benchmarks.throughput")
    ref_tracer = p.ref_provider.get_tracer("benchmarks.throughput")

    def make(tracer: trace.Tracer) -> tuple[Callable[[int], None], Callable[[int], Any]]:
        def body(n: int) -> None:
            start = tracer.start_as_current_span
            for _ in range(n):
                with start("x"):
                    pass

        async def abody(n: int) -> None:
            start = tracer.start_as_current_span
            sleep = asyncio.sleep
            for _ in range(n):
                with start("x"):
                    pass
                await sleep(0)

        return body, abody

    sdk_body, sdk_abody = make(sdk_tracer)
    ref_body, ref_abody = make(ref_tracer)
    return (
        Side("sdk", lambda: sdk.session("bench-worker"), sdk_body, sdk_abody),
        Side("ref", lambda: ref_tracer.start_as_current_span("bench-worker"), ref_body, ref_abody),
    )


def thread_sample(
    settings: Settings, p: Pipelines, side: Side, workers: int, per_worker: int, during: dict[str, int]
) -> Timing:
    """`workers` threads, each in its own scope, make `per_worker` spans each; timed from release to last."""
    ready = threading.Barrier(workers + 1)
    done = threading.Barrier(workers + 1)
    leave = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with side.scope():
                ready.wait()
                side.body(per_worker)
                done.wait()
                leave.wait()
        except BaseException as exc:
            errors.append(exc)
            ready.abort()
            done.abort()

    exporter = p.sdk_exporter if side.name == "sdk" else p.ref_exporter
    with gc_policy(settings):
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        while ready.n_waiting < workers and not errors:
            time.sleep(0.0005)
        before = exporter.exported
        cpu0 = time.process_time()
        start = time.perf_counter()
        ready.wait()
        done.wait()
        end = time.perf_counter()
        cpu1 = time.process_time()
        during[side.name] += exporter.exported - before
    p.flush()
    leave.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    ops = workers * per_worker
    return Timing((end - start) / ops, (cpu1 - cpu0) / ops)


def task_sample(
    settings: Settings,
    p: Pipelines,
    loop: asyncio.AbstractEventLoop,
    side: Side,
    tasks: int,
    per_task: int,
    during: dict[str, int],
) -> Timing:
    """`tasks` asyncio tasks on one loop, each in its own scope, make `per_task` spans each."""
    exporter = p.sdk_exporter if side.name == "sdk" else p.ref_exporter

    async def run() -> Timing:
        go = asyncio.Event()
        leave = asyncio.Event()
        all_ready = asyncio.Event()
        all_done = asyncio.Event()
        state = {"ready": 0, "done": 0}

        async def worker() -> None:
            with side.scope():
                state["ready"] += 1
                if state["ready"] == tasks:
                    all_ready.set()
                await go.wait()
                await side.abody(per_task)
                state["done"] += 1
                if state["done"] == tasks:
                    all_done.set()
                await leave.wait()

        running = [asyncio.create_task(worker()) for _ in range(tasks)]
        await all_ready.wait()
        before = exporter.exported
        cpu0 = time.process_time()
        start = time.perf_counter()
        go.set()
        await all_done.wait()
        end = time.perf_counter()
        cpu1 = time.process_time()
        during[side.name] += exporter.exported - before
        p.flush()
        leave.set()
        await asyncio.gather(*running)
        ops = tasks * per_task
        return Timing((end - start) / ops, (cpu1 - cpu0) / ops)

    with gc_policy(settings):
        return loop.run_until_complete(run())


def rounds_for(settings: Settings) -> tuple[int, int]:
    """(rounds, warm-up rounds) per case: four cases of about 0.1-0.3 s per sample and side."""
    if settings.quick:
        return 4, 1
    return max(settings.rounds // 2, 10), settings.warmup


def run(settings: Settings) -> list[Result]:
    p = pipelines()
    sdk_side, ref_side = sides(p)
    rounds, warmup = rounds_for(settings)
    n = rounds + warmup
    cases: list[tuple[str, str, int, int, Callable[[Side, dict[str, int]], Timing]]] = []
    for workers in THREAD_COUNTS:
        per = math.ceil(SPANS_PER_SAMPLE / workers)

        def threads_case(side: Side, during: dict[str, int], w: int = workers, k: int = per) -> Timing:
            return thread_sample(settings, p, side, w, k, during)

        label = "1 thread" if workers == 1 else f"{workers} threads"
        cases.append((f"{NAME}_threads_{workers}", label, workers, per, threads_case))
    loop = asyncio.new_event_loop()
    per_task = math.ceil(SPANS_PER_SAMPLE / TASKS)

    def tasks_case(side: Side, during: dict[str, int]) -> Timing:
        return task_sample(settings, p, loop, side, TASKS, per_task, during)

    cases.append((f"{NAME}_tasks_{TASKS}", f"{TASKS:,} asyncio tasks", TASKS, per_task, tasks_case))

    results: list[Result] = []
    try:
        for name, label, workers, per_worker, case in cases:
            ops = workers * per_worker
            during = {"sdk": 0, "ref": 0}
            before = counts(p)
            sdk_samples, ref_samples = interleave(
                functools.partial(case, sdk_side, during),
                functools.partial(case, ref_side, during),
                rounds=rounds,
                warmup=warmup,
                between=p.flush,
            )
            # Each sample: `ops` spans plus one scope span (session / parent) per worker.
            checks, ok = fairness_checks(
                p, before, sdk_spans=n * (ops + workers), ref_spans=n * (ops + workers)
            )
            checks["spans exported while samples were timed (sdk / reference)"] = (
                f"{during['sdk']} / {during['ref']}"
            )
            ok = ok and during["sdk"] > 0 and during["ref"] > 0
            sdk_rate = 1 / statistics.median(walls(sdk_samples))
            ref_rate = 1 / statistics.median(walls(ref_samples))
            unit = "task" if "tasks" in name else "thread"
            results.append(
                Result(
                    name=name,
                    title=f"throughput, {label} (time per span)",
                    sdk_label=f'{label}, each in its own `with sdk.session(...)`, `tracer.start_as_current_span("x")` '
                    "per span, global provider after `sdk.init(exporter=NullExporter())`",
                    sdk=walls(sdk_samples),
                    sdk_cpu=cpus(sdk_samples),
                    ref_label=f"{label}, each in its own parent span, same call on a local `TracerProvider` + "
                    "`BatchSpanProcessor(NullExporter())`",
                    ref=walls(ref_samples),
                    ref_cpu=cpus(ref_samples),
                    budget_ratio=TASKS_BUDGET if "tasks" in name else BUDGET,
                    ops_per_sample=ops,
                    notes=[
                        f"throughput: SDK {sdk_rate:,.0f} spans/s, reference {ref_rate:,.0f} spans/s "
                        f"({per_worker} spans per {unit} per sample; {rounds} rounds + {warmup} warm-up)"
                    ],
                    checks=checks,
                    checks_ok=ok,
                )
            )
    finally:
        with contextlib.suppress(Exception):
            loop.close()
        gc.collect()
    return results
