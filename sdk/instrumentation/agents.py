"""The OpenAI Agents SDK (the ``agents`` extra): its runs as OpenTelemetry spans in the current session.

Applied when ``agents`` is imported (openai-agents, `SUPPORTED`); Agency Swarm 1.x runs on it.

**The bridge.** One `TracingProcessor` of ours, added to the Agents SDK's processors with
``agents.add_trace_processor``, turns each of its traces and spans into an OpenTelemetry span as
it starts and ends, parented on the span of its Agents SDK parent, and current (attached) while it
is open, so the spans made inside it — the openai client's, the user's — are its children:

=========================  =========================================================================
Agents SDK                 OpenTelemetry span
=========================  =========================================================================
trace (a run, or the       ``invoke_workflow {workflow name}``; its parent is the current span (the
user's ``agents.trace``)   session's), or conversation X's session span (`session_from`, below)
agent                      ``invoke_agent {name}`` (``gen_ai.agent.name``)
function (a tool)          ``execute_tool {name}`` (``gen_ai.tool.name``; arguments and result only
                           with `capture_content`, redacted)
handoff                    ``handoff {to agent}``
guardrail                  ``guardrail {name}`` (``openai_agents.guardrail.triggered``)
response, generation       none of its own: the openai client call inside it is the one model-call
(a model call)             span. Only when no instrumented client call ran inside (another client,
                           LiteLLM, a custom ``Model``, the websocket transport) does the bridge
                           record the call, from the SDK's data: model, usage, response id, cost
task, turn                 none: their children go to their parent (the workflow, the agent)
mcp_tools, custom, other   ``mcp list_tools {server}``, the custom span's name, ``openai_agents.{type}``
=========================  =========================================================================

Every span carries ``gen_ai.conversation.id`` when the run has a conversation id (its trace's
``group_id``, its ``Session``'s id, its ``conversation_id``) and ``openai_agents.trace_id``.

The Agents SDK's own processors — by default the export of every trace to OpenAI's platform — are
left as the program configured them. ``agents.set_trace_processors([...])`` replaces them and keeps
the bridge (patched to), so ``agents.set_trace_processors([])`` turns the OpenAI export off, before
or after `sdk.init()`. ``agents.set_tracing_disabled(True)`` (or ``OPENAI_AGENTS_DISABLE_TRACING``)
turns all Agents SDK tracing off, the bridge included; the openai client spans remain.

**Conversation sessions** (`session_from`: ``openai_agents.group_id``, ``openai_agents.session``,
``openai_agents.conversation_id``). ``Runner.run``, ``run_sync`` and ``run_streamed`` called
outside any session for conversation X (in the Agents SDK's precedence: ``conversation_id``, then
``session.session_id``, then ``RunConfig.group_id`` or the group of the user's current
``agents.trace``) run in session X: see `sdk.instrumentation.frameworks`. A user's
``with agents.trace("...", group_id=X):`` opened outside any session has its span in session X too.

This module imports nothing of the Agents SDK until ``agents`` is imported.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from sdk import runtime
from sdk.attributes import write_attributes
from sdk.guard import internal_error
from sdk.instrumentation import frameworks
from sdk.instrumentation.base import Instrumentor, Patch, when_imported
from sdk.semconv import SPAN_KIND
from sdk.session_core import Session, current_session, detach_quietly, end_span, session_for_trace
from sdk.state import STATE

T = TypeVar("T")

PACKAGE = "openai-agents"
SUPPORTED = ">=0.18.1,<1"
"""The openai-agents versions the bridge is written for (tested: 0.18.1 with Agency Swarm 1.11, 0.24.0)."""

GROUP_ID = "openai_agents.group_id"
SESSION = "openai_agents.session"
CONVERSATION = "openai_agents.conversation_id"
TRACE_ID = "openai_agents.trace_id"
SESSION_NAME = "openai-agents"
"""The name of a session started for a conversation (its id is the conversation id)."""

_PASSTHROUGH = frozenset({"task", "turn"})
"""Span types with no span of their own: their children are parented on their parent."""
_MODEL_CALLS = frozenset({"response", "generation"})

_conversation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sessiontrace_openai_agents_conversation", default=None
)
"""The conversation id of the run in progress (a Session's or a conversation_id, which the trace lacks)."""


class _Open:
    """An Agents SDK span in progress: our span (or the parent's, for one with none), the context token."""

    __slots__ = ("mark", "passthrough", "span", "started_ns", "token", "trace_id")

    def __init__(
        self,
        span: Span | None,
        token: object,
        trace_id: str,
        *,
        mark: Any = None,
        passthrough: bool = False,
    ) -> None:
        self.span = span
        self.token = token
        self.trace_id = trace_id
        self.mark = mark
        self.passthrough = passthrough
        self.started_ns = time.time_ns()


class _Trace:
    __slots__ = ("conversation", "open", "span")

    def __init__(self, span: Span, conversation: str | None) -> None:
        self.span = span
        self.conversation = conversation
        self.open: set[str] = set()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class SessionBridge:
    """The Agents SDK trace processor that records its traces and spans as OpenTelemetry spans (see the module docstring).

    Callbacks never raise (an internal error is logged once and counted); `active` False makes it
    inert (uninstrumented), since the Agents SDK has no way to remove a processor.
    """

    def __init__(self) -> None:
        self.active = True
        self._lock = threading.Lock()
        self._traces: dict[str, _Trace] = {}
        self._spans: dict[str, _Open] = {}

    def after_fork_in_child(self) -> None:
        """A new lock, and none of the parent's traces and spans in progress (they end there)."""
        self._lock = threading.Lock()
        self._traces = {}
        self._spans = {}

    # -- traces ---------------------------------------------------------------------------

    def on_trace_start(self, agents_trace: Any) -> None:
        """A span for the trace, child of the current span or of its conversation's session span."""
        rt = runtime.current()
        if not self.active or not rt.enabled:
            return
        try:
            group = _text(getattr(agents_trace, "group_id", None))
            conversation = _conversation.get() or group
            parent = None
            if group is not None:
                found = frameworks.session_for(
                    GROUP_ID, group, name=SESSION_NAME, attributes={GROUP_ID: group}
                )
                if found is not None:  # a trace the user opened outside any session
                    parent = trace.set_span_in_context(found.span)
            name = _text(getattr(agents_trace, "name", None)) or "Agent workflow"
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.agent.name": name,
                SPAN_KIND: "workflow",
                TRACE_ID: str(agents_trace.trace_id),
            }
            if conversation is not None:
                attrs[frameworks.CONVERSATION_ID] = conversation
            if group is not None:
                attrs[GROUP_ID] = group
            span = rt.tracer.start_span(f"invoke_workflow {name}", context=parent)
            write_attributes(span, attrs)
            with self._lock:
                self._traces[str(agents_trace.trace_id)] = _Trace(span, conversation)
        except Exception as exc:
            internal_error("openai-agents trace start", exc)

    def on_trace_end(self, agents_trace: Any) -> None:
        """End the trace's span (and any of its spans the Agents SDK left open)."""
        try:
            trace_id = str(agents_trace.trace_id)
            with self._lock:
                entry = self._traces.pop(trace_id, None)
                if entry is None:
                    return
                leftovers = [self._spans.pop(span_id, None) for span_id in entry.open]
            for left in leftovers:
                if left is not None and left.span is not None and not left.passthrough and left.mark is None:
                    left.span.end()
            entry.span.end()
        except Exception as exc:
            internal_error("openai-agents trace end", exc)

    # -- spans ----------------------------------------------------------------------------

    def on_span_start(self, agents_span: Any) -> None:
        """Start its span (parented on its Agents SDK parent) and make it current until it ends."""
        rt = runtime.current()
        if not self.active or not rt.enabled:
            return
        try:
            self._start(rt, agents_span)
        except Exception as exc:
            internal_error("openai-agents span start", exc)

    def _start(self, rt: runtime.Runtime, agents_span: Any) -> None:
        span_id, trace_id = str(agents_span.span_id), str(agents_span.trace_id)
        parent_id = agents_span.parent_id
        with self._lock:
            owner = self._traces.get(trace_id)
            parent_entry = self._spans.get(parent_id) if parent_id else None
        parent_span = parent_entry.span if parent_entry is not None else owner.span if owner else None
        conversation = owner.conversation if owner is not None else _conversation.get()
        data = agents_span.span_data
        kind = str(getattr(data, "type", ""))
        parent_ctx = trace.set_span_in_context(parent_span) if parent_span is not None else None
        if kind in _PASSTHROUGH:
            entry = _Open(parent_span, None, trace_id, passthrough=True)
        elif kind in _MODEL_CALLS:
            # No span yet: an instrumented client call inside marks this and is the model-call span.
            mark, token = frameworks.model_call_scope(parent_ctx)
            entry = _Open(parent_span, token, trace_id, mark=mark)
        else:
            name, attrs = _describe(kind, data)
            attrs[TRACE_ID] = trace_id
            if conversation is not None:
                attrs[frameworks.CONVERSATION_ID] = conversation
            span = rt.tracer.start_span(name, context=parent_ctx)
            write_attributes(span, attrs)
            entry = _Open(span, otel_context.attach(trace.set_span_in_context(span)), trace_id)
        with self._lock:
            self._spans[span_id] = entry
            if owner is not None:
                owner.open.add(span_id)

    def on_span_end(self, agents_span: Any) -> None:
        """Make current again what was, write what the span learned, end it."""
        try:
            span_id = str(agents_span.span_id)
            with self._lock:
                entry = self._spans.pop(span_id, None)
                owner = self._traces.get(entry.trace_id) if entry is not None else None
                if owner is not None:
                    owner.open.discard(span_id)
            if entry is None:
                return
            if entry.token is not None:
                detach_quietly(entry.token)
            if entry.passthrough:
                return
            if entry.mark is not None:
                if not entry.mark.recorded:
                    _record_model_call(agents_span, entry)
                return
            span = entry.span
            if span is not None:
                _finish(span, agents_span)
        except Exception as exc:
            internal_error("openai-agents span end", exc)

    def shutdown(self, timeout: float | None = None) -> None:
        """Nothing to do: the SDK's own pipeline exports and flushes the spans."""

    def force_flush(self) -> None:
        """Nothing to do: `sdk.flush()` flushes the spans."""


