"""Sessions through autogen-core's `SingleThreadedAgentRuntime` (the ``autogen`` extra).

The runtime moves each message through a queue and handles it in a task of its own, created by
its message loop: no ContextVar of the code that published or sent the message reaches the
handler, and the runtime's envelopes carry only W3C ``traceparent`` (autogen-core 0.4.9+ uses
it for a span link, not as the parent). Three kinds of patch fix that:

- **Capture.** Each envelope (`PublishMessageEnvelope`, `SendMessageEnvelope`,
  `ResponseMessageEnvelope`) records, when it is created, the session and OpenTelemetry context
  of the code creating it: the publisher, the sender, or the handler that answers an RPC.
- **Dispatch.** ``_process_publish``, ``_process_send`` and ``_process_response`` run in the
  context their envelope recorded. A handler's spans (autogen's own ``autogen process ...``
  spans, the user's, an LLM client's) sit in the publisher's trace and session, whatever
  context ``runtime.start()`` was called in, with autogen-core's tracing on or off.
- **Topic sessions** (``session_from=["autogen.topic"]``, or the older `session_from_topic`;
  off by default). A message published from outside any session to ``TopicId(type, source=X)``
  is published and handled in session X (`sdk.instrumentation.frameworks`): started on
  first use (resumed from the session store when one is configured), used again by later
  messages, and ended as `success` when the runtime stops (``stop``, ``stop_when_idle``,
  ``stop_when``, ``close``). `sdk.shutdown()`, the exit handler and `session_idle_timeout` end it
  too; the next message to X then resumes it. A session X already open in the process
  (``sdk.session(session_id=X)``) is joined, not ended by the runtime.

A message published or sent from inside a session is handled in that session, whatever its
topic. Every patch is applied once per process (right after ``autogen_core`` is imported) and
removed by ``INSTRUMENTOR.uninstrument()``; this module imports nothing of autogen-core itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from sdk.guard import internal_error
from sdk.instrumentation import frameworks
from sdk.instrumentation.base import Instrumentor, Patch
from sdk.session_core import Session, detach_quietly
from sdk.state import STATE

MODULE = "autogen_core._single_threaded_agent_runtime"
RUNTIME_CLASS = "SingleThreadedAgentRuntime"
CARRY = "_sessiontrace_carry"
"""The attribute an envelope keeps its creator's session and context in."""
TOPIC_TYPE = "autogen.topic.type"
TOPIC_SOURCE = "autogen.topic.source"
STOPPED_REASON = "autogen runtime stopped"

T = TypeVar("T")


class _Carry(NamedTuple):
    """What a handler runs in: the session and the OpenTelemetry context of the envelope's creator."""

    session: Session | None
    context: Context


SUPPORTED = ">=0.4.9,<0.8"
"""The autogen-core versions whose runtime the patches are written for (docs/compatibility.md)."""


# ---------------------------------------------------------------------------------------------
# Capture: an envelope remembers the context it was created in.


def _capture(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    wrapped(*args, **kwargs)
    try:
        setattr(instance, CARRY, _Carry(STATE.current_session.get(), otel_context.get_current()))
    except Exception as exc:
        internal_error("autogen envelope capture", exc)


# ---------------------------------------------------------------------------------------------
# Dispatch: a handler runs in the context its envelope recorded.


def _dispatch(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    work = wrapped(*args, **kwargs)
    try:
        envelope: Any = args[0] if args else kwargs.get("message_envelope")
        carry = getattr(envelope, CARRY, None)
        if carry is None and hasattr(envelope, "topic_id"):
            # A publish envelope made without the capture patch (queued before apply(), say).
            topic = _topic_session_for(instance, envelope.topic_id)
            if topic is not None:
                carry = _Carry(topic, trace.set_span_in_context(topic.span, Context()))
    except Exception as exc:
        internal_error("autogen dispatch", exc)
        return work
    if not isinstance(carry, _Carry):
        return work
    return _carried(carry, work)


async def _carried(carry: _Carry, work: Awaitable[T]) -> T:
    session_token = STATE.current_session.set(carry.session)
    token = otel_context.attach(carry.context)
    try:
        return await work
    finally:
        detach_quietly(token)
        STATE.current_session.reset(session_token)


# ---------------------------------------------------------------------------------------------
# Topic sessions


def _publish(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    topic_session: Session | None = None
    try:
        topic = args[1] if len(args) > 1 else kwargs.get("topic_id")
        topic_session = _topic_session_for(instance, topic)
    except Exception as exc:
        internal_error("autogen publish_message", exc)
    work = wrapped(*args, **kwargs)
    if topic_session is None:
        return work
    return _published_in(topic_session, work)


async def _published_in(topic_session: Session, work: Awaitable[T]) -> T:
    with topic_session.use():
        return await work


def _topic_session_for(owner: Any, topic: Any) -> Session | None:
    """The session for a topic's source (see `frameworks.session_for`), owned by the runtime."""
    if not frameworks.wanted(frameworks.AUTOGEN_TOPIC):
        return None
    topic_type = getattr(topic, "type", None)
    name = topic_type if isinstance(topic_type, str) and topic_type else "autogen"
    source = getattr(topic, "source", None)
    return frameworks.session_for(
        frameworks.AUTOGEN_TOPIC,
        source if isinstance(source, str) else None,
        name=name,
        attributes={TOPIC_TYPE: name, TOPIC_SOURCE: source},
        owner=owner,
    )


def _stopping(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    work = wrapped(*args, **kwargs)
    return _then_end_topic_sessions(instance, work)


async def _then_end_topic_sessions(owner: Any, work: Coroutine[Any, Any, T]) -> T:
    try:
        return await work
    finally:
        end_topic_sessions(owner)


def end_topic_sessions(owner: Any) -> int:
    """End the topic sessions a runtime started (`success`); returns how many were running.

    Called when the runtime stops. Sessions it joined (opened elsewhere with the same id) are left
    to whoever opened them.
    """
    return frameworks.end_owned(owner, STOPPED_REASON)


_RUNTIME_METHODS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("publish_message", _publish),
    ("_process_publish", _dispatch),
    ("_process_send", _dispatch),
    ("_process_response", _dispatch),
    ("stop", _stopping),
    ("stop_when_idle", _stopping),
    ("stop_when", _stopping),
)
_PATCHES: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    ("PublishMessageEnvelope", "__init__", _capture),
    ("SendMessageEnvelope", "__init__", _capture),
    ("ResponseMessageEnvelope", "__init__", _capture),
    *((RUNTIME_CLASS, method, wrapper) for method, wrapper in _RUNTIME_METHODS),
)
"""(class in the runtime's module, method, wrapper)."""

INSTRUMENTOR = Instrumentor(
    "autogen",
    "autogen-core",
    SUPPORTED,
    tuple(
        Patch(MODULE, owner, method, wrapper, f"autogen_core.{owner}.{method}")
        for owner, method, wrapper in _PATCHES
    ),
)
"""The envelope captures, the dispatches and the runtime's stop methods (see the module docstring)."""
