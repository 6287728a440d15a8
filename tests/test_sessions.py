"""Sessions are spans: shape, state, nesting, the current session and the auto session."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import warnings

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import sdk
from sdk.testing import capture


def _session_root(captured, session):
    return next(s for s in captured.spans() if s.context.span_id == session.span.get_span_context().span_id)


def test_session_is_root_span_of_its_own_trace(captured, tracer):
    """A session is the root span of a new trace and carries id, name, state, tags and user."""
    with sdk.session("refund-flow", user_id="u-42", tags=["prod", "eu"]) as s:
        with tracer.start_as_current_span("child"):
            pass
    root = _session_root(captured, s)
    assert root.parent is None
    assert root.name == "refund-flow"
    assert root.attributes["session.id"] == s.id
    assert root.attributes["session.name"] == "refund-flow"
    assert root.attributes["session.state"] == "success"
    assert tuple(root.attributes["session.tags"]) == ("prod", "eu")
    assert root.attributes["user.id"] == "u-42"
    assert f"{root.context.trace_id:032x}" == s.trace_id
    child = captured.named("child")
    assert child.parent.span_id == root.context.span_id
    assert child.context.trace_id == root.context.trace_id


def test_session_properties_and_state_transitions(captured):
    """Session exposes id, name, tags, user_id, trace_id and goes running -> success."""
    s = sdk.start_session("manual", user_id="u-1", tags="t")
    assert s.state is sdk.SessionState.RUNNING
    assert s.state == "running"
    assert s.tags == ("t",)
    assert s.user_id == "u-1"
    assert len(s.trace_id) == 32
    assert int(s.trace_id, 16) != 0
    s.end()
    assert s.state is sdk.SessionState.SUCCESS
    assert s.ended


def test_every_span_in_session_carries_session_id_and_trace(captured, tracer):
    """SDK spans, decorator spans and raw OpenTelemetry spans inside a session all carry its id and trace."""

    @sdk.tool
    def lookup() -> str:
        with tracer.start_as_current_span("raw-inside-tool"):
            return "ok"

    other = trace.get_tracer("another.instrumentation", "9.9")
    with sdk.session("s") as s:
        lookup()
        with other.start_as_current_span("other-lib"):
            sdk.event("evt", a=1)
        span = tracer.start_span("manual")
        span.end()
    spans = captured.spans()
    assert len(spans) == 5
    for span in spans:
        assert span.attributes["session.id"] == s.id, span.name
        assert f"{span.context.trace_id:032x}" == s.trace_id, span.name
    assert s.span_count == 5


def test_exception_ends_session_fail_records_and_reraises_unchanged(captured):
    """An exception escaping a session ends it as fail, is recorded on the span, and re-raises as is."""
    error = KeyError("missing")
    with pytest.raises(KeyError) as info, sdk.session("boom") as s:
        raise error
    assert info.value is error
    assert s.state is sdk.SessionState.FAIL
    root = _session_root(captured, s)
    assert root.attributes["session.state"] == "fail"
    assert root.status.status_code is StatusCode.ERROR
    assert [e.name for e in root.events] == ["exception"]
    assert root.events[0].attributes["exception.type"] == "KeyError"


def test_keyboard_interrupt_ends_session_indeterminate(captured):
    """KeyboardInterrupt inside a session ends it as indeterminate with reason 'interrupted'."""
    with pytest.raises(KeyboardInterrupt), sdk.session("interrupted") as s:
        raise KeyboardInterrupt
    assert s.state is sdk.SessionState.INDETERMINATE
    assert s.reason == "interrupted"
    assert _session_root(captured, s).attributes["session.end_reason"] == "interrupted"


def test_end_twice_is_noop(captured):
    """Ending an ended session (by method, function or id) does nothing and warns nothing."""
    s = sdk.start_session("twice")
    s.end("fail", reason="first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.end()
        sdk.end_session(s)
        sdk.end_session(s.id)
    assert s.state is sdk.SessionState.FAIL
    assert s.reason == "first"
    assert len([x for x in captured.spans() if x.name == "twice"]) == 1


def test_end_session_without_session_warns_once_never_raises(captured):
    """end_session() with no session gives one clear SessionWarning and no exception."""
    with pytest.warns(sdk.SessionWarning, match="no current session") as record:
        sdk.end_session()
    assert len(record) == 1


def test_end_session_unknown_id_warns(captured):
    """end_session('unknown-id') names the id in a SessionWarning."""
    with pytest.warns(sdk.SessionWarning, match="'nope'"):
        sdk.end_session("nope")


def test_end_with_bad_state_raises_clear_error(captured):
    """Ending with an unknown state is the caller's mistake: ValueError naming the valid states."""
    s = sdk.start_session("x")
    with pytest.raises(ValueError, match="success, fail, indeterminate"):
        s.end("done")
    with pytest.raises(ValueError, match="running"):
        sdk.end_session(s, state="running")
    assert s.state is sdk.SessionState.RUNNING
    s.end()


