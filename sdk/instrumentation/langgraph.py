"""LangGraph (the ``langgraph`` extra): graph runs, nodes and tools as spans, a thread as a session.

Applied when ``langgraph`` (and ``langchain_core``) are imported; langgraph `SUPPORTED`.

- **Graph runs.** ``Pregel.stream`` and ``astream`` — which ``invoke``, ``ainvoke``, ``batch`` and
  the event streams go through — are one ``invoke_workflow {graph name}`` span each, current
  while the graph works and only then: one step at a time, so a consumer's code between two
  chunks, or after a ``break``, is not inside it (the decorators' generator machinery).
- **Thread sessions** (``session_from=["langgraph.thread_id"]``, off by default). A graph invoked
  outside any session with ``config={"configurable": {"thread_id": X}}`` runs in session X (see
  `sdk.instrumentation.frameworks`): started or resumed, open from one invocation to the next,
  so a thread's checkpoints and its session continue together, in this process or the next. Many
  threads on one compiled graph, in threads or asyncio tasks, stay apart: each run carries its own.
- **Nodes.** Each node attempt (``langgraph.pregel._runner.run_with_retry`` /
  ``arun_with_retry``) is a current span ``node {name}`` (``langgraph.node``, ``langgraph.step``),
  so everything the node does — model calls, tools, the user's spans — nests under it.
  LangGraph's own nodes (``__start__``) have none; an interrupt (``GraphBubbleUp``) is control
  flow, not an error.
- **Tools and model calls**, through a LangChain callback handler of ours, added to every
  callback manager (``langchain_core.tracers.context.register_configure_hook``): a tool run is
  ``execute_tool {name}`` (arguments and result only with `capture_content`, redacted); a chat
  model run is a model-call scope, so the openai or anthropic client span inside it is the one
  model-call span, and a model no client instrumentation saw (another provider's chat model) is
  recorded from LangChain's result (model, usage, response id).

LangGraph never sends anything anywhere by itself; LangSmith tracing stays off unless the program
sets ``LANGSMITH_TRACING``. This module imports nothing of LangGraph or LangChain until they are
imported; the handler, whose hook LangChain cannot remove, goes inert when uninstrumented.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

from sdk import runtime
from sdk.attributes import write_attributes
from sdk.guard import internal_error
from sdk.instrumentation import frameworks
from sdk.instrumentation.base import Instrumentor, Patch, when_imported
from sdk.semconv import SPAN_KIND
from sdk.session_core import (
    Activation,
    Session,
    current_session,
    detach_quietly,
    end_span,
    session_for_trace,
)
from sdk.state import STATE

PACKAGE = "langgraph"
SUPPORTED = ">=1.0,<2"
"""The langgraph versions the patches are written for (tested: 1.2.24 with langchain-core 1.8.3)."""
THREAD_ID = "langgraph.thread_id"
SESSION_NAME = "langgraph"
"""The name of a session started for a thread (its id is the thread id)."""


# ---------------------------------------------------------------------------------------------
# Graph runs


class _GraphRun:
    """One graph run: its span, and the thread's session, made current one step at a time."""

    __slots__ = ("ctx", "done", "session", "span")
    capture = False

    def __init__(self, span: Span, target: Session | None) -> None:
        self.span = span
        self.session = target
        self.ctx = trace.set_span_in_context(span)
        self.done = False

    def enter(self) -> object:
        activation = Activation(self.session) if self.session is not None and not self.session.ended else None
        return activation, otel_context.attach(trace.set_span_in_context(self.span))

    def exit(self, token: object) -> None:
        assert isinstance(token, tuple)
        activation, otel_token = token
        detach_quietly(otel_token)
        if activation is not None:
            activation.undo()

    def returned(self, value: Any) -> None:
        pass

    def finish(self, exc: BaseException | None) -> None:
        if not self.done:
            self.done = True
            end_span(self.span, exc if isinstance(exc, Exception) else None)


def _thread_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    config = kwargs.get("config", args[1] if len(args) > 1 else None)
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    return configurable.get("thread_id") if isinstance(configurable, Mapping) else None


