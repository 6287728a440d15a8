"""Attribution by trace: a span whose parent is in a session's trace belongs to that session, even
with no session in its context (a runtime that forwarded only ``traceparent`` through a queue),
and for a grace period after the session ended."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import sdk
from sdk.testing import CapturedSpans, FakeClock, capture

tracer = trace.get_tracer("tests.attribution")
_W3C = TraceContextTextMapPropagator()


def traceparent_only() -> dict[str, str]:
    """The W3C traceparent of the current span and nothing else (no baggage, no session id)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    assert set(carrier) == {"traceparent"}
    return carrier


def session_of(captured: CapturedSpans, name: str) -> list[object]:
    return [(s.attributes or {}).get("session.id") for s in captured.spans() if s.name == name]


def test_a_worker_thread_with_only_a_traceparent_lands_in_the_session() -> None:
    captured = capture(session_store="none")
    jobs: queue.Queue[dict[str, str] | None] = queue.Queue()

    def worker() -> None:  # a fresh context: no session, no baggage
        while (headers := jobs.get()) is not None:
            with tracer.start_as_current_span("handler", context=_W3C.extract(headers)):
                with tracer.start_as_current_span("llm.call"):
                    pass

    thread = threading.Thread(target=contextvars.Context().run, args=(worker,))
    thread.start()
    with sdk.session("producer") as s:
        with tracer.start_as_current_span("publish"):
            jobs.put(traceparent_only())
        time.sleep(0)  # the worker may run now or later: either way the session is open or in grace
    jobs.put(None)
    thread.join()
    handler = captured.named("handler")
    assert handler.context.trace_id == s.trace_id_int
    assert session_of(captured, "handler") == session_of(captured, "llm.call") == [s.id]


async def test_an_asyncio_task_in_a_fresh_context_with_a_traceparent_lands_in_the_session() -> None:
    captured = capture(session_store="none")
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def consume() -> None:
        headers = await inbox.get()
        with tracer.start_as_current_span("handled", context=extract(headers)):
            await asyncio.sleep(0)

    # create_task(context=) is Python 3.11+: a task copies the context it is created in.
    consumer = contextvars.Context().run(asyncio.get_running_loop().create_task, consume())
    async with sdk.session("async-producer") as s:
        with tracer.start_as_current_span("publish"):
            await inbox.put(traceparent_only())
        await consumer
    assert session_of(captured, "handled") == [s.id]


def test_a_span_that_ends_after_its_session_still_carries_it() -> None:
    captured = capture(session_store="none")
    with sdk.session("short") as s:
        late = tracer.start_span("outlives-session")
    late.end()
    assert session_of(captured, "outlives-session") == [s.id]


def test_a_span_started_after_its_session_ended_joins_it_within_the_grace_period() -> None:
    captured = capture(session_store="none", auto_start_session=True)
    with sdk.session("ended-early") as s:
        with tracer.start_as_current_span("publish"):
            headers = traceparent_only()
    assert s.ended
    contextvars.Context().run(lambda: tracer.start_span("late", context=_W3C.extract(headers)).end())
    assert session_of(captured, "late") == [s.id]
    assert captured.named("late").context.trace_id == s.trace_id_int


def test_after_the_grace_period_a_late_span_no_longer_claims_the_session(clock: FakeClock) -> None:
    """A span of an ended session's trace joins it until `ended_session_grace` has passed, not after."""
    captured = capture(session_store="none", ended_session_grace=10)
    with sdk.session("ended-long-ago") as s:
        with tracer.start_as_current_span("publish"):
            headers = traceparent_only()

    def late(name: str) -> None:
        contextvars.Context().run(lambda: tracer.start_span(name, context=_W3C.extract(headers)).end())

    clock.advance(9.9)
    late("just-in-time")
    clock.advance(0.2)
    late("too-late")
    assert session_of(captured, "just-in-time") == [s.id]
    assert session_of(captured, "too-late") == [None]
    assert s.ended


def test_grace_zero_turns_it_off() -> None:
    captured = capture(session_store="none", ended_session_grace=0)
    with sdk.session("no-grace"):
        with tracer.start_as_current_span("publish"):
            headers = traceparent_only()
    contextvars.Context().run(lambda: tracer.start_span("late", context=_W3C.extract(headers)).end())
    assert session_of(captured, "late") == [None]


def test_many_sessions_through_one_queue_every_span_in_its_own_session() -> None:
    """40 sessions publish into one queue consumed by 4 workers that see only traceparents; some jobs
    are handled after their session ended. Every handler span, and every child, is in its session."""
    captured = capture(session_store="none", max_queue_size=100_000)
    jobs: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue()

    def worker() -> None:
        while (job := jobs.get()) is not None:
            expected, headers = job
            with tracer.start_as_current_span("handler", context=_W3C.extract(headers)) as span:
                span.set_attribute("expected.session", expected)
                with tracer.start_as_current_span("child") as child:
                    child.set_attribute("expected.session", expected)

    workers = [threading.Thread(target=contextvars.Context().run, args=(worker,)) for _ in range(4)]
    for w in workers:
        w.start()

    def producer(i: int) -> None:
        with sdk.session(f"user-{i}", session_id=f"user-{i}"):
            for _ in range(25):
                with tracer.start_as_current_span("publish"):
                    jobs.put((f"user-{i}", traceparent_only()))

    producers = [threading.Thread(target=producer, args=(i,)) for i in range(40)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.join()
    handled = [s for s in captured.spans() if s.name in ("handler", "child")]
    assert len(handled) == 40 * 25 * 2
    wrong = [
        (s.name, (s.attributes or {}).get("session.id"), (s.attributes or {}).get("expected.session"))
        for s in handled
        if (s.attributes or {}).get("session.id") != (s.attributes or {}).get("expected.session")
    ]
    assert wrong == []