def _describe(kind: str, data: Any) -> tuple[str, dict[str, Any]]:
    """Span name and start attributes for an Agents SDK span's data."""
    name = _text(getattr(data, "name", None))
    if kind == "agent":
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name or "agent",
            SPAN_KIND: "agent",
        }
        for key in ("tools", "handoffs"):
            value = getattr(data, key, None)
            if isinstance(value, list) and value:
                attrs[f"openai_agents.agent.{key}"] = [str(v) for v in value]
        return f"invoke_agent {name or 'agent'}", attrs
    if kind == "function":
        return f"execute_tool {name or 'tool'}", {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name or "tool",
            "gen_ai.tool.type": "function",
            SPAN_KIND: "tool",
        }
    if kind == "handoff":
        return "handoff", {SPAN_KIND: "task"}
    if kind == "guardrail":
        return f"guardrail {name or ''}".rstrip(), {
            "openai_agents.guardrail.name": name or "",
            SPAN_KIND: "task",
        }
    if kind == "mcp_tools":
        server = _text(getattr(data, "server", None))
        return f"mcp list_tools {server or ''}".rstrip(), {"openai_agents.mcp.server": server or ""}
    if kind == "custom":
        return name or "openai_agents.custom", {}
    return f"openai_agents.{kind or 'span'}", {}


