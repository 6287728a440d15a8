"""@agent, @tool, @task, @workflow: one span per call, for every kind of function, errors re-raised unchanged."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from opentelemetry.trace import StatusCode

import sdk


def test_each_kind_is_a_span_under_the_session_with_genai_names(captured):
    """Every decorator kind makes one span per call, in the session, named by the GenAI conventions."""

    @sdk.agent
    def planner() -> str:
        return helper()

    @sdk.tool(name="search_kb")
    def search() -> str:
        return "hit"

    @sdk.task
    def helper() -> str:
        return search()

    @sdk.workflow("pipeline")
    def run() -> str:
        return planner()

    with sdk.session("s") as s:
        assert run() == "hit"
    agent = captured.named("invoke_agent planner")
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "planner"
    assert agent.attributes["sessiontrace.span.kind"] == "agent"
    tool = captured.named("execute_tool search_kb")
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "search_kb"
    task = captured.named("helper")
    assert task.attributes["sessiontrace.span.kind"] == "task"
    assert task.attributes["code.function.name"].endswith(
        "test_each_kind_is_a_span_under_the_session_with_genai_names.<locals>.helper"
    )
    workflow = captured.named("pipeline")
    assert workflow.attributes["sessiontrace.span.kind"] == "workflow"
    assert tool.parent.span_id == task.context.span_id
    assert task.parent.span_id == agent.context.span_id
    assert agent.parent.span_id == workflow.context.span_id
    for span in (agent, tool, task, workflow):
        assert span.attributes["session.id"] == s.id


def test_decorator_preserves_metadata_and_static_attributes(captured):
    """functools metadata is kept, and attributes= are put on each span."""

    @sdk.tool(attributes={"team": "search", "weights": [1.0, 2.0]})
    def documented(x: int) -> int:
        """Docstring."""
        return x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docstring."
    documented(1)
    span = captured.named("execute_tool documented")
    assert span.attributes["team"] == "search"
    assert tuple(span.attributes["weights"]) == (1.0, 2.0)


def test_exception_recorded_and_reraised_unchanged(captured):
    """An exception is recorded on the span with error.type and re-raised as the same object."""
    error = ValueError("bad input")

    @sdk.tool
    def fails() -> None:
        raise error

    with pytest.raises(ValueError, match="bad input") as info:
        fails()
    assert info.value is error
    assert info.value.__traceback__ is not None
    span = captured.named("execute_tool fails")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    assert span.events[0].name == "exception"
    assert span.events[0].attributes["exception.message"] == "bad input"


async def test_async_function(captured):
    """An async function's span covers its awaits and spans inside it are its children."""

    @sdk.task
    async def inner() -> int:
        await asyncio.sleep(0)
        return 1

    @sdk.agent
    async def outer() -> int:
        await asyncio.sleep(0)
        return await inner() + 1

    with sdk.session("async"):
        assert await outer() == 2
    assert captured.named("inner").parent.span_id == captured.named("invoke_agent outer").context.span_id


async def test_async_exception_reraised(captured):
    """An async function's exception is recorded and re-raised unchanged."""

    @sdk.tool
    async def boom() -> None:
        await asyncio.sleep(0)
        raise LookupError("x")

    with pytest.raises(LookupError, match="x"):
        await boom()
    assert captured.named("execute_tool boom").status.status_code is StatusCode.ERROR


def test_methods_static_and_class_methods(captured):
    """Decorators work on instance methods, staticmethods and classmethods (either decorator order)."""

    class Agent:
        factor = 3

        @sdk.agent
        def act(self, x: int) -> int:
            return x * self.factor

        @sdk.tool
        @staticmethod
        def static_tool(x: int) -> int:
            return x + 1

        @sdk.task
        @classmethod
        def make(cls) -> Agent:
            return cls()

        @staticmethod
        @sdk.tool
        def other_static() -> str:
            return "ok"

    agent = Agent.make()
    assert agent.act(2) == 6
    assert Agent.static_tool(1) == 2
    assert agent.static_tool(1) == 2
    assert Agent.other_static() == "ok"
    names = sorted(s.name for s in captured.spans())
    assert names == sorted(
        [
            "invoke_agent act",
            "execute_tool static_tool",
            "execute_tool static_tool",
            "make",
            "execute_tool other_static",
        ]
    )


