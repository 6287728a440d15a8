"""Many users, one process: threads, asyncio tasks, executors and re-init at once, every span checked.

The acceptance test of contract line 3 ("zero misattributed spans under load"). Every span the
test makes records the session it must belong to in its own ``stress.expect`` attribute (set by
the test, independently of the SDK's ``session.id`` stamping), and every worker counts the spans it
made in each session. After the run, every exported span is checked, not a sample.

Runs in about 20-30 s on a 2-core machine; run it alone with ``pytest tests/test_stress.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import sdk

EXPECT = "stress.expect"  # the session id a span must carry, written by the test itself

THREADS = 32
THREAD_SESSIONS = 9  # per thread, one after another; three ways of making a session, in turn
THREAD_STEPS = 40  # per thread session: each step makes 4 spans (@tool + @task inside, raw + raw child)
LOOPS = 2  # event loops, each in its own thread
TASKS_PER_LOOP = 256
TASK_SESSIONS = 2  # per task, one after another
TASK_STEPS = 16  # per task session: each step makes 3 spans (async @tool, async @task inside, raw)

# Spans per session, the session's own span included (see thread_work / task_work).
THREAD_SESSION_SPANS = 1 + THREAD_STEPS * 4 + 1 + 3 + 2 * 3 + 3
TASK_SESSION_SPANS = 1 + TASK_STEPS * 3 + 1 + 2 + 3
TOTAL_SPANS = (
    THREADS * THREAD_SESSIONS * THREAD_SESSION_SPANS
    + LOOPS * TASKS_PER_LOOP * TASK_SESSIONS * TASK_SESSION_SPANS
)


class Row(NamedTuple):
    """What the checks need from one exported span (kept instead of the span, to save memory)."""

    trace_id: int
    span_id: int
    session_id: object
    expect: object
    name: str
    state: object
    events: tuple[tuple[str, object], ...]


class RecordingExporter(SpanExporter):
    """A thread-safe exporter that keeps one Row per span it is given, and counts its batches."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.markers: set[object] = set()
        self.batches = 0
        self.lock = threading.Lock()
        self.shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = []
        markers = set()
        for s in spans:
            attrs = s.attributes or {}
            if attrs.get("sessiontrace.span.kind") == "session.start":
                markers.add(attrs.get("session.id"))
                continue  # a live-session marker (docs/export.md): the SDK's, not a span the test made
            rows.append(
                Row(
                    s.context.trace_id,
                    s.context.span_id,
                    attrs.get("session.id"),
                    attrs.get(EXPECT),
                    s.name,
                    attrs.get("session.state"),
                    tuple((e.name, (e.attributes or {}).get("sid")) for e in s.events),
                )
            )
        with self.lock:
            self.rows.extend(rows)
            self.markers |= markers
            self.batches += 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True


def _init(exporter: SpanExporter) -> sdk.Config:
    return sdk.init(
        exporter=exporter,
        max_queue_size=500_000,
        export_interval=0.05,
        auto_start_session=True,
        console_summary=False,
    )


tracer = trace.get_tracer("tests.stress")


def _expect(sid: str) -> None:
    """Mark the current span (the decorator's own) as belonging to session `sid`."""
    trace.get_current_span().set_attribute(EXPECT, sid)


# --- the work, in threads ------------------------------------------------------------------------


@sdk.task
def inner_task(sid: str) -> None:
    _expect(sid)


@sdk.tool
def tool_step(sid: str, i: int) -> int:
    _expect(sid)
    sdk.event("tool.called", sid=sid, i=i)
    inner_task(sid)
    return 2


@sdk.task
def numbers(sid: str) -> Generator[int, None, None]:
    _expect(sid)
    yield from range(100)


def hop(sid: str) -> int:
    """Work handed to another thread: 3 spans, in the session that handed it over."""
    with tracer.start_as_current_span(f"{sid}/hop", attributes={EXPECT: sid}):
        return 1 + tool_step(sid, -1)


def thread_work(sid: str, pool: ThreadPoolExecutor) -> int:
    """The spans of one thread session (its own span not included); returns how many it made."""
    made = 0
    for i in range(THREAD_STEPS):
        made += tool_step(sid, i)
        with tracer.start_as_current_span(f"{sid}/raw", attributes={EXPECT: sid}):
            with tracer.start_as_current_span(f"{sid}/raw-child", attributes={EXPECT: sid}):
                made += 2
    gen = numbers(sid)  # a generator consumed in part, then closed: its span ends once
    next(gen)
    gen.close()
    made += 1
    made += pool.submit(hop, sid).result()
    made += sum(pool.map(hop, [sid, sid]))
    out: list[int] = []
    helper = threading.Thread(target=sdk.context.wrap(lambda: out.append(hop(sid))))
    helper.start()
    helper.join()
    made += out[0]
    return made


@sdk.session("stress-decorated")
def decorated_session(pool: ThreadPoolExecutor) -> tuple[sdk.Session, int]:
    s = sdk.current_session()
    assert s is not None
    assert not s.auto
    s.set_attribute(EXPECT, s.id)
    return s, 1 + thread_work(s.id, pool)