def _finish(span: Span, agents_span: Any) -> None:
    data = agents_span.span_data
    kind = str(getattr(data, "type", ""))
    error = getattr(agents_span, "error", None)
    try:
        if kind == "handoff":
            source, target = _text(data.from_agent), _text(data.to_agent)
            if target:
                span.update_name(f"handoff {target}")
            write_attributes(
                span, {"openai_agents.handoff.from": source or "", "openai_agents.handoff.to": target or ""}
            )
        elif kind == "guardrail":
            span.set_attribute("openai_agents.guardrail.triggered", bool(data.triggered))
        elif kind == "function":
            _tool_finished(span, data)
        if isinstance(error, dict):
            span.set_status(Status(StatusCode.ERROR, str(error.get("message") or "error")))
            span.set_attribute("error.type", f"openai_agents.{kind or 'span'}")
    finally:
        end_span(span)


def _tool_finished(span: Span, data: Any) -> None:
    from sdk.instrumentation import genai

    name = _text(data.name) or "tool"
    session = session_for_trace(span.get_span_context().trace_id) or current_session()
    if session is not None:
        session.note_tool_call(name, data.input)  # the budget's loop guard
    rt = runtime.current()
    settings = genai.settings_now(rt)
    if not settings.capture:
        return
    if data.input is not None:
        span.set_attribute("gen_ai.tool.call.arguments", genai.arguments_text(settings.redactor, data.input))
    if data.output is not None:
        output = (
            data.output if isinstance(data.output, (str, int, float, bool, list, dict)) else str(data.output)
        )
        span.set_attribute("gen_ai.tool.call.result", settings.redactor.json(output))