def test_bad_session_arguments_raise(captured):
    """Bad session arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="session_id"):
        sdk.start_session(session_id="")
    with pytest.raises(ValueError, match="tags"):
        sdk.start_session(tags=[""])
    with pytest.raises(ValueError, match="user_id"):
        sdk.start_session(user_id=42)  # type: ignore[arg-type]


def test_duplicate_open_session_id_is_rejected(captured):
    """Two open sessions with the same id in one process are refused with a clear error."""
    with sdk.session(session_id="chat-1"):
        with pytest.raises(ValueError, match="'chat-1' is already open"):
            sdk.start_session(session_id="chat-1")
    with sdk.session(session_id="chat-1") as again:
        assert again.id == "chat-1"


def test_start_session_is_current_until_ended(captured, tracer):
    """start_session() makes the session current in this context; ending it restores the previous one."""
    assert sdk.current_session() is None
    s = sdk.start_session("explicit")
    assert sdk.current_session() is s
    with tracer.start_as_current_span("inside"):
        pass
    sdk.end_session()
    assert sdk.current_session() is None
    with tracer.start_as_current_span("after"):
        pass
    assert captured.named("inside").attributes["session.id"] == s.id
    assert "session.id" not in captured.named("after").attributes
    assert captured.named("after").context.trace_id != int(s.trace_id, 16)


def test_session_ended_in_a_copy_of_its_context_is_not_current_there(captured, tracer):
    """A session start_session() made current, ended in a copy of that context (a later notebook cell on Python 3.10 with ipykernel 7.1+), is no longer current there: nor is its span."""
    started_in = contextvars.copy_context()
    s = started_in.run(sdk.start_session, "kept")

    def later_cell() -> None:
        sdk.end_session(s)
        assert sdk.current_session() is None
        with tracer.start_as_current_span("after"):
            pass

    started_in.copy().run(later_cell)
    assert "session.id" not in captured.named("after").attributes
    assert captured.named("after").context.trace_id != int(s.trace_id, 16)
    assert captured.named("after").parent is None


async def test_a_session_generator_closed_by_another_task_leaves_that_tasks_context_alone(captured, tracer):
    """An async generator that made a session current (``session.use()``), closed by another task, leaves that task's current span and session alone."""

    session = sdk.session("generator").start()  # not made current here

    async def numbers():
        with session.use():
            yield 1
            yield 2

    async def consume():
        with tracer.start_as_current_span("consumer"):
            agen = numbers()
            await agen.__anext__()
            return agen

    agen = await asyncio.create_task(consume())

    async def close_it() -> None:
        with tracer.start_as_current_span("closer") as closer:
            await agen.aclose()
            assert trace.get_current_span() is closer
            assert sdk.current_session() is None
            with tracer.start_as_current_span("after"):
                pass

    await asyncio.create_task(close_it())
    session.end()
    after, closer = captured.named("after"), captured.named("closer")
    assert after.parent is not None
    assert after.parent.span_id == closer.context.span_id
    assert "session.id" not in after.attributes