def thread_worker(t: int, pool: ThreadPoolExecutor, made: dict[str, tuple[sdk.Session, int]]) -> None:
    for k in range(THREAD_SESSIONS):
        sid = f"th{t}-s{k}"
        form = k % 3
        if form == 0:
            with sdk.session("stress-thread", session_id=sid, user_id=f"u{t}", attributes={EXPECT: sid}) as s:
                count = 1 + thread_work(sid, pool)
        elif form == 1:
            s = sdk.start_session("stress-thread", session_id=sid, attributes={EXPECT: sid})
            try:
                count = 1 + thread_work(sid, pool)
            finally:
                sdk.end_session(s)
        else:
            s, count = decorated_session(pool)
        made[s.id] = (s, count)
        current = sdk.current_session()
        assert current is None or current.auto, f"{current} still current after its session ended"


# --- the work, in asyncio tasks ------------------------------------------------------------------


@sdk.task
async def async_inner(sid: str) -> None:
    _expect(sid)
    await asyncio.sleep(0)


@sdk.tool
async def async_tool(sid: str, i: int) -> int:
    _expect(sid)
    sdk.event("tool.called", sid=sid, i=i)
    await asyncio.sleep(0)
    await async_inner(sid)
    with tracer.start_as_current_span(f"{sid}/araw", attributes={EXPECT: sid}):
        await asyncio.sleep(0)
    return 3


@sdk.task
async def async_numbers(sid: str) -> AsyncIterator[int]:
    _expect(sid)
    for i in range(3):
        await asyncio.sleep(0)
        yield i


async def child(sid: str) -> None:
    await asyncio.sleep(0)
    with tracer.start_as_current_span(f"{sid}/child-task", attributes={EXPECT: sid}):
        await asyncio.sleep(0)


async def task_work(sid: str, pool: ThreadPoolExecutor) -> int:
    made = 0
    for i in range(TASK_STEPS):
        made += await async_tool(sid, i)
    async for _ in async_numbers(sid):
        pass
    made += 1
    await asyncio.gather(child(sid), child(sid))  # tasks created inside the session continue it
    made += 2
    loop = asyncio.get_running_loop()
    made += await loop.run_in_executor(pool if len(sid) % 2 else None, hop, sid)
    return made


async def task_worker(
    n: int, t: int, pool: ThreadPoolExecutor, made: dict[str, tuple[sdk.Session, int]]
) -> None:
    for k in range(TASK_SESSIONS):
        sid = f"loop{n}-task{t}-s{k}"
        await asyncio.sleep(0)
        if k % 2 == 0:
            async with sdk.session("stress-task", session_id=sid, attributes={EXPECT: sid}) as s:
                count = 1 + await task_work(sid, pool)
        else:
            s = sdk.start_session("stress-task", session_id=sid, attributes={EXPECT: sid})
            try:
                count = 1 + await task_work(sid, pool)
            finally:
                sdk.end_session(s)
        made[s.id] = (s, count)


def loop_worker(n: int, pool: ThreadPoolExecutor, made: dict[str, tuple[sdk.Session, int]]) -> None:
    async def main() -> None:
        await asyncio.gather(*(task_worker(n, t, pool, made) for t in range(TASKS_PER_LOOP)))

    asyncio.run(main())


# --- the test ------------------------------------------------------------------------------------


def _run_all(
    target_and_args: list[tuple[Callable[..., object], tuple[object, ...]]],
) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def guarded(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn, *args)) for fn, args in target_and_args]
    for th in threads:
        th.start()
    return threads, errors


