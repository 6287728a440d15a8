"""What the agent framework integrations share: conversation ids as sessions, and model calls.

**Conversation ids as sessions** (the `session_from` setting). Agent frameworks name their conversations: autogen-core a topic's source, LangGraph a
``thread_id``, the OpenAI Agents SDK a trace's ``group_id``, a ``Session`` object or a server-side
``conversation_id``. For each source listed in `session_from` (off by default), work a framework
runs *outside any session* for conversation X runs in session X:

- the session with id X if one is open in this process (joined: the integration never ends it);
- else a new session X, resumed from the session store when one is configured (same id, same
  trace, the next segment, linked to the previous one), with ``gen_ai.conversation.id`` X,
  ``sessiontrace.session.source`` naming the source, and the framework's own attributes.

Work that runs inside a session stays in that session, whatever its conversation id. A
conversation runs many times (a LangGraph thread is invoked once per user message), so a session
started here stays open from one run to the next: one conversation is one session and one trace,
as in examples/multi_tenant_server. It ends when its owner stops, for a framework with such an
end (autogen-core's runtime: `end_owned`), else by ``sdk.end_session(X)``,
`session_idle_timeout` (the next run resumes it), `max_open_sessions`, `sdk.shutdown()` or at exit.
Each integration calls `session_for` from its entry points; see docs/integrations.md.

**Model calls** (no double span). A framework's model-call scope (the Agents SDK's response or
generation span, a LangChain chat model run) puts a `genai.ModelCallMark` in the context
(`model_call_scope`); an instrumented client call inside it (openai, anthropic) marks it, and its
client span is the model call's one span, with cost and budgets. When nothing marked it (a client
the SDK does not instrument, LiteLLM, a custom model), the integration records the call from the
framework's data with `record_model_call`.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from sdk import runtime
from sdk.attributes import write_attributes
from sdk.guard import warn_once
from sdk.semconv import MAX_ID_LENGTH, SPAN_KIND, SessionState
from sdk.session_api import session
from sdk.session_core import Session, session_for_trace
from sdk.state import STATE
from sdk.version import installed_version

if TYPE_CHECKING:
    from sdk.instrumentation.genai import LLMCall, ModelCallMark
    from sdk.settings import Config

CONVERSATION_ID = "gen_ai.conversation.id"
SESSION_SOURCE = "sessiontrace.session.source"
"""Which `session_from` source started a session (on its span)."""
AUTOGEN_TOPIC = "autogen.topic"


class FrameworkSource(NamedTuple):
    """One kind of framework conversation id the `session_from` setting can map to sessions."""

    framework: str
    """The framework's distribution name."""
    where: str
    """Where the id comes from, for the docs and `doctor`."""


SOURCES: dict[str, FrameworkSource] = {
    AUTOGEN_TOPIC: FrameworkSource("autogen-core", "TopicId(type, source=X) of a published message"),
    "langgraph.thread_id": FrameworkSource("langgraph", 'config={"configurable": {"thread_id": X}}'),
    "openai_agents.group_id": FrameworkSource(
        "openai-agents", "RunConfig(group_id=X), or agents.trace(..., group_id=X) around the runs"
    ),
    "openai_agents.session": FrameworkSource("openai-agents", "Runner.run(..., session=SQLiteSession(X))"),
    "openai_agents.conversation_id": FrameworkSource("openai-agents", "Runner.run(..., conversation_id=X)"),
}
"""Every source, by its `session_from` name (sdk.settings.SESSION_SOURCES lists the same names)."""


class _Owned:
    """The sessions started for an owner (autogen's runtime) until it stops, and the locks that make
    finding-or-starting a conversation's session one at a time per id (two runs of one conversation
    at once get one session), not across ids (a resume may read the store).

    Weak both ways: an owner or an ended session nobody else holds goes away. The locks are made
    anew in a forked child (a lock another thread held at fork time would stay held there).
    """

    def __init__(self) -> None:
        self.by_owner: weakref.WeakKeyDictionary[Any, weakref.WeakValueDictionary[str, Session]] = (
            weakref.WeakKeyDictionary()
        )
        self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        """New locks."""
        self.lock = threading.Lock()
        self.stripes = tuple(threading.Lock() for _ in range(64))


def _owned() -> _Owned:
    return STATE.integration("frameworks.owned", _Owned)


def enabled_sources(config: Config | None) -> tuple[str, ...]:
    """The sources `config` turns on (`session_from`, plus ``autogen.topic`` for `session_from_topic`)."""
    if config is None or not config.enabled:
        return ()
    if config.session_from_topic and AUTOGEN_TOPIC not in config.session_from:
        return (*config.session_from, AUTOGEN_TOPIC)
    return config.session_from


def wanted(source: str) -> bool:
    """Whether the running config maps `source`'s ids to sessions."""
    config = runtime.current().config
    if config is None or not config.enabled:
        return False
    return source in config.session_from or (source == AUTOGEN_TOPIC and config.session_from_topic)


def outside_sessions() -> bool:
    """No session in this context: none set, none owning the current span's trace, none in the baggage."""
    local = STATE.current_session.get()
    if local is not None and local.state is SessionState.RUNNING:
        return False
    ctx = otel_context.get_current()
    span_context = trace.get_current_span(ctx).get_span_context()
    if span_context.is_valid and session_for_trace(span_context.trace_id) is not None:
        return False
    from sdk.context import session_id_from

    return session_id_from(ctx) is None