def test_nested_session_is_own_trace_linked_to_outer(captured, tracer):
    """A session inside another is its own trace, linked to the outer session, and restores it on exit."""
    with sdk.session("outer") as outer:
        with sdk.session("inner") as inner:
            assert sdk.current_session() is inner
            with tracer.start_as_current_span("in-inner"):
                pass
        assert sdk.current_session() is outer
        with tracer.start_as_current_span("in-outer"):
            pass
    inner_root = _session_root(captured, inner)
    outer_root = _session_root(captured, outer)
    assert inner_root.parent is None
    assert inner_root.context.trace_id != outer_root.context.trace_id
    assert inner_root.attributes["session.parent_id"] == outer.id
    assert [link.context.span_id for link in inner_root.links] == [outer_root.context.span_id]
    assert captured.named("in-inner").attributes["session.id"] == inner.id
    assert captured.named("in-inner").context.trace_id == inner_root.context.trace_id
    assert captured.named("in-outer").attributes["session.id"] == outer.id


async def test_async_with_session(captured, tracer):
    """`async with sdk.session()` works and spans after an await stay in it."""
    async with sdk.session("async") as s:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("after-await"):
            pass
    assert captured.named("after-await").attributes["session.id"] == s.id
    assert s.state is sdk.SessionState.SUCCESS


def test_session_as_decorator_sync(captured, tracer):
    """@sdk.session runs each call in a new session named after the function."""

    @sdk.session
    def handle(n: int) -> int:
        with tracer.start_as_current_span("work"):
            return n * 2

    assert handle(2) == 4
    assert handle(3) == 6
    roots = [s for s in captured.spans() if s.name == "handle"]
    assert len(roots) == 2
    assert roots[0].attributes["session.id"] != roots[1].attributes["session.id"]
    works = [s for s in captured.spans() if s.name == "work"]
    assert {w.attributes["session.id"] for w in works} == {r.attributes["session.id"] for r in roots}


