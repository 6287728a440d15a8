"""Resident memory after many spans and sessions: bounded by the export queue, nothing kept per session.

RSS is process-wide, so every measurement is a fresh interpreter (a fresh temporary working
folder, so the SDK's data folder starts empty): ``sdk.init(exporter=<null exporter>)`` with the
default queue (``max_queue_size`` 2,048 spans, batches of 512), then S sessions one after the other
(``with sdk.session(...)``), each making P raw ``tracer.start_as_current_span("x")`` spans and
ending; then ``sdk.flush()``, ``gc.collect()``, and the child reads its own RSS (``VmRSS`` in
/proc/self/status) and peak (``VmHWM``), counts the ``sdk.Session`` and OpenTelemetry span objects
still alive (``gc.get_objects()``), and reports ``sdk.stats()``.

Two rows:

- **spans**: 10,000 sessions x 100 spans (1,000,000 spans; ``--quick``: 500 x 100) against the
  reference 100 sessions x 100 spans (10,000 spans): the growth must stay within what the export
  queue may hold at once (its cap times the measured size of one queued span) plus a fixed slack
  for the allocator.
- **sessions**: 100,000 sessions of 1 span against 10,000 (``--quick``: 5,000 against 500): no
  per-session leak — the difference divided by the extra sessions is the memory each ended
  session leaves behind. Once with the default session store (a SQLite file in the data folder,
  written by a background thread) and once with ``session_store="none"`` (the tracing pipeline
  alone), so a growth can be told apart.

The children of one row run interleaved (the order rotating), 2 rounds (1 with ``--quick``).
"""

from __future__ import annotations

import functools
import gc
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.common import run_child
from benchmarks.harness import Result, Settings, Timing, interleave_many

NAME = "memory"
QUEUE_CAP = 2048  # the SDK's default max_queue_size, which the children keep
SLACK = 8 * 2**20  # allocator slack and other noise allowed on top of a full queue

CHILD = "from benchmarks.memory import child_main; child_main()"
DEFAULT_STORE = "default"  # init() without session_store: the SDK's default (a SQLite file in data_dir)

Case = tuple[int, int, str]
"""Sessions, spans per session, session store (`DEFAULT_STORE` or a `session_store` value)."""


