"""`@agent`, `@tool`, `@task`, `@workflow`, the `@session` decorator form, and `event()`.

Every wrapped call is one span (or one session) around the call: for a generator or async
generator, around its iteration. Context is attached only while the wrapped code runs, one
step at a time, so a generator that is consumed in part never leaves its span current in the
consumer, and closing it from another task or the garbage collector detaches nothing twice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from sdk import runtime
from sdk.attributes import to_attributes, write_attributes
from sdk.guard import internal_error, warn_once
from sdk.redaction import redactor_for
from sdk.semconv import SPAN_KIND
from sdk.session_core import Activation, Session, current_session, detach_quietly, end_span

if TYPE_CHECKING:
    from sdk.session_api import SessionScope

F = TypeVar("F", bound=Callable[..., Any])


class _Scope(Protocol):
    """One call's span or session: made current step by step, finished once."""

    capture: bool
    """Whether `returned()` wants the call's return value."""

    def enter(self) -> object: ...
    def exit(self, token: object) -> None: ...
    def returned(self, value: Any) -> None: ...
    def finish(self, exc: BaseException | None) -> None: ...


class _SpanScope:
    __slots__ = ("capture", "ctx", "done", "output_key", "span")

    def __init__(self, span: Span, output_key: str | None = None) -> None:
        self.span = span
        self.ctx = trace.set_span_in_context(span)
        self.done = False
        self.capture = output_key is not None
        self.output_key = output_key

    def returned(self, value: Any) -> None:
        if self.output_key is None:
            return
        try:
            redactor = redactor_for(runtime.current().config)
            self.span.set_attribute(self.output_key, redactor.json(value))
        except Exception as exc:
            internal_error("decorator return capture", exc)

    def enter(self) -> object:
        return otel_context.attach(self.ctx)

    def exit(self, token: object) -> None:
        detach_quietly(token)

    def finish(self, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        end_span(self.span, exc if isinstance(exc, (Exception, KeyboardInterrupt)) else None)


class _SessionRun:
    __slots__ = ("done", "session")
    capture = False

    def __init__(self, session: Session) -> None:
        self.session = session
        self.done = False

    def returned(self, value: Any) -> None:
        pass

    def enter(self) -> object:
        return Activation(self.session)

    def exit(self, token: object) -> None:
        assert isinstance(token, Activation)
        token.undo()

    def finish(self, exc: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self.session.end_for(exc)


Begin = Callable[[tuple[Any, ...], dict[str, Any]], "_Scope | None"]
"""Starts one call's scope, given the call's arguments (None: run the call unrecorded)."""


def wrap_call(fn: Callable[..., Any], begin: Begin) -> Callable[..., Any]:
    """Wrap `fn` (sync, async, generator or async generator) so each call runs in `begin()`'s scope."""
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(fn, begin)
    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(fn, begin)
    if inspect.iscoroutinefunction(fn):
        return _wrap_coroutine(fn, begin)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        scope = begin(args, kwargs)
        if scope is None:
            return fn(*args, **kwargs)
        token = scope.enter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            scope.exit(token)
            scope.finish(exc)
            raise
        scope.exit(token)
        if scope.capture:
            scope.returned(result)
        scope.finish(None)
        return result

    return call


def _wrap_coroutine(fn: Callable[..., Any], begin: Begin) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        scope = begin(args, kwargs)
        if scope is None:
            return await fn(*args, **kwargs)
        token = scope.enter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            scope.exit(token)
            scope.finish(exc)
            raise
        scope.exit(token)
        if scope.capture:
            scope.returned(result)
        scope.finish(None)
        return result

    return call


def _wrap_generator(fn: Callable[..., Any], begin: Begin) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        scope = begin(args, kwargs)
        if scope is None:
            return (yield from fn(*args, **kwargs))
        token = scope.enter()
        try:
            inner = fn(*args, **kwargs)
        finally:
            scope.exit(token)
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = scope.enter()
                try:
                    item = inner.send(sent) if thrown is None else inner.throw(thrown)
                except StopIteration as stop:
                    scope.exit(token)
                    scope.finish(None)
                    return stop.value
                except BaseException as exc:
                    scope.exit(token)
                    scope.finish(exc)
                    raise
                scope.exit(token)
                sent, thrown = None, None
                try:
                    sent = yield item
                except GeneratorExit:
                    token = scope.enter()
                    try:
                        inner.close()
                    finally:
                        scope.exit(token)
                    raise
                except BaseException as exc:
                    thrown = exc
        finally:
            scope.finish(None)

    return call


def _wrap_async_generator(fn: Callable[..., Any], begin: Begin) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        scope = begin(args, kwargs)
        if scope is None:
            async for item in fn(*args, **kwargs):
                yield item
            return
        token = scope.enter()
        try:
            inner = fn(*args, **kwargs)
        finally:
            scope.exit(token)
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = scope.enter()
                try:
                    item = await (inner.asend(sent) if thrown is None else inner.athrow(thrown))
                except StopAsyncIteration:
                    scope.exit(token)
                    scope.finish(None)
                    return
                except BaseException as exc:
                    scope.exit(token)
                    scope.finish(exc)
                    raise
                scope.exit(token)
                sent, thrown = None, None
                try:
                    sent = yield item
                except GeneratorExit:
                    token = scope.enter()
                    try:
                        await inner.aclose()
                    finally:
                        scope.exit(token)
                    raise
                except BaseException as exc:
                    thrown = exc
        finally:
            scope.finish(None)

    return call


def _rewrap_descriptor(fn: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    if isinstance(fn, staticmethod):
        return staticmethod(wrap(fn.__func__))
    if isinstance(fn, classmethod):
        return classmethod(wrap(fn.__func__))
    if not callable(fn):
        raise TypeError(f"sessiontrace decorators wrap functions and methods, not {type(fn).__name__}")
    return wrap(fn)


_KIND_OPERATION = {
    "agent": ("invoke_agent", "gen_ai.agent.name"),
    "tool": ("execute_tool", "gen_ai.tool.name"),
}


_CAPTURE_KEYS = {
    "tool": ("gen_ai.tool.call.arguments", "gen_ai.tool.call.result"),
}
"""Where captured arguments and return values go: the GenAI keys for tools, else these defaults."""
_DEFAULT_CAPTURE_KEYS = ("sessiontrace.input", "sessiontrace.output")


def _content_capture_on(rt: runtime.Runtime) -> bool:
    """The `capture_content` setting for the current session (it may be set per session)."""
    session = current_session()
    config = session.config if session is not None and session.config is not None else rt.config
    return bool(config is not None and config.capture_content)


def _arguments(
    fn: Callable[..., Any],
    signature: list[inspect.Signature | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The call's arguments by parameter name (``self`` and ``cls`` left out)."""
    if not signature:
        try:
            signature.append(inspect.signature(fn))
        except (TypeError, ValueError):
            signature.append(None)
    sig = signature[0]
    if sig is None:
        return {"args": list(args), "kwargs": kwargs}
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError:
        return {"args": list(args), "kwargs": kwargs}
    return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}


def _span_begin(
    kind: str,
    name: str,
    attributes: Mapping[str, Any] | None,
    fn: Callable[..., Any],
    capture: bool | None = None,
    returns: bool = True,
) -> Begin:
    operation = _KIND_OPERATION.get(kind)
    qualname = f"{fn.__module__}.{fn.__qualname__}"
    static: dict[str, Any] = {SPAN_KIND: kind, "code.function.name": qualname}
    span_name = name
    if operation is not None:
        static["gen_ai.operation.name"] = operation[0]
        static[operation[1]] = name
        span_name = f"{operation[0]} {name}"
    input_key, output_key = _CAPTURE_KEYS.get(kind, _DEFAULT_CAPTURE_KEYS)
    state: dict[str, Any] = {}
    signature: list[inspect.Signature | None] = []

    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Scope | None:
        rt = runtime.current()
        if not rt.enabled:
            return None
        try:
            attrs = state.get("attrs")
            if attrs is None or state.get("max") != rt.attribute_max_length:
                converted = to_attributes({**(attributes or {}), **static}, rt.attribute_max_length)
                attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in converted.items()}
                state["attrs"], state["max"] = attrs, rt.attribute_max_length
            if kind == "tool":
                session = current_session()
                if session is not None:
                    session.note_tool_call(name, (args, kwargs))
            span = rt.tracer.start_span(span_name)
            write_attributes(span, attrs)
            if capture is False or (capture is None and not _content_capture_on(rt)):
                return _SpanScope(span)
        except Exception as exc:
            internal_error(f"@{kind} span start", exc)
            return None
        try:
            redactor = redactor_for(rt.config)
            span.set_attribute(input_key, redactor.json(_arguments(fn, signature, args, kwargs)))
        except Exception as exc:
            internal_error(f"@{kind} argument capture", exc)
        return _SpanScope(span, output_key if returns else None)

    return begin


class SpanDecorator:
    """Record each call of the decorated function as a span of one kind under the current session.

    Use as ``@tool``, ``@tool()``, ``@tool("name")`` or ``@tool(name=..., attributes={...})`` on
    sync, async, generator and async-generator functions and methods (staticmethod and
    classmethod too, in either order). An exception is recorded on the span and re-raised
    unchanged. `agent` and `tool` spans follow the OpenTelemetry GenAI conventions
    (``invoke_agent {name}``, ``execute_tool {name}``).

    ``capture=True`` records each call's arguments and return value (as JSON, after redaction:
    see docs/instrumentation.md) in ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result``
    for tools and ``sessiontrace.input`` / ``sessiontrace.output`` for the other kinds; a generator's
    items are not recorded. ``capture=False`` never records them; the default follows the
    `capture_content` setting (off unless turned on).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.__name__ = kind
        self.__qualname__ = kind

    @overload
    def __call__(self, fn: F, /) -> F: ...

    @overload
    def __call__(
        self,
        span_name: str | None = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        capture: bool | None = None,
    ) -> Callable[[F], F]: ...

    def __call__(
        self,
        name_or_fn: Any = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        capture: bool | None = None,
    ) -> Any:
        kind = self.kind

        def apply(fn: Any) -> Any:
            def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
                span_name = name or (name_or_fn if isinstance(name_or_fn, str) else None) or func.__name__
                returns = not (inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func))
                return wrap_call(func, _span_begin(kind, span_name, attributes, func, capture, returns))

            return _rewrap_descriptor(fn, wrap)

        if name_or_fn is not None and not isinstance(name_or_fn, str):
            return apply(name_or_fn)
        return apply

    def __repr__(self) -> str:
        return f"sdk.{self.kind}"


agent = SpanDecorator("agent")
tool = SpanDecorator("tool")
task = SpanDecorator("task")
workflow = SpanDecorator("workflow")


def wrap_in_session(fn: F, scope: SessionScope) -> F:
    """Each call of `fn` runs in a new session with `scope`'s parameters (named after `fn` by default)."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        default_name = func.__name__

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Scope:
            return _SessionRun(scope.start(default_name))

        return wrap_call(func, begin)

    wrapped: F = _rewrap_descriptor(fn, wrap)
    return wrapped


def event(name: str, **attributes: Any) -> None:
    """Add an event to the current span (or, outside any span, to the current session's span)."""
    rt = runtime.current()
    if not rt.enabled:
        return
    try:
        span = trace.get_current_span()
        if not span.is_recording():
            session = current_session()
            if session is None:
                warn_once(
                    "event-nowhere",
                    "sessiontrace: sdk.event(%r) outside any span or session was not recorded",
                    name,
                )
                return
            span = session.span
        span.add_event(str(name), attributes=to_attributes(attributes, rt.attribute_max_length))
    except Exception as exc:
        internal_error("sdk.event", exc)