def _record_model_call(agents_span: Any, entry: _Open) -> None:
    """A model call no instrumented client recorded: one GenAI span from the Agents SDK's data."""
    from sdk.instrumentation import genai
    from sdk.instrumentation import openai as openai_instrumentation

    data = agents_span.span_data
    response = getattr(data, "response", None)
    model = _text(getattr(data, "model", None)) or _text(genai.get(response, "model"))
    provider = (
        model.split("/", 1)[0] if model is not None and "/" in model else "openai"
    )  # LiteLLM: provider/model

    def fill(call: genai.LLMCall) -> None:
        call.extra[TRACE_ID] = str(agents_span.trace_id)
        if response is not None:
            openai_instrumentation.responses_result(call, response)
            return
        usage = getattr(data, "usage", None)
        if isinstance(usage, dict):
            call.input_tokens = genai.as_int(usage.get("input_tokens"))
            call.output_tokens = genai.as_int(usage.get("output_tokens"))
        call.response_model = model

    error = getattr(agents_span, "error", None)
    frameworks.record_model_call(
        trace.set_span_in_context(entry.span) if entry.span is not None else None,
        provider,
        model,
        entry.started_ns,
        fill,
        str(error.get("message") or "error") if isinstance(error, dict) else None,
    )


# ---------------------------------------------------------------------------------------------
# Conversation sessions: the Runner's entry points


def _group_of(run_config: Any) -> str | None:
    group = (
        run_config.get("group_id") if isinstance(run_config, dict) else getattr(run_config, "group_id", None)
    )
    if group is None:
        from agents.tracing import get_current_trace

        group = getattr(get_current_trace(), "group_id", None)  # the user's agents.trace(group_id=...)
    return _text(group)