async def test_session_as_decorator_async_with_args(captured):
    """@sdk.session("name", tags=...) on a coroutine function, failing calls end fail."""

    @sdk.session("job", tags=["batch"])
    async def job(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("bad")
        return "done"

    assert await job(False) == "done"
    with pytest.raises(RuntimeError, match="bad"):
        await job(True)
    states = sorted(s.attributes["session.state"] for s in captured.spans() if s.name == "job")
    assert states == ["fail", "success"]


def test_auto_session_catches_work_outside_sessions_and_new_threads(tracer):
    """With auto_start_session, spans outside explicit sessions, in new threads too, join the auto session."""
    captured = capture(auto_start_session=True)
    auto = sdk.current_session()
    assert auto is not None
    assert auto.auto

    def in_thread():
        with tracer.start_as_current_span("thread-span"):
            pass

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    with tracer.start_as_current_span("main-span"):
        pass
    with sdk.session("explicit") as s:
        with tracer.start_as_current_span("explicit-span"):
            pass
    for name in ("thread-span", "main-span"):
        span = captured.named(name)
        assert span.attributes["session.id"] == auto.id
        assert f"{span.context.trace_id:032x}" == auto.trace_id
        assert span.parent.span_id == auto.span.get_span_context().span_id
    assert captured.named("explicit-span").attributes["session.id"] == s.id
    assert sdk.current_session() is auto


def test_sessions_in_threads_and_tasks_never_see_each_other(captured, tracer):
    """Sessions started in different threads and asyncio tasks stay apart, checked on every span."""
    barrier = threading.Barrier(4)
    seen: dict[str, list[str]] = {}

    def worker(i: int) -> None:
        with sdk.session(f"thread-{i}") as s:
            barrier.wait()
            for _ in range(20):
                with tracer.start_as_current_span(f"t{i}"):
                    assert sdk.current_session() is s
            seen[s.id] = [f"t{i}"]

    async def task(i: int) -> None:
        async with sdk.session(f"task-{i}") as s:
            for _ in range(20):
                await asyncio.sleep(0)
                with tracer.start_as_current_span(f"a{i}"):
                    assert sdk.current_session() is s
            seen[s.id] = [f"a{i}"]

    async def tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(4)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    by_name = {}
    for span in captured.spans():
        if span.name.startswith(("t", "a")) and span.name[1:].isdigit():
            by_name.setdefault(span.name, set()).add(span.attributes["session.id"])
    assert len(by_name) == 8
    for sid, (name,) in seen.items():
        assert by_name[name] == {sid}
    assert sum(1 for s in captured.spans() if s.name[1:].isdigit()) == 160


def test_current_session_none_without_init():
    """Before init(), sessions still work as objects and nothing is current outside them."""
    assert sdk.current_session() is None
    with sdk.session("no-init") as s:
        assert sdk.current_session() is s
    assert s.state is sdk.SessionState.SUCCESS


def test_set_tag_and_attribute(captured):
    """set_tag adds a tag once; set_attribute accepts any value."""
    with sdk.session("tags", tags=["a"]) as s:
        s.set_tag("b")
        s.set_tag("a")
        s.set_attribute("custom", {"not": "a primitive"})
    root = _session_root(captured, s)
    assert tuple(root.attributes["session.tags"]) == ("a", "b")
    assert root.attributes["custom"] == "{'not': 'a primitive'}"
    assert s.tags == ("a", "b")


def test_event_on_current_span_and_session(captured, tracer):
    """sdk.event lands on the current span, or on the session's span outside any span."""
    with sdk.session("events") as s:
        sdk.event("on-session", n=1)
        with tracer.start_as_current_span("span"):
            sdk.event("on-span", obj=object(), items=[1, 2])
    root = _session_root(captured, s)
    assert [e.name for e in root.events] == ["on-session"]
    event = captured.named("span").events[0]
    assert event.name == "on-span"
    assert event.attributes["obj"].startswith("<object object")
    assert tuple(event.attributes["items"]) == (1, 2)


def test_per_session_overrides_validated(captured):
    """Per-session overrides apply to that session only; others raise ConfigError naming the key."""
    with sdk.session("quiet", overrides={"console_summary": False}) as s:
        pass
    assert s.config is not None
    assert s.config.console_summary is False
    assert s.config.sources["console_summary"].layer == "session"
    with pytest.raises(sdk.ConfigError, match="endpoint"):
        sdk.start_session("bad", overrides={"endpoint": "http://x"})
    with pytest.raises(sdk.ConfigError, match="unknown setting"):
        sdk.start_session("bad", overrides={"nope": 1})


def test_console_summary_line_on_session_end(capsys):
    """With the summary on, an ended session prints one line: name, id, state, duration, span count."""
    sdk.init(exporter="none", console_summary=True)
    with sdk.session("summarised") as s:
        pass
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sessiontrace: session 'summarised' {s.id} success in {s.duration:.2f}s, 1 span"]


def test_span_from_forwarded_traceparent_lands_in_session(tracer):
    """A span whose parent arrived as a bare traceparent, in a thread with no session, joins that session."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    captured = capture(auto_start_session=True)
    carrier: dict[str, str] = {}

    def consumer() -> None:
        ctx = TraceContextTextMapPropagator().extract(carrier)
        with tracer.start_as_current_span("handler", context=ctx):
            pass

    with sdk.session("queued-work") as s:
        TraceContextTextMapPropagator().inject(carrier)
        assert set(carrier) == {"traceparent"}
        t = threading.Thread(target=consumer)
        t.start()
        t.join()
    handler = captured.named("handler")
    assert handler.attributes["session.id"] == s.id
    assert f"{handler.context.trace_id:032x}" == s.trace_id
    assert handler.attributes["session.id"] != sdk.current_session().id


def test_auto_session_step_adopts_orphan_spans(tracer):
    """While a step of the auto session is open, orphan spans (any thread) become its children."""
    captured = capture(auto_start_session=True)
    auto = sdk.current_session()
    step = auto.begin_step("cell[1]", {"cell.execution_count": 1})

    def orphan() -> None:
        with tracer.start_as_current_span("in-thread"):
            pass

    t = threading.Thread(target=orphan)
    t.start()
    t.join()
    with tracer.start_as_current_span("in-main"):
        pass
    auto.end_step(ValueError("cell failed"))
    with tracer.start_as_current_span("after-step"):
        pass
    cell = captured.named("cell[1]")
    assert cell.context.span_id == step.get_span_context().span_id
    assert cell.parent.span_id == auto.span.get_span_context().span_id
    assert cell.attributes["session.id"] == auto.id
    assert cell.attributes["error.type"] == "ValueError"
    for name in ("in-thread", "in-main"):
        assert captured.named(name).parent.span_id == cell.context.span_id
        assert captured.named(name).attributes["session.id"] == auto.id
    assert captured.named("after-step").parent.span_id == auto.span.get_span_context().span_id
    assert auto.step is None