def _begin(instance: Any) -> Callable[[tuple[Any, ...], dict[str, Any]], _GraphRun | None]:
    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _GraphRun | None:
        rt = runtime.current()
        if not rt.enabled:
            return None
        try:
            given = _thread_of(args, kwargs)
            thread_id = frameworks.conversation_id(given)
            target = None
            if given is not None:  # session_for warns (once) about an id that cannot be a session id
                target = frameworks.session_for(
                    THREAD_ID, given, name=SESSION_NAME, attributes={THREAD_ID: thread_id or ""}
                )
            name = getattr(instance, "name", None)
            name = name if isinstance(name, str) and name else "LangGraph"
            parent = trace.set_span_in_context(target.span) if target is not None else None
            span = rt.tracer.start_span(f"invoke_workflow {name}", context=parent)
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.agent.name": name,
                SPAN_KIND: "workflow",
            }
            if thread_id is not None:
                attrs[THREAD_ID] = thread_id
                attrs[frameworks.CONVERSATION_ID] = thread_id
            write_attributes(span, attrs)
            return _GraphRun(span, target)
        except Exception as exc:
            internal_error("langgraph run start", exc)
            return None

    return begin


def _stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from sdk.decorators import wrap_call

    return wrap_call(wrapped, _begin(instance))(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Nodes


def _node_span(rt: runtime.Runtime, task: Any) -> Span:
    name = str(getattr(task, "name", "") or "node")
    attrs: dict[str, Any] = {"langgraph.node": name, SPAN_KIND: "task"}
    config = getattr(task, "config", None)
    metadata = config.get("metadata") if isinstance(config, Mapping) else None
    step = metadata.get("langgraph_step") if isinstance(metadata, Mapping) else None
    if isinstance(step, int):
        attrs["langgraph.step"] = step
    span = rt.tracer.start_span(f"node {name}")
    write_attributes(span, attrs)
    return span


def _end_node(span: Span, exc: BaseException | None) -> None:
    from langgraph.errors import GraphBubbleUp

    interrupted = isinstance(exc, GraphBubbleUp)
    if interrupted:
        span.set_attribute("langgraph.interrupted", True)
    end_span(span, exc if isinstance(exc, Exception) and not interrupted else None)


def _internal(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """LangGraph's own nodes (``__start__`` writes the input): no span."""
    name = getattr(args[0] if args else kwargs.get("task"), "name", "")
    return isinstance(name, str) and name.startswith("__")


def _run_node(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    rt = runtime.current()
    if not rt.enabled or _internal(args, kwargs):
        return wrapped(*args, **kwargs)
    span = _node_span(rt, args[0] if args else kwargs.get("task"))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        detach_quietly(token)
        _end_node(span, exc)
        raise
    detach_quietly(token)
    end_span(span)
    return result


def _arun_node(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    rt = runtime.current()
    if not rt.enabled or _internal(args, kwargs):
        return wrapped(*args, **kwargs)
    return _arun_node_in_span(rt, wrapped, args, kwargs)


async def _arun_node_in_span(
    rt: runtime.Runtime, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    span = _node_span(rt, args[0] if args else kwargs.get("task"))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        detach_quietly(token)
        _end_node(span, exc)
        raise
    detach_quietly(token)
    end_span(span)
    return result


# ---------------------------------------------------------------------------------------------
# Tools and model calls: the LangChain callback handler


class _Run:
    """A tool or chat model run in progress."""

    __slots__ = ("mark", "model", "parent", "provider", "span", "started_ns", "token")

    def __init__(self, token: object, span: Span | None = None, mark: Any = None) -> None:
        self.token = token
        self.span = span
        self.mark = mark
        self.parent: Context | None = None
        self.model: str | None = None
        self.provider = "langchain"
        self.started_ns = time.time_ns()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class CallbackHandler:
    """What our LangChain handler does (a ``BaseCallbackHandler`` subclass of it is made on import).

    LangChain calls it in the run's own context (``run_inline``), so the span a tool's start makes
    current is undone by its end in the same context. Nothing it does reaches the program.
    """

    run_inline = True
    raise_error = False
    ignore_chain = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self) -> None:
        self.active = True
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        """A new lock, and none of the parent's runs in progress."""
        self._lock = threading.Lock()
        self._runs = {}

    def _put(self, run_id: UUID, run: _Run) -> None:
        with self._lock:
            self._runs[run_id] = run

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    # -- tools ----------------------------------------------------------------------------

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """``execute_tool {name}``, current until the tool ends."""
        rt = runtime.current()
        if not self.active or not rt.enabled:
            return
        try:
            name = _text((serialized or {}).get("name")) or _text(kwargs.get("name")) or "tool"
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.type": "function",
                SPAN_KIND: "tool",
            }
            inputs = kwargs.get("inputs")
            call_id = inputs.get("tool_call_id") if isinstance(inputs, Mapping) else None
            if isinstance(call_id, str):
                attrs["gen_ai.tool.call.id"] = call_id
            span = rt.tracer.start_span(f"execute_tool {name}")
            write_attributes(span, attrs)
            session = session_for_trace(span.get_span_context().trace_id) or current_session()
            if session is not None:
                session.note_tool_call(name, input_str)  # the budget's loop guard
            self._capture(span, "gen_ai.tool.call.arguments", inputs if inputs is not None else input_str)
            self._put(run_id, _Run(otel_context.attach(trace.set_span_in_context(span)), span))
        except Exception as exc:
            internal_error("langchain tool start", exc)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """End the tool's span (with its result, when content is captured)."""
        self._end_tool(run_id, output, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """End the tool's span with the error."""
        self._end_tool(run_id, None, error)

    def _end_tool(self, run_id: UUID, output: Any, error: BaseException | None) -> None:
        try:
            run = self._pop(run_id)
            if run is None or run.span is None:
                return
            detach_quietly(run.token)
            if error is None and output is not None:
                self._capture(run.span, "gen_ai.tool.call.result", getattr(output, "content", output))
            end_span(run.span, error if isinstance(error, Exception) else None)
        except Exception as exc:
            internal_error("langchain tool end", exc)

    @staticmethod
    def _capture(span: Span, key: str, value: Any) -> None:
        from sdk.instrumentation import genai

        settings = genai.settings_now(runtime.current())
        if settings.capture:
            plain = value if isinstance(value, (str, int, float, bool, list, dict)) else str(value)
            span.set_attribute(key, genai.arguments_text(settings.redactor, plain))

    # -- model calls ----------------------------------------------------------------------

    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """A model-call scope: the client call inside is the model call's span."""
        self._start_model(run_id, kwargs)

    def on_llm_start(
        self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """A model-call scope for a completion model."""
        self._start_model(run_id, kwargs)

    def _start_model(self, run_id: UUID, kwargs: dict[str, Any]) -> None:
        rt = runtime.current()
        if not self.active or not rt.enabled:
            return
        try:
            parent = otel_context.get_current()
            mark, token = frameworks.model_call_scope()
            run = _Run(token, mark=mark)
            run.parent = parent
            metadata = kwargs.get("metadata")
            params = kwargs.get("invocation_params")
            if isinstance(metadata, Mapping):
                run.model = _text(metadata.get("ls_model_name"))
                run.provider = _text(metadata.get("ls_provider")) or run.provider
            if run.model is None and isinstance(params, Mapping):
                run.model = _text(params.get("model")) or _text(params.get("model_name"))
            self._put(run_id, run)
        except Exception as exc:
            internal_error("langchain model start", exc)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Close the scope; record the call if no client span did."""
        self._end_model(run_id, response, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Close the scope; record the failed call if no client span did."""
        self._end_model(run_id, None, error)

    def _end_model(self, run_id: UUID, response: Any, error: BaseException | None) -> None:
        try:
            run = self._pop(run_id)
            if run is None or run.mark is None:
                return
            detach_quietly(run.token)
            if run.mark.recorded:
                return
            frameworks.record_model_call(
                run.parent, run.provider, run.model, run.started_ns, lambda call: _fill(call, response), error
            )
        except Exception as exc:
            internal_error("langchain model end", exc)


def _fill(call: Any, result: Any) -> None:
    """What LangChain's ``LLMResult`` says about a call: usage, model, response id, finish reasons."""
    from sdk.instrumentation import genai

    output = genai.get(result, "llm_output")
    usage = genai.get(output, "token_usage") or genai.get(output, "usage")
    if isinstance(usage, Mapping):
        call.input_tokens = genai.as_int(usage.get("prompt_tokens", usage.get("input_tokens")))
        call.output_tokens = genai.as_int(usage.get("completion_tokens", usage.get("output_tokens")))
    model = _text(genai.get(output, "model_name"))
    if model is not None:
        call.response_model = model
    for batch in genai.get(result, "generations") or ():
        for generation in batch or ():
            message = genai.get(generation, "message")
            metadata = genai.get(message, "usage_metadata")
            if call.input_tokens is None and isinstance(metadata, Mapping):
                call.input_tokens = genai.as_int(metadata.get("input_tokens"))
                call.output_tokens = genai.as_int(metadata.get("output_tokens"))
            info = genai.get(message, "response_metadata") or genai.get(generation, "generation_info")
            if isinstance(info, Mapping):
                reason = info.get("finish_reason") or info.get("stop_reason")
                if isinstance(reason, str):
                    call.finish_reasons.append(reason)
                response_id = info.get("id")
                if isinstance(response_id, str) and call.response_id is None:
                    call.response_id = response_id
                model = _text(info.get("model_name")) or _text(info.get("model"))
                if model is not None and call.response_model is None:
                    call.response_model = model


"""The process's handler logic (registered once with LangChain; inert while uninstrumented)."""


class _Registration:
    """The handler object LangChain holds (made once ``langchain_core`` is imported)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handler: Any = None

    def after_fork_in_child(self) -> None:
        """A new lock (one held by another thread at fork time would stay held)."""
        self.lock = threading.Lock()

    def register(self, module: Any = None) -> None:
        if not INSTRUMENTOR.instrumented:
            return
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.tracers.context import register_configure_hook

        with self.lock:
            handler().active = True
            if self.handler is not None:
                return
            forward = {
                name: _forward(name)
                for name in (
                    "on_tool_start",
                    "on_tool_end",
                    "on_tool_error",
                    "on_chat_model_start",
                    "on_llm_start",
                    "on_llm_end",
                    "on_llm_error",
                )
            }
            attributes = {
                name: getattr(CallbackHandler, name)
                for name in dir(CallbackHandler)
                if name.startswith("ignore_")
            }
            handler_type = type(
                "SessiontraceCallbackHandler",
                (BaseCallbackHandler,),
                {**forward, **attributes, "run_inline": True, "raise_error": False},
            )
            self.handler = handler_type()
            var: contextvars.ContextVar[Any] = contextvars.ContextVar(
                "sessiontrace_langchain", default=self.handler
            )
            register_configure_hook(var, True)


def _forward(name: str) -> Callable[..., None]:
    method = getattr(handler(), name)

    def forward(self: Any, *args: Any, **kwargs: Any) -> None:
        method(*args, **kwargs)

    forward.__name__ = name
    return forward


def handler() -> CallbackHandler:
    """The one LangChain callback handler of the process (registered once; inert while uninstrumented)."""
    return STATE.integration("langgraph.handler", CallbackHandler)


def _registration() -> _Registration:
    return STATE.integration("langgraph.registration", _Registration)


_HOOK = ("langgraph", "langchain_core.tracers.context (handler)")
"""Its key in STATE.hooked_modules: the post-import hook that registers the handler is set once."""


class _LangGraphInstrumentor(Instrumentor):
    """The graph, node and runner patches, and the LangChain handler registered once ``langchain_core`` is imported."""

    def instrument(self) -> None:
        super().instrument()
        if "langchain_core.tracers.context" in sys.modules:
            _registration().register()
        elif _HOOK not in STATE.hooked_modules:
            STATE.hooked_modules.add(_HOOK)
            when_imported("langchain_core.tracers.context", _registration().register)

    def uninstrument(self) -> None:
        super().uninstrument()
        handler().active = False


_PREGEL = "langgraph.pregel.main"
_RUNNER = "langgraph.pregel._runner"

INSTRUMENTOR = _LangGraphInstrumentor(
    "langgraph",
    PACKAGE,
    SUPPORTED,
    (
        Patch(_PREGEL, "Pregel", "stream", _stream, "langgraph.Pregel.stream"),
        Patch(_PREGEL, "Pregel", "astream", _stream, "langgraph.Pregel.astream"),
        Patch(_RUNNER, None, "run_with_retry", _run_node, "langgraph.run_with_retry"),
        Patch(_RUNNER, None, "arun_with_retry", _arun_node, "langgraph.arun_with_retry"),
    ),
)
"""Graph runs, thread sessions, node spans, and the LangChain handler (see the module docstring)."""