def _status_bytes(field: str) -> int:
    """A `VmRSS:`-style line of /proc/self/status, in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return 0


def child_main() -> None:
    """argv: sessions, spans per session, measure_span_size (0/1), session store. Prints one JSON line."""
    import time

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    import sdk

    sessions, per_session, measure_size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    store = sys.argv[4]

    class FastExporter(SpanExporter):
        """Accepts every batch at once and keeps nothing but a count."""

        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    exporter = FastExporter()
    options: dict[str, Any] = {} if store == DEFAULT_STORE else {"session_store": store}
    sdk.init(exporter=exporter, service_name="sessiontrace-benchmarks", **options)
    tracer = trace.get_tracer("benchmarks.memory")
    start = tracer.start_as_current_span
    rss_after_init = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    for i in range(sessions):
        with sdk.session("bench-memory", user_id=f"u-{i}"):
            for _ in range(per_session):
                with start("x"):
                    pass
    elapsed = time.perf_counter() - t0
    flushed = sdk.flush(30.0)
    gc.collect()
    rss = _status_bytes("VmRSS")
    peak = _status_bytes("VmHWM")
    alive_sessions = alive_spans = 0
    for obj in gc.get_objects():
        if isinstance(obj, sdk.Session):
            alive_sessions += 1
        elif isinstance(obj, ReadableSpan):
            alive_spans += 1
    exported, stats = exporter.exported, sdk.stats()._asdict()
    span_bytes = session_bytes = 0
    if measure_size:  # after the RSS was read: what one ended span held in the queue costs
        import tracemalloc

        held: list[object] = []
        n = 2000
        with sdk.session("size"):
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                with start("x") as span:
                    pass
                held.append(span)
            span_bytes = (tracemalloc.get_traced_memory()[0] - before) // n
            tracemalloc.stop()
        # What one ended session waiting in the store writer's queue holds (its Session, its span).
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            with sdk.session("bench-memory", user_id=f"u-{i}") as session:
                pass
            held.append(session)
        session_bytes = (tracemalloc.get_traced_memory()[0] - before) // n
        tracemalloc.stop()
        del held
    print(
        json.dumps(
            {
                "rss": rss,
                "peak": peak,
                "rss_after_init": rss_after_init,
                "seconds": elapsed,
                "flushed": flushed,
                "exported": exported,
                "alive_sessions": alive_sessions,
                "alive_spans": alive_spans,
                "span_bytes": span_bytes,
                "session_bytes": session_bytes,
                "stats": stats,
            }
        ),
        flush=True,
    )


def _measure(case: Case, size: bool, runs: list[dict[str, Any]]) -> Timing:
    sessions, per_session, store = case
    argv = [str(sessions), str(per_session), "1" if size else "0", store]
    # run_child takes a -c program; its arguments go in through sys.argv, set by the program itself.
    program = f"import sys; sys.argv[1:] = {argv!r}; {CHILD}"
    _, out = run_child(program, timeout=900.0)
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    runs.append(data)
    return Timing(float(data["rss"]))


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _checks(cases: dict[str, Case], runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], bool]:
    checks: dict[str, Any] = {}
    ok = True
    for case, (sessions, per, _) in cases.items():
        made = sessions * (per + 1)
        for data in runs[case]:
            stats = data["stats"]
            # >=: the SDK may export spans of its own (e.g. a start marker for a session that ran long).
            good = (
                data["flushed"]
                and data["exported"] + stats["spans_dropped"] >= made
                and stats["internal_errors"] == 0
                and stats["sessions_open"] == 0
            )
            ok = ok and good
        first = runs[case][0]
        checks[f"{case}: spans exported + dropped / made; sessions open; alive Session / span objects"] = (
            f"{first['exported']} + {first['stats']['spans_dropped']} / {made}; "
            f"{first['stats']['sessions_open']}; {first['alive_sessions']} / {first['alive_spans']}"
        )
    return checks, ok


def _row(
    settings: Settings,
    name: str,
    title: str,
    cases: dict[str, Case],
    budget: float,
    size_from: str | None = None,
) -> tuple[Result, dict[str, list[dict[str, Any]]]]:
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    rounds = 1 if settings.quick else 2
    samples = interleave_many(
        {
            case: functools.partial(_measure, spec, case == size_from, runs[case])
            for case, spec in cases.items()
        },
        rounds=rounds,
    )
    sdk_case, ref_case = list(cases)
    store = cases[sdk_case][2]
    store_text = "" if store == DEFAULT_STORE else f", session_store={store!r}"
    checks, ok = _checks(cases, runs)
    notes: list[str] = []
    for case, (s, p, _) in cases.items():
        rss = [d["rss"] for d in runs[case]]
        notes.append(
            f"{case}: {s:,} sessions x {p:,} spans — RSS after flush {', '.join(_mb(r) for r in rss)}; "
            f"peak {', '.join(_mb(d['peak']) for d in runs[case])}; after init() "
            f"{_mb(statistics.median(d['rss_after_init'] for d in runs[case]))}; "
            f"{statistics.median(d['seconds'] for d in runs[case]):.1f} s of work; "
            f"{runs[case][0]['stats']['spans_dropped']:,} spans dropped (queue full); "
            f"sdk.stats().store_errors {runs[case][0]['stats']['store_errors']:,}"
        )
    result = Result(
        name=name,
        title=title,
        sdk_label=f"RSS after {cases[sdk_case][0]:,} ended sessions x {cases[sdk_case][1]:,} spans, "
        f"flushed{store_text}",
        sdk=[t.wall for t in samples[sdk_case]],
        ref_label=f"RSS after {cases[ref_case][0]:,} ended sessions x {cases[ref_case][1]:,} spans, "
        f"flushed{store_text}",
        ref=[t.wall for t in samples[ref_case]],
        budget_growth=budget,
        unit="MB",
        notes=notes,
        checks=checks,
        checks_ok=ok,
    )
    return result, runs


def run(settings: Settings) -> list[Result]:
    scale = 20 if settings.quick else 1  # --quick: the same shapes, 20 times smaller
    d = DEFAULT_STORE
    spans_cases: dict[str, Case] = {"many": (10_000 // scale, 100, d), "few": (100, 100, d)}
    many = spans_cases["many"][0] * 100
    spans_row, spans_runs = _row(
        settings,
        f"{NAME}_spans",
        f"RSS, {many:,} spans in {spans_cases['many'][0]:,} sessions",
        spans_cases,
        budget=0.0,  # set below, from the span size measured in the reference child
        size_from="few",
    )
    span_bytes = statistics.median(r["span_bytes"] for r in spans_runs["few"])
    bound = QUEUE_CAP * span_bytes + SLACK
    spans_row.budget_growth = bound
    growth = spans_row.sdk_median - (spans_row.ref_median or 0.0)
    spans_row.notes.insert(
        0,
        f"growth {_mb(growth)}; bound = max_queue_size {QUEUE_CAP:,} x {span_bytes:,.0f} B per queued "
        f"span (tracemalloc, an ended span with its session.id) + {_mb(SLACK)} allocator slack = {_mb(bound)}",
    )
    results = [spans_row]
    more, fewer = 100_000 // scale, 10_000 // scale
    from sdk.store.writer import MAX_QUEUED  # starts and ends the writer queues before it spills to disk

    session_bytes = statistics.median(r["session_bytes"] for r in spans_runs["few"])
    store_bound = bound + MAX_QUEUED * session_bytes
    for store, suffix, what, cap, cap_text in (
        (
            d,
            "",
            "the default session store (SQLite in the data folder)",
            store_bound,
            f"the span queue's bound plus the store writer's queue, {MAX_QUEUED:,} x "
            f"{session_bytes:,.0f} B per queued ended session (tracemalloc): {_mb(store_bound)}",
        ),
        (
            "none",
            "_no_store",
            '`session_store="none"`: the tracing pipeline alone',
            bound,
            f"the same queue bound, {_mb(bound)}",
        ),
    ):
        cases: dict[str, Case] = {"more": (more, 1, store), "fewer": (fewer, 1, store)}
        row, _ = _row(
            settings,
            f"{NAME}_sessions{suffix}",
            f"RSS, {more:,} vs {fewer:,} sessions" + ("" if store == d else f", store {store}"),
            cases,
            budget=cap,
        )
        growth = row.sdk_median - (row.ref_median or 0.0)
        extra = more - fewer
        row.notes.insert(
            0,
            f"{what}: growth {_mb(growth)} for {extra:,} more ended sessions, {growth / extra:,.0f} B per "
            f"session (budget: {cap_text}; 100 B kept per session would add {_mb(100 * extra)})",
        )
        results.append(row)
    return results
