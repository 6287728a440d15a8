"""The registry of open sessions: sdk.sessions(), the idle timeout, max_open_sessions, and no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import trace

import sdk
from sdk.reaper import reaper
from sdk.testing import CapturedSpans, capture

TIMEOUT = 0.2


@pytest.fixture
def captured_idle() -> CapturedSpans:
    """The SDK with an in-memory recorder and session_idle_timeout=TIMEOUT."""
    return capture(session_idle_timeout=TIMEOUT)


def _span_in(session: sdk.Session, name: str = "work") -> None:
    """One span in `session`'s trace, started from a context with no session (attributed by trace)."""
    tracer = trace.get_tracer("tests.registry")
    with tracer.start_as_current_span(name, context=trace.set_span_in_context(session.span)):
        pass


def _start_aside(name: str, **options: object) -> sdk.Session:
    """start_session() in a copy of the context, so that it does not become current in the test."""
    return sdk.context.run(sdk.start_session, name, **options)  # type: ignore[arg-type]


def _wait_until(
    condition: Callable[[], bool], timeout: float = 5.0, step: Callable[[], None] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        if step is not None:
            step()
        time.sleep(0.01)
    return True


def _root(captured: CapturedSpans, session: sdk.Session):
    (root,) = [s for s in captured.spans() if s.context.span_id == session.span.get_span_context().span_id]
    return root


# -- sdk.sessions() ----------------------------------------------------------------------------------


def test_sessions_lists_open_sessions_with_age_idle_and_span_count(captured, clock):
    """sdk.sessions() lists each open session oldest first with id, name, user, tags, age, idle and span count, and these change as spans start."""
    assert sdk.sessions() == []
    first = _start_aside("first", user_id="u-1", tags=["a"])
    clock.advance(0.05)
    second = _start_aside("second")
    infos = sdk.sessions()
    assert [(i.id, i.name, i.user_id, i.tags, i.auto, i.spans) for i in infos] == [
        (first.id, "first", "u-1", ("a",), False, 1),
        (second.id, "second", None, (), False, 1),
    ]
    assert [i.session for i in infos] == [first, second]
    assert [i.trace_id for i in infos] == [first.trace_id, second.trace_id]
    assert [i.age for i in infos] == pytest.approx([0.05, 0.0])
    assert [i.idle for i in infos] == pytest.approx([0.05, 0.0])

    clock.advance(0.05)
    for _ in range(3):
        _span_in(first)
    after = {i.id: i for i in sdk.sessions()}
    assert after[first.id].spans == 4 == first.span_count
    assert after[second.id].spans == 1
    assert after[first.id].idle == 0.0
    assert after[second.id].idle == pytest.approx(0.05)
    assert after[first.id].age == pytest.approx(0.1)

    second.end()
    assert [i.id for i in sdk.sessions()] == [first.id]
    first.end()
    assert sdk.sessions() == []


def test_sessions_lists_the_auto_session_marked_auto():
    """The auto session is listed too, marked auto=True."""
    capture(auto_start_session=True)
    with sdk.session("explicit") as s:
        infos = sdk.sessions()
    auto = sdk.current_session()
    assert auto is not None
    assert [(i.id, i.auto) for i in infos] == [(auto.id, True), (s.id, False)]
    assert [(i.id, i.auto) for i in sdk.sessions()] == [(auto.id, True)]


# -- idle timeout ------------------------------------------------------------------------------------


def test_a_frozen_clock_stands_still_until_advanced_and_reset_restores_the_real_one():
    """sdk.testing.freeze_clock(): monotonic and wall time stand still, move together by advance(), never back; reset() puts the real clock back."""
    from sdk.state import STATE, Clock
    from sdk.testing import freeze_clock, reset

    clock = freeze_clock()
    assert STATE.clock is clock
    mono, wall = clock.monotonic(), clock.time()
    time.sleep(0.01)  # real time passes; the frozen clock does not see it
    assert (clock.monotonic(), clock.time()) == (mono, wall)
    clock.advance(2.5)
    assert clock.monotonic() == pytest.approx(mono + 2.5)
    assert clock.time() == pytest.approx(wall + 2.5)
    assert clock.monotonic_ns() / 1e9 == pytest.approx(clock.monotonic())
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    reset()
    assert type(STATE.clock) is Clock


def test_idle_timeout_ends_an_idle_session_not_an_active_one_nor_the_auto_session(clock):
    """With session_idle_timeout, a session that starts no span for that long ends as indeterminate (idle_timeout); one that keeps starting spans and the auto session stay open."""
    captured = capture(session_idle_timeout=TIMEOUT, auto_start_session=True)
    auto = sdk.current_session()
    assert auto is not None
    idle = _start_aside("idle")
    active = _start_aside("active")
    clock.advance(0.75 * TIMEOUT)
    assert reaper().check_now() == 0  # not idle for long enough yet
    assert not idle.ended
    _span_in(active, "keep-alive")
    clock.advance(0.5 * TIMEOUT)
    reaper().check_now()  # (the reaper's thread, reading the same clock, may have ended it first)
    assert idle.ended
    # Keep the active one busy for several more timeouts: it stays open.
    for _ in range(6):
        clock.advance(0.5 * TIMEOUT)
        _span_in(active, "keep-alive")
        assert reaper().check_now() == 0
    assert idle.state is sdk.SessionState.INDETERMINATE
    assert idle.reason == "idle_timeout"
    assert active.state is sdk.SessionState.RUNNING
    assert auto.state is sdk.SessionState.RUNNING
    assert auto.idle > 4 * TIMEOUT
    assert [i.id for i in sdk.sessions()] == [auto.id, active.id]
    root = _root(captured, idle)
    assert root.attributes["session.state"] == "indeterminate"
    assert root.attributes["session.end_reason"] == "idle_timeout"
    active.end()
    assert _root(captured, active).attributes["session.state"] == "success"


def test_idle_timeout_counts_span_starts_not_open_spans(clock):
    """Idle means no span started: a session whose only span stays open longer than the timeout is ended as idle."""
    capture(session_idle_timeout=TIMEOUT)
    s = _start_aside("long-call")
    clock.advance(0.5 * TIMEOUT)
    span = trace.get_tracer("tests.registry").start_span(
        "llm-call", context=trace.set_span_in_context(s.span)
    )
    try:
        clock.advance(0.75 * TIMEOUT)
        assert reaper().check_now() == 0  # idle since the span started: not long enough yet
        clock.advance(0.5 * TIMEOUT)
        assert _wait_until(lambda: s.ended)  # by the reaper's thread
    finally:
        span.end()
    assert s.reason == "idle_timeout"


def test_start_session_ended_by_the_reaper_no_longer_claims_its_context(captured_idle, clock):
    """After the reaper ends a session made current by start_session(), later spans in that context are not put in it."""
    s = sdk.start_session("timed-out")
    clock.advance(2 * TIMEOUT)
    assert _wait_until(lambda: s.ended)
    assert sdk.current_session() is None
    with trace.get_tracer("tests.registry").start_as_current_span("later"):
        pass
    later = next(x for x in captured_idle.spans() if x.name == "later")
    assert later.attributes.get("session.id") != s.id
    assert later.parent is None


def test_idle_timeout_ends_a_with_block_session_and_the_block_exit_keeps_that_state(clock):
    """A `with sdk.session()` block left idle is ended by the timeout; leaving the block later does not end it again."""
    captured = capture(session_idle_timeout=TIMEOUT)
    with sdk.session("sleepy") as s:
        clock.advance(2 * TIMEOUT)
        assert _wait_until(lambda: s.ended)
        assert sdk.current_session() is None  # ended: no longer the current session
    assert s.state is sdk.SessionState.INDETERMINATE
    assert s.reason == "idle_timeout"
    roots = [x for x in captured.spans() if x.name == "sleepy"]
    assert len(roots) == 1
    assert roots[0].attributes["session.end_reason"] == "idle_timeout"


def test_idle_timeout_works_again_after_shutdown_and_init(clock):
    """The reaper stops at shutdown() and runs again after the next init(), however quickly they follow each other."""
    for _ in range(5):
        capture(session_idle_timeout=TIMEOUT)
        assert reaper().running
        sdk.shutdown()
    assert _wait_until(lambda: not reaper().running, timeout=2.0)
    capture(session_idle_timeout=TIMEOUT)
    s = _start_aside("after-restarts")
    clock.advance(2 * TIMEOUT)
    assert _wait_until(lambda: s.ended)
    assert s.reason == "idle_timeout"


def test_without_idle_timeout_sessions_never_time_out(captured, clock):
    """By default (no session_idle_timeout) no reaper runs and idle sessions stay open."""
    assert _wait_until(lambda: not reaper().running, timeout=2.0)  # a previous test's reaper stops
    s = _start_aside("patient")
    clock.advance(24 * 3600)
    assert s.idle == pytest.approx(24 * 3600)
    assert reaper().check_now() == 0
    assert not reaper().running
    assert s.state is sdk.SessionState.RUNNING
    s.end()


# -- max_open_sessions -------------------------------------------------------------------------------


def test_max_open_sessions_ends_the_least_recently_active_and_warns_once(caplog, clock):
    """Starting one more than max_open_sessions ends the least recently active explicit session (indeterminate, max_open_sessions), warns once, and the new one runs."""
    captured = capture(max_open_sessions=3, auto_start_session=True)
    auto = sdk.current_session()
    assert auto is not None
    s1 = _start_aside("s1")
    clock.advance(0.002)
    s2 = _start_aside("s2")
    clock.advance(0.002)
    s3 = _start_aside("s3")
    clock.advance(0.002)
    _span_in(s1)  # s1 is now the most recently active: s2, then s3, are the least
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        s4 = _start_aside("s4")
        assert s2.state is sdk.SessionState.INDETERMINATE
        assert s2.reason == "max_open_sessions"
        assert [s.state for s in (s1, s3, s4, auto)] == [sdk.SessionState.RUNNING] * 4
        s5 = _start_aside("s5")
        assert s3.reason == "max_open_sessions"
        assert [s.state for s in (s1, s4, s5, auto)] == [sdk.SessionState.RUNNING] * 4
    warnings = [r for r in caplog.records if "max_open_sessions" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert {i.id for i in sdk.sessions()} == {auto.id, s1.id, s4.id, s5.id}
    for evicted in (s2, s3):
        root = _root(captured, evicted)
        assert root.attributes["session.state"] == "indeterminate"
        assert root.attributes["session.end_reason"] == "max_open_sessions"
    _span_in(s5, "in-new")
    assert next(x for x in captured.spans() if x.name == "in-new").attributes["session.id"] == s5.id


# -- no leaks ----------------------------------------------------------------------------------------

ROUNDS = 300


def _plain(refs: list[weakref.ref[sdk.Session]]) -> None:
    with sdk.session("plain") as s:
        refs.append(weakref.ref(s))
        _span_in(s)


def _failing(refs: list[weakref.ref[sdk.Session]]) -> None:
    try:
        with sdk.session("failing") as s:
            refs.append(weakref.ref(s))
            raise ValueError("boom")
    except ValueError:
        pass


def _nested(refs: list[weakref.ref[sdk.Session]]) -> None:
    with sdk.session("outer") as outer:
        refs.append(weakref.ref(outer))
        with sdk.session("inner") as inner:
            refs.append(weakref.ref(inner))
            _span_in(inner)


def _explicit(refs: list[weakref.ref[sdk.Session]]) -> None:
    s = sdk.start_session("explicit")
    refs.append(weakref.ref(s))
    sdk.end_session(s)


def _decorated(refs: list[weakref.ref[sdk.Session]]) -> Iterator[Callable[[], None]]:
    @sdk.session
    def handle() -> None:
        current = sdk.current_session()
        assert current is not None
        refs.append(weakref.ref(current))

    @sdk.session("failing-decorated")
    def fail() -> None:
        current = sdk.current_session()
        assert current is not None
        refs.append(weakref.ref(current))
        raise KeyError("x")

    @sdk.session
    def produce() -> Iterator[int]:
        current = sdk.current_session()
        assert current is not None
        refs.append(weakref.ref(current))
        yield from range(3)

    def call_fail() -> None:
        with contextlib.suppress(KeyError):
            fail()

    def consume_part() -> None:
        for _ in produce():
            break  # partly consumed: the generator is closed, its session ends

    yield handle
    yield call_fail
    yield consume_part


def _across_threads(refs: list[weakref.ref[sdk.Session]], pool: ThreadPoolExecutor) -> None:
    with sdk.session("handing-off") as s:
        refs.append(weakref.ref(s))
        pool.submit(_span_in, s).result()
        list(pool.map(lambda _: sdk.current_session(), range(2)))
        wrapped = threading.Thread(target=sdk.context.wrap(lambda: sdk.current_session()))
        patched = threading.Thread(target=lambda: sdk.current_session())  # propagate_threads=True
        wrapped.start()
        patched.start()
        wrapped.join()
        patched.join()
    _THREADS.extend([wrapped, patched])  # finished Thread objects the application keeps


_THREADS: list[threading.Thread] = []


async def _async_sessions(refs: list[weakref.ref[sdk.Session]], n: int) -> None:
    @sdk.session
    async def handle(i: int) -> None:
        current = sdk.current_session()
        assert current is not None
        refs.append(weakref.ref(current))
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, lambda: sdk.current_session())
        await asyncio.to_thread(lambda: sdk.current_session())

    await asyncio.gather(*(handle(i) for i in range(n)))


def _evicted(refs: list[weakref.ref[sdk.Session]], n: int) -> None:
    sessions = [_start_aside(f"evictable-{i}") for i in range(n)]
    refs.extend(weakref.ref(s) for s in sessions)
    for s in sessions:
        s.end()


def test_ended_sessions_are_garbage_collected_and_the_registry_returns_to_baseline():
    """Thousands of ended sessions (plain, failed, nested, decorated, explicit, async, evicted, handed to threads and executors) are all freed and sdk.sessions() is back to its baseline."""
    sdk.init(
        exporter="none",
        console_summary=False,
        auto_start_session=True,
        propagate_threads=True,
        max_open_sessions=100,
    )
    baseline = len(sdk.sessions())
    assert baseline == 1  # the auto session
    refs: list[weakref.ref[sdk.Session]] = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(ROUNDS):
            _plain(refs)
            _failing(refs)
            _nested(refs)
            _explicit(refs)
            for call in _decorated(refs):
                call()
        for _ in range(ROUNDS // 3):
            _across_threads(refs, pool)
    asyncio.run(_async_sessions(refs, ROUNDS))
    _evicted(refs, 300)  # 200 of them ended by max_open_sessions
    assert len(refs) >= 2000
    assert len(_THREADS) == 2 * (ROUNDS // 3)
    assert sdk.flush()  # the session store's writer holds an ended session until it has written it
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert alive == []
    assert len(sdk.sessions()) == baseline
    assert sdk.stats().sessions_open == baseline
    _THREADS.clear()