def _conversation_of(kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(source, id) of a run's conversation, in the Agents SDK's precedence, among the sources that map."""
    conversation = kwargs.get("conversation_id")
    if conversation is not None and frameworks.wanted(CONVERSATION):
        return CONVERSATION, conversation
    session_id = getattr(kwargs.get("session"), "session_id", None)
    if session_id is not None and frameworks.wanted(SESSION):
        return SESSION, session_id
    if frameworks.wanted(GROUP_ID):
        group = _group_of(kwargs.get("run_config"))
        if group is not None:
            return GROUP_ID, group
    return None


def _label_of(kwargs: dict[str, Any]) -> str | None:
    """The run's conversation id for ``gen_ai.conversation.id``, when its trace will not say it."""
    conversation = kwargs.get("conversation_id")
    if conversation is None:
        conversation = getattr(kwargs.get("session"), "session_id", None)
    return frameworks.conversation_id(conversation) if conversation is not None else None


def _run_session(kwargs: dict[str, Any]) -> tuple[Session | None, str | None]:
    """The session a run goes in (None: where it is) and its conversation label."""
    try:
        found = _conversation_of(kwargs)
        target = None
        if found is not None:
            source, conversation = found
            target = frameworks.session_for(
                source, conversation, name=SESSION_NAME, attributes={source: str(conversation)}
            )
        return target, _label_of(kwargs)
    except Exception as exc:
        internal_error("openai-agents run session", exc)
        return None, None


def _run(
    wrapped: Callable[..., Awaitable[T]], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return _run_in_session(wrapped, args, kwargs)


async def _run_in_session(
    wrapped: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    target, label = _run_session(kwargs)
    token = _conversation.set(label) if label is not None else None
    try:
        if target is None:
            return await wrapped(*args, **kwargs)
        with target.use():
            return await wrapped(*args, **kwargs)
    finally:
        if token is not None:
            _conversation.reset(token)


def _run_streamed(
    wrapped: Callable[..., T], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    target, label = _run_session(kwargs)
    token = _conversation.set(label) if label is not None else None
    try:  # the run's task is created in here, and copies this context
        if target is None:
            return wrapped(*args, **kwargs)
        with target.use():
            return wrapped(*args, **kwargs)
    finally:
        if token is not None:
            _conversation.reset(token)


def _keep_bridge(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``set_processors`` keeps the bridge: ``agents.set_trace_processors([])`` turns off OpenAI's export, not ours."""
    processors = list(args[0] if args else kwargs.pop("processors", ()))
    processor = _registration().processor
    if processor is not None and bridge().active and processor not in processors:
        processors.append(processor)
    return wrapped(processors, *args[1:], **kwargs)


# ---------------------------------------------------------------------------------------------
# Registration


class _Forward:
    """What the Agents SDK holds (a TracingProcessor subclass of it, made on import): forwards to `bridge()`."""

    def on_trace_start(self, agents_trace: Any) -> None:
        bridge().on_trace_start(agents_trace)

    def on_trace_end(self, agents_trace: Any) -> None:
        bridge().on_trace_end(agents_trace)

    def on_span_start(self, agents_span: Any) -> None:
        bridge().on_span_start(agents_span)

    def on_span_end(self, agents_span: Any) -> None:
        bridge().on_span_end(agents_span)

    def shutdown(self, timeout: float | None = None) -> None:
        bridge().shutdown(timeout)

    def force_flush(self) -> None:
        bridge().force_flush()


class _Registration:
    """The processor object given to the Agents SDK (one per process) and the provider it went to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processor: Any = None
        self.provider: Any = None

    def after_fork_in_child(self) -> None:
        """A new lock (one held by another thread at fork time would stay held)."""
        self.lock = threading.Lock()

    def register(self, module: Any = None) -> None:
        """Add the processor to the current trace provider's, unless it is there (instrumented only)."""
        if not INSTRUMENTOR.instrumented or not INSTRUMENTOR.version_supported():
            return
        from agents.tracing import TracingProcessor, get_trace_provider

        with self.lock:
            if self.processor is None:
                self.processor = type("SessiontraceProcessor", (_Forward, TracingProcessor), {})()
            provider = get_trace_provider()
            listed = getattr(getattr(provider, "_multi_processor", None), "_processors", None)
            present = self.processor in listed if listed is not None else self.provider is provider
            bridge().active = True
            if not present:
                provider.register_processor(self.processor)
                self.provider = provider


def bridge() -> SessionBridge:
    """The one bridge of the process (registered once; inert while uninstrumented)."""
    return STATE.integration("openai_agents.bridge", SessionBridge)


def _registration() -> _Registration:
    return STATE.integration("openai_agents.registration", _Registration)


_HOOK = ("openai_agents", "agents (processor)")
"""Its key in STATE.hooked_modules: the post-import hook that registers the processor is set once."""


class _AgentsInstrumentor(Instrumentor):
    """The Runner and ``set_processors`` patches, and the bridge registered once ``agents`` is imported."""

    def instrument(self) -> None:
        super().instrument()
        if "agents" in sys.modules:
            _registration().register()
        elif _HOOK not in STATE.hooked_modules:
            STATE.hooked_modules.add(_HOOK)
            when_imported("agents", _registration().register)

    def uninstrument(self) -> None:
        super().uninstrument()
        bridge().active = False


INSTRUMENTOR = _AgentsInstrumentor(
    "openai_agents",
    PACKAGE,
    SUPPORTED,
    (
        Patch("agents.run", "AgentRunner", "run", _run, "agents.AgentRunner.run"),
        Patch("agents.run", "AgentRunner", "run_streamed", _run_streamed, "agents.AgentRunner.run_streamed"),
        Patch(
            "agents.tracing.provider",
            "SynchronousMultiTracingProcessor",
            "set_processors",
            _keep_bridge,
            "agents.SynchronousMultiTracingProcessor.set_processors",
        ),
    ),
)
"""The Agents SDK bridge and its conversation sessions (see the module docstring)."""