def conversation_id(framework_id: object, source: str | None = None) -> str | None:
    """`framework_id` as a session id (text, an int or a UUID), or None (empty, too long, unprintable:
    warned about once per `source`, when given)."""
    if isinstance(framework_id, (int, uuid.UUID)) and not isinstance(framework_id, bool):
        framework_id = str(framework_id)
    if not isinstance(framework_id, str) or not framework_id.strip():
        return None
    if len(framework_id) > MAX_ID_LENGTH or not framework_id.isprintable():
        if source is None:
            return None
        warn_once(
            f"session-from-{source}",
            "sessiontrace: session_from %s: a conversation id is not a valid session id (at most %d "
            "printable characters); that conversation runs outside any session",
            source,
            MAX_ID_LENGTH,
        )
        return None
    return framework_id


def session_for(
    source: str,
    framework_id: object,
    *,
    name: str,
    attributes: Mapping[str, Any] | None = None,
    owner: object = None,
) -> Session | None:
    """The session for conversation `framework_id` of `source`, or None when the mapping does not apply.

    None unless `source` is in `session_from` and the caller is outside any session (see the module
    docstring). Returns the open session with that id, else starts one named `name` (resumed from
    the store when there is one) with `attributes`, ``gen_ai.conversation.id`` and
    ``sessiontrace.session.source``; a session started for an `owner` ends when `end_owned(owner)`
    is called.
    """
    if not wanted(source) or not outside_sessions():
        return None
    conversation = conversation_id(framework_id, source)
    if conversation is None:
        return None
    with _owned().stripes[hash(conversation) % len(_owned().stripes)]:
        found = STATE.registry.running(conversation)
        if found is not None:
            return found
        attrs = {**(attributes or {}), CONVERSATION_ID: conversation, SESSION_SOURCE: source}
        scope = session(
            name, session_id=conversation, resume=runtime.current().store is not None, attributes=attrs
        )
        try:
            started = scope.start()
        except ValueError:  # a session with this id was opened just now, by other code
            return STATE.registry.running(conversation)
    if owner is not None:
        with _owned().lock:
            sessions = _owned().by_owner.get(owner)
            if sessions is None:
                sessions = _owned().by_owner[owner] = weakref.WeakValueDictionary()
            sessions[conversation] = started
    return started


def end_owned(owner: object, reason: str) -> int:
    """End the sessions started for `owner` (`success`, with `reason`); returns how many were running.

    Sessions it joined (opened elsewhere with the same id) are left to whoever opened them.
    """
    with _owned().lock:
        sessions = _owned().by_owner.pop(owner, None)
        running = [s for s in (sessions.values() if sessions is not None else ()) if not s.ended]
    for owned in running:
        owned.end(SessionState.SUCCESS, reason)
    return len(running)


def describe(config: Config) -> list[tuple[str, str, str, str]]:
    """For `doctor`: per source, (source, framework and version, where the id comes from, on/off)."""
    on = enabled_sources(config)
    rows = []
    for name, source in SOURCES.items():
        version = installed_version(source.framework)
        installed = f"{source.framework} {version}" if version else f"{source.framework} (not installed)"
        rows.append((name, installed, source.where, "on" if name in on else "off"))
    return rows


# ---------------------------------------------------------------------------------------------
# Model calls


def model_call_scope(base: Context | None = None) -> tuple[ModelCallMark, object]:
    """Open a framework's model-call scope, on `base` (default: the current context) made current:
    (its mark, the token to `detach_quietly` when the call ends)."""
    from sdk.instrumentation import genai

    mark = genai.ModelCallMark()
    return mark, otel_context.attach(otel_context.set_value(genai.FRAMEWORK_MODEL_CALL, mark, base))


def record_model_call(
    parent: Context | None,
    provider: str,
    model: str | None,
    started_ns: int,
    fill: Callable[[LLMCall], None],
    error: BaseException | str | None = None,
) -> None:
    """One GenAI span for a model call no client recorded, from what the framework says (`fill` sets
    the call's response id, usage, finish reasons): started at `started_ns` (``time.time_ns()``),
    ended now, counted in the session's totals, cost and metrics as a client span is."""
    from sdk.instrumentation import genai

    rt = runtime.current()
    if not rt.enabled:
        return
    span = rt.tracer.start_span(
        f"chat {model}" if model else "chat", context=parent, kind=SpanKind.CLIENT, start_time=started_ns
    )
    attrs: dict[str, Any] = {genai.OPERATION: "chat", genai.PROVIDER: provider}
    attrs[SPAN_KIND] = "llm"
    if model:
        attrs[genai.REQUEST_MODEL] = model
    write_attributes(span, attrs)
    call = genai.LLMCall(span, provider, "chat", model, genai.settings_now(rt), (None, None))
    call.started_ns -= time.time_ns() - started_ns  # the call's duration, for the metrics
    fill(call)
    if isinstance(error, str):
        call.stream_error = error
    call.end(error if isinstance(error, BaseException) else None)