def test_generator_span_covers_iteration_and_yields_values(captured, tracer):
    """A generator's span covers its whole iteration; spans it makes are its children; send() works."""

    @sdk.tool
    def numbers(n: int):
        total = 0
        for i in range(n):
            with tracer.start_as_current_span(f"make-{i}"):
                got = yield i
            total += got or 0
        return total

    with sdk.session("gen"):
        gen = numbers(3)
        assert next(gen) == 0
        assert gen.send(10) == 1
        assert gen.send(20) == 2
        with pytest.raises(StopIteration) as stop:
            gen.send(30)
    assert stop.value.value == 60
    span = captured.named("execute_tool numbers")
    for i in range(3):
        assert captured.named(f"make-{i}").parent.span_id == span.context.span_id


def test_generator_consumed_in_part_ends_span_and_does_not_leak_context(captured, tracer, caplog):
    """Breaking out of a decorated generator ends its span; later consumer spans are not its children."""

    @sdk.task
    def stream():
        yield from range(10)

    caplog.set_level(logging.DEBUG)
    with sdk.session("partial") as s:
        for item in stream():
            with tracer.start_as_current_span(f"consume-{item}"):
                pass
            if item == 1:
                break
        gc.collect()
        with tracer.start_as_current_span("after"):
            pass
    gen_span = captured.named("stream")
    assert gen_span.end_time is not None
    session_root_id = s.span.get_span_context().span_id
    for name in ("consume-0", "consume-1", "after"):
        assert captured.named(name).parent.span_id == session_root_id
    assert "Failed to detach context" not in caplog.text


def test_abandoned_generator_ends_span_on_garbage_collection(captured, caplog):
    """A decorated generator dropped half-way ends its span when collected, without detach errors."""

    @sdk.task
    def stream():
        yield 1
        yield 2

    caplog.set_level(logging.DEBUG)
    gen = stream()
    assert next(gen) == 1
    del gen
    gc.collect()
    assert captured.named("stream").end_time is not None
    assert "Failed to detach context" not in caplog.text


def test_generator_exception_inside_is_recorded(captured):
    """An exception raised inside a decorated generator is recorded and propagates unchanged."""

    @sdk.task
    def broken():
        yield 1
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        list(broken())
    assert captured.named("broken").status.status_code is StatusCode.ERROR


def test_generator_throw_is_forwarded(captured):
    """throw() into a decorated generator reaches the inner generator, which may handle it."""

    @sdk.task
    def handles():
        try:
            yield 1
        except KeyError:
            yield "handled"

    gen = handles()
    assert next(gen) == 1
    assert gen.throw(KeyError("k")) == "handled"
    gen.close()
    assert captured.named("handles").end_time is not None


async def test_async_generator_full_and_partial(captured, tracer, caplog):
    """Async generators: full iteration, break, and aclose() from another task all end the span cleanly."""

    @sdk.tool
    async def agen(n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    caplog.set_level(logging.DEBUG)
    with sdk.session("agen") as s:
        assert [i async for i in agen(3)] == [0, 1, 2]
        partial = agen(5)
        async for i in partial:
            if i == 1:
                break
        await partial.aclose()
        other = agen(5)
        assert await other.__anext__() == 0
        await asyncio.create_task(other.aclose())
        with tracer.start_as_current_span("after"):
            pass
    spans = [x for x in captured.spans() if x.name == "execute_tool agen"]
    assert len(spans) == 3
    assert all(x.end_time is not None for x in spans)
    assert captured.named("after").parent.span_id == s.span.get_span_context().span_id
    assert "Failed to detach context" not in caplog.text


async def test_async_generator_asend_and_athrow(captured):
    """asend/athrow pass through a decorated async generator."""

    @sdk.task
    async def echo():
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "caught"

    gen = echo()
    assert await gen.asend(None) is None
    assert await gen.asend("a") == "a"
    assert await gen.athrow(ValueError()) == "caught"
    await gen.aclose()
    assert captured.named("echo").end_time is not None


def test_decorated_call_without_init_just_runs():
    """Before init() a decorated function runs normally and records nothing."""

    @sdk.tool
    def plain(x: int) -> int:
        return x + 1

    assert plain(1) == 2


def test_decorating_a_non_callable_is_a_clear_error():
    """Decorating something that is not a function raises TypeError naming the type."""
    with pytest.raises(TypeError, match="not int"):
        sdk.tool(42)