def test_many_threads_tasks_and_reinits_misattribute_lose_and_double_no_span() -> None:
    """32 threads and 512 asyncio tasks make ~106k spans in 1,312 sessions across two re-inits: every span is in its own session's trace, exported once, and counted."""
    stats_before = sdk.stats()
    exporters = [RecordingExporter(), RecordingExporter(), RecordingExporter()]
    _init(exporters[0])
    auto = sdk.current_session()
    assert auto is not None
    assert auto.auto
    started_before = sdk.stats().spans_started
    made: dict[str, tuple[sdk.Session, int]] = {}
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stress-pool") as pool:
        jobs: list[tuple[Callable[..., object], tuple[object, ...]]] = [
            (thread_worker, (t, pool, made)) for t in range(THREADS)
        ]
        jobs += [(loop_worker, (n, pool, made)) for n in range(LOOPS)]
        threads, errors = _run_all(jobs)
        # Re-init twice mid-run, each time with a new exporter, while every worker is busy.
        reinit_at: list[int] = []
        for n, exporter in enumerate(exporters[1:], start=1):
            while sdk.stats().spans_started - started_before < TOTAL_SPANS * n // 3:
                assert any(th.is_alive() for th in threads), "the work ended before the re-init"
                time.sleep(0.005)
            _init(exporter)
            reinit_at.append(sdk.stats().spans_started - started_before)
        for th in threads:
            th.join(120)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]
    assert not any(th.is_alive() for th in threads)
    assert sdk.flush(30.0), "flush timed out"
    stats = sdk.stats()

    # Every session the workers made, with the spans each made in it.
    assert len(made) == THREADS * THREAD_SESSIONS + LOOPS * TASKS_PER_LOOP * TASK_SESSIONS
    assert sum(count for _, count in made.values()) == TOTAL_SPANS
    sessions = {sid: s for sid, (s, _) in made.items()}
    assert all(s.state is sdk.SessionState.SUCCESS for s in sessions.values())

    rows = [row for e in exporters for row in e.rows]
    # Each re-init happened mid-run: each exporter got a real share of the spans.
    assert all(len(e.rows) > TOTAL_SPANS // 10 for e in exporters), (
        [len(e.rows) for e in exporters],
        reinit_at,
    )
    assert [e.shut_down for e in exporters] == [True, True, False]

    # No span exported twice, none lost, none that the test did not make.
    assert len({(r.trace_id, r.span_id) for r in rows}) == len(rows)
    dropped = stats.spans_dropped - stats_before.spans_dropped
    assert len(rows) == TOTAL_SPANS, (
        f"exported {len(rows)} spans, made {TOTAL_SPANS}, {dropped} counted as dropped"
    )
    unmarked = [r for r in rows if r.expect not in sessions]
    assert not unmarked, f"{len(unmarked)} spans without a known expected session, e.g. {unmarked[:3]}"

    # Every span carries its own session's id and sits in that session's trace.
    wrong_session = [r for r in rows if r.session_id != r.expect]
    assert not wrong_session, (
        f"{len(wrong_session)} spans with a missing or wrong session.id: {wrong_session[:3]}"
    )
    wrong_trace = [r for r in rows if f"{r.trace_id:032x}" != sessions[r.expect].trace_id]  # type: ignore[index]
    assert not wrong_trace, f"{len(wrong_trace)} spans outside their session's trace: {wrong_trace[:3]}"

    # Per session: exported spans == spans the worker made == Session.span_count, which also counts
    # the live marker of a session that had one exported (as a backend would).
    exported = Counter(r.expect for r in rows)
    marked = set().union(*(e.markers for e in exporters))
    mismatched = {
        sid: (exported[sid], count, s.span_count, s.marked, sid in marked)
        for sid, (s, count) in made.items()
        if not (exported[sid] == count == s.span_count - s.marked and s.marked == (sid in marked))
    }
    assert not mismatched, (
        f"{len(mismatched)} sessions miscounted (exported, made, span_count, marked, marker exported):"
        f" {list(mismatched.items())[:3]}"
    )

    # Each session's root span exported once, ended as success; events on the span they were added to.
    roots = Counter(r.expect for r in rows if r.state is not None)
    assert all(roots[sid] == 1 for sid in sessions)
    assert {r.state for r in rows if r.state is not None} == {"success"}
    events = [(r.expect, ev_sid) for r in rows for name, ev_sid in r.events if name == "tool.called"]
    tool_calls = THREADS * THREAD_SESSIONS * (THREAD_STEPS + 4) + LOOPS * TASKS_PER_LOOP * TASK_SESSIONS * (
        TASK_STEPS + 1
    )
    assert len(events) == tool_calls
    assert all(expect == ev_sid for expect, ev_sid in events)

    # Nothing leaked into the auto session, nothing dropped, no internal error.
    assert auto.span_count == 1 + auto.marked  # its own span (and its live marker, if one went out)
    assert dropped == 0
    assert stats.internal_errors - stats_before.internal_errors == 0
    assert stats.export_errors - stats_before.export_errors == 0
    assert elapsed < 90, f"the stress run took {elapsed:.1f} s"


def test_pool_threads_that_served_sessions_leak_none_into_work_outside_sessions() -> None:
    """Pool threads reused by many sessions carry no session into work later submitted from outside any session."""
    exporter = RecordingExporter()
    _init(exporter)
    auto = sdk.current_session()
    assert auto is not None
    made: dict[str, int] = {}
    outside = 0
    lock = threading.Lock()

    def work(expect: str) -> None:
        with tracer.start_as_current_span("pooled", attributes={EXPECT: expect}):
            pass

    def worker(t: int, pool: ThreadPoolExecutor) -> None:
        nonlocal outside
        for k in range(20):
            sid = f"w{t}-{k}"
            with sdk.session("pool-user", session_id=sid, attributes={EXPECT: sid}):
                for f in [pool.submit(work, sid) for _ in range(5)]:
                    f.result()
            made[sid] = 6
            for f in [pool.submit(work, auto.id) for _ in range(3)]:  # no session here: the auto one
                f.result()
            with lock:
                outside += 3

    with ThreadPoolExecutor(max_workers=4) as pool:
        threads, errors = _run_all([(worker, (t, pool)) for t in range(32)])
        for th in threads:
            th.join(60)
    assert not errors, errors[:3]
    assert sdk.flush(30.0)
    rows = exporter.rows
    assert len(rows) == sum(made.values()) + outside
    assert [r for r in rows if r.session_id != r.expect] == []
    assert [r for r in rows if r.expect == auto.id and f"{r.trace_id:032x}" != auto.trace_id] == []
    assert auto.span_count == 1 + auto.marked + outside
