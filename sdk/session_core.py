"""Sessions: each one the root span of its own trace, current per context through a ContextVar.

Resolution of "the current session": the session set in this context (a ``with sdk.session()``
block, or `start_session()` in this thread or task), else the process's auto session, else None.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, overload

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, Span, Status, StatusCode

from sdk import runtime
from sdk.attributes import to_attribute_value, to_attributes, write_attributes
from sdk.budget import Budget, BudgetExceeded, BudgetState, Spent
from sdk.counters import Counter
from sdk.export.summary import SessionSummary, print_summary
from sdk.guard import internal_error, warn_once
from sdk.redaction import scrubber_for
from sdk.settings import Config
from sdk.state import STATE
from sdk.trust import TrustRules

if TYPE_CHECKING:  # imported when a session is stored or resumed, not by `import sdk`
    from sdk.store import Score, Segment, SegmentUpdate, SessionRecord, Usage

SESSION_ID = "session.id"
SESSION_NAME = "session.name"
SESSION_STATE = "session.state"
SESSION_TAGS = "session.tags"
SESSION_END_REASON = "session.end_reason"
SESSION_PARENT_ID = "session.parent_id"
SESSION_AUTO = "session.auto"
SESSION_CONTINUED = "session.continued"
SESSION_SEGMENT = "session.segment"
SESSION_RESUMED = "session.resumed"
SESSION_ERRORS = "session.errors"
SESSION_LLM_CALLS = "session.llm.calls"
SESSION_LLM_INPUT_TOKENS = "session.llm.input_tokens"
SESSION_LLM_OUTPUT_TOKENS = "session.llm.output_tokens"
SESSION_LLM_COST = "session.llm.cost_usd"
SESSION_BUDGET_EXCEEDED = "session.budget.exceeded"
USER_ID = "user.id"
SPAN_KIND = "sessiontrace.span.kind"

MAX_ID_LENGTH = 256
DEFAULT_MAX_OPEN_SESSIONS = 10_000  # before init(), when there is no config yet

F = TypeVar("F", bound=Callable[..., Any])


class SessionState(str, Enum):
    """A session's lifecycle: `running`, then one of `success`, `fail`, `indeterminate`."""

    RUNNING = "running"
    SUCCESS = "success"
    FAIL = "fail"
    INDETERMINATE = "indeterminate"

    def __str__(self) -> str:
        return self.value


class SessionWarning(UserWarning):
    """A session call that could not do what was asked (e.g. ending when there is no session)."""


ROOT_KEY = otel_context.create_key("sessiontrace-new-trace")
"""Context key asking the SDK's tracer for a new trace even where an auto session would adopt the span."""


_ROOT_CONTEXT = otel_context.set_value(ROOT_KEY, True, Context())

REMOTE_SESSION_KEY = otel_context.create_key("sessiontrace-remote-session")
"""Context key holding the id of a session of another process or service that this context
continues: set only for an inbound ``session.id`` the `accept_session_from` setting trusts (or
for work the SDK itself handed to another process). Spans started in such a context carry it."""

INBOUND_SESSION_ID = "sessiontrace.inbound.session_id"
"""Attribute of a session started with ``parent=`` whose inbound ``session.id`` was not adopted."""


def _new_session_id() -> str:
    return f"{random.getrandbits(128):032x}"


def _parse_state(state: SessionState | str) -> SessionState:
    if type(state) is SessionState and state is not SessionState.RUNNING:
        return state
    try:
        parsed = SessionState(state)
    except ValueError:
        names = ", ".join(s.value for s in SessionState if s is not SessionState.RUNNING)
        raise ValueError(f"unknown session state {state!r}; a session ends as one of: {names}") from None
    if parsed is SessionState.RUNNING:
        raise ValueError("a session cannot be ended as 'running'; use success, fail or indeterminate")
    return parsed


def _check_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id.strip():
        raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
    if len(session_id) > MAX_ID_LENGTH or not session_id.isprintable():
        raise ValueError(
            f"session_id must be at most {MAX_ID_LENGTH} printable characters, got {session_id[:40]!r}..."
        )
    return session_id


def _check_tags(tags: Iterable[str] | str | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = [tags]
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"session tags must be non-empty strings, got {tag!r}")
        if tag not in out:
            out.append(tag)
    return tuple(out)


class Session:
    """One session: the root span of its own trace, with an id, a name, a state and tags.

    Sessions are made by `sdk.session()`, `sdk.start_session()` or the auto session. Ending one
    twice is a no-op.
    """

    __slots__ = (
        "__weakref__",
        "_activated",
        "_activation",
        "_budget",
        "_ended_elsewhere",
        "_ended_ns",
        "_lock",
        "_pid",
        "_reason",
        "_show_summary",
        "_spans",
        "_state",
        "_step",
        "_tags",
        "_usage",
        "auto",
        "config",
        "continued",
        "id",
        "last_active_ns",
        "name",
        "parent_id",
        "segment",
        "span",
        "started_ns",
        "started_thread",
        "trace_id_int",
        "user_id",
    )

    def __init__(
        self,
        *,
        session_id: str,
        name: str,
        user_id: str | None,
        tags: tuple[str, ...],
        span: Span,
        config: Config | None,
        parent_id: str | None,
        auto: bool,
        started_ns: int,
        segment: int = 1,
        continued: bool = False,
    ) -> None:
        self.id = session_id
        self.continued = continued
        """True for a session of another process or service continued here (`parent=`): its
        record belongs to its owner, so this process never writes it to the store."""
        self.segment = segment
        self.name = name
        self.user_id = user_id
        self._tags = tags
        self.span = span
        self.config = config
        self.parent_id = parent_id
        self.auto = auto
        self.started_ns = started_ns
        self.last_active_ns = STATE.clock.monotonic_ns()
        self._step: Span | None = None
        self.started_thread: int | None = None
        """The thread `start_session()` made this session current in (None for other sessions)."""
        self.trace_id_int = span.get_span_context().trace_id
        self._state = SessionState.RUNNING
        self._reason: str | None = None
        self._ended_ns: int | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._spans = Counter()
        self._spans.add()
        self._activation: _Activation | None = None
        self._activated: _Activation | None = None
        self._ended_elsewhere = False
        self._show_summary: bool | None = config.console_summary if config else None
        self._usage = [0, 0, 0, 0.0, 0]  # LLM calls, input tokens, output tokens, cost (USD), errors
        self._budget: BudgetState | None = None

    @property
    def state(self) -> SessionState:
        """`running` until the session ends."""
        return self._state

    @property
    def reason(self) -> str | None:
        """Why the session ended (given to `end()`, or set by the SDK: an exception type, `process exit`)."""
        return self._reason

    @property
    def tags(self) -> tuple[str, ...]:
        """The session's tags (exported as `session.tags`)."""
        return self._tags

    @property
    def trace_id(self) -> str:
        """The id of the session's trace, as 32 hex digits."""
        return f"{self.trace_id_int:032x}"

    @property
    def span_count(self) -> int:
        """Spans started in this session so far, the session's own span included."""
        return self._spans.value

    @property
    def usage(self) -> Usage:
        """This segment's counters so far: spans, LLM calls, input/output tokens, cost in USD, errors.

        LLM numbers come from the instrumented clients (docs/instrumentation.md); errors count
        spans of the session that recorded an exception. A resumed session's earlier segments are
        in its stored record (`python -m sdk sessions show ID`).
        """
        from sdk.store import Usage

        with self._lock:
            calls, tokens_in, tokens_out, cost, errors = self._usage
        return Usage(self._spans.value, int(calls), int(tokens_in), int(tokens_out), float(cost), int(errors))

    def add_llm_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        error: bool = False,
    ) -> None:
        """Count one LLM call of this session (the instrumentation calls this for every call it records)."""
        with self._lock:
            usage = self._usage
            usage[0] += 1
            usage[1] += input_tokens or 0
            usage[2] += output_tokens or 0
            usage[3] += cost_usd or 0.0
            if error:
                usage[4] += 1

    def note_span(self) -> None:
        """Count a span started in this session (the span processor calls this for every span)."""
        self._spans.add()
        self.last_active_ns = STATE.clock.monotonic_ns()

    @property
    def ended_elsewhere(self) -> bool:
        """True once a `start_session()` session was ended by another thread than the one it was
        made current in: that context still holds it, but it is no parent any more."""
        return self._ended_elsewhere

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at fork time stays held forever."""
        self._lock = threading.Lock()

    def _add_error(self) -> None:
        with self._lock:
            self._usage[4] += 1

    @property
    def budget(self) -> Budget | None:
        """The session's budget (its own, or the `session_budget` setting's), if it has one."""
        return self._budget.budget if self._budget is not None else None

    def spent(self) -> Spent:
        """What this segment has used, in a budget's terms (see `Budget`)."""
        with self._lock:
            calls, tokens_in, tokens_out, cost, errors = self._usage
        return Spent(float(cost), int(tokens_in + tokens_out), int(calls), self.duration, int(errors))

    def check_budget(self) -> None:
        """Before an instrumented LLM call of this session is sent: over budget, raise `BudgetExceeded`
        (``on_exceed="raise"``) — the first time a limit is found exceeded, a
        ``session.budget_exceeded`` event is recorded and the `on_budget_exceeded` callbacks are
        called, in either mode."""
        state = self._budget
        if state is None or self._state is not SessionState.RUNNING:
            return
        found = state.over(self.spent())
        if found is None:
            return
        error = BudgetExceeded(*found, self)
        if found[0] not in state.exceeded:
            state.exceeded[found[0]] = None
            self._report_budget(error, state)
        if state.budget.on_exceed == "raise":
            raise error

    def note_tool_call(self, name: str, arguments: Any) -> None:
        """Count a tool call for the budget's loop guard (`max_repeats`): the same tool with the same
        arguments many times in a row. `@sdk.tool` calls this; frameworks may too."""
        state = self._budget
        if state is None or state.budget.max_repeats is None:
            return
        key: tuple[str, object]
        try:
            key = (name, repr(arguments))
        except Exception:  # an argument whose repr raises: such calls never count as repeats
            key = (name, object())
        with self._lock:
            state.note_tool_call(key)

    def _report_budget(self, error: BudgetExceeded, state: BudgetState) -> None:
        try:
            self.span.add_event(
                "session.budget_exceeded",
                {
                    "session.budget.limit": error.limit,
                    "session.budget.maximum": error.maximum,
                    "session.budget.used": error.used,
                    "session.budget.on_exceed": state.budget.on_exceed,
                },
            )
            self.span.set_attribute(SESSION_BUDGET_EXCEEDED, list(state.exceeded))
        except Exception as exc:
            internal_error("session budget event", exc)
        callbacks = self.config.on_budget_exceeded if self.config is not None else ()
        for callback in callbacks:
            try:
                callback(self, error)
            except Exception as exc:
                STATE.counters.callback_errors.add()
                warn_once(
                    f"callback-on_budget_exceeded-{type(exc).__name__}",
                    "sessiontrace: an on_budget_exceeded callback raised %s: %s (further errors are "
                    "counted in sdk.stats().callback_errors)",
                    type(exc).__name__,
                    exc,
                )

    @property
    def span_id(self) -> str:
        """The id of this segment's root span, as 16 hex digits."""
        return f"{self.span.get_span_context().span_id:016x}"

    @property
    def duration(self) -> float:
        """Seconds from start to end (or to now while running)."""
        end = self._ended_ns if self._ended_ns is not None else time.time_ns()
        return (end - self.started_ns) / 1e9

    @property
    def idle(self) -> float:
        """Seconds since a span last started in this session (or since it started)."""
        return (STATE.clock.monotonic_ns() - self.last_active_ns) / 1e9

    @property
    def ended(self) -> bool:
        """True once the session has ended."""
        return self._state is not SessionState.RUNNING

    def set_tag(self, tag: str) -> None:
        """Add a tag (tags are a set: adding one twice keeps one)."""
        tags = _check_tags([tag])
        with self._lock:
            if tags[0] in self._tags:
                return
            self._tags = (*self._tags, *tags)
        try:
            self.span.set_attribute(SESSION_TAGS, list(self._tags))
        except Exception as exc:
            internal_error("Session.set_tag", exc)

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute on the session's span; any value is accepted (see docs/concepts.md)."""
        try:
            self.span.set_attribute(
                str(key), to_attribute_value(value, runtime.current().attribute_max_length)
            )
        except Exception as exc:
            internal_error("Session.set_attribute", exc)

    def begin_step(self, name: str, attributes: Mapping[str, Any] | None = None) -> Span:
        """Start a child span of this session that is the parent of orphan spans until `end_step()`.

        For runtimes that run user code in steps with no context to attach (a notebook kernel's
        cells): spans that would join the auto session for lack of a parent join its current step
        instead. A step still open is ended first. Returns the step's span.
        """
        self.end_step()
        rt = runtime.current()
        if not rt.enabled or self.ended:
            return trace.INVALID_SPAN
        try:
            span = rt.tracer.start_span(str(name), context=trace.set_span_in_context(self.span, Context()))
            write_attributes(span, to_attributes(attributes, rt.attribute_max_length))
        except Exception as exc:
            internal_error("Session.begin_step", exc)
            return trace.INVALID_SPAN
        self._step = span
        return span

    def end_step(self, error: BaseException | None = None) -> None:
        """End the current step (recording `error` on it, if given). Without a step, nothing happens."""
        span, self._step = self._step, None
        if span is not None:
            end_span(span, error)

    @property
    def step(self) -> Span | None:
        """The open step's span (see `begin_step`), if any."""
        return self._step

    def use(self) -> AbstractContextManager[Session]:
        """Make this session current in this thread or task for a ``with`` block, without ending it there.

        For code that runs on behalf of a session started elsewhere with no context to carry it (a
        notebook kernel's cells, whose ContextVars need not survive from one cell to the next). A
        session that has ended is not made current. Leaving the block restores what was current.
        """
        return _SessionUse(self)

    @staticmethod
    def last_started(thread_id: int | None = None) -> Session | None:
        """The running session that `start_session()` most recently made current in this thread.

        `thread_id` (a `threading.get_ident()` value) asks about another thread. With `use()`, this
        lets a host that runs user code in steps whose context does not carry over (a notebook
        kernel's cells) keep such a session current from one step to the next.
        """
        ident = threading.get_ident() if thread_id is None else thread_id
        with STATE.registry.lock:
            started = list(STATE.registry.started.get(ident, ()))
        for session in reversed(started):
            if session._state is SessionState.RUNNING:
                return session
        return None

    def end(self, state: SessionState | str = SessionState.SUCCESS, reason: str | None = None) -> None:
        """End the session as `success`, `fail` or `indeterminate`. Ending an ended session does nothing."""
        parsed = _parse_state(state)
        if self._pid != os.getpid():
            # A forked child's copy of a session of its parent: the parent ends and exports it.
            self._state = parsed
            _registry_remove(self)
            return
        with self._lock:
            if self._state is not SessionState.RUNNING:
                return
            self._state = parsed
            self._reason = reason
            self._ended_ns = time.time_ns()
        _registry_remove(self)
        STATE.counters.sessions_ended.add()
        self.end_step()
        rt = runtime.current()
        try:
            final: dict[str, Any] = {SESSION_STATE: parsed.value}
            if reason:
                final[SESSION_END_REASON] = to_attribute_value(str(reason), rt.attribute_max_length)
            calls, tokens_in, tokens_out, cost, errors = self._usage
            if calls:
                final[SESSION_LLM_CALLS] = calls
                final[SESSION_LLM_INPUT_TOKENS] = tokens_in
                final[SESSION_LLM_OUTPUT_TOKENS] = tokens_out
                final[SESSION_LLM_COST] = round(cost, 10)
            if errors:
                final[SESSION_ERRORS] = errors
            write_attributes(self.span, final)
            if parsed is SessionState.FAIL:
                self.span.set_status(Status(StatusCode.ERROR, reason))
            self.span.end(self._ended_ns)
        except Exception as exc:
            internal_error("Session.end", exc)
        activation, self._activation = self._activation, None
        if activation is not None:
            if STATE.current_session.get() is self:
                activation.undo()
            else:  # the context start_session() made it current in cannot be reached from here
                self._ended_elsewhere = True
        if rt.session_listeners:
            rt.session_ended(self)
        if rt.summary_wanted(self._show_summary):
            try:
                print_summary(self.summary())
            except Exception as exc:
                internal_error("session summary", exc)

    def _end_for(self, exc: BaseException | None) -> None:
        """End the session as its `with` block or decorated call finished (with `exc` escaping, if any)."""
        if exc is None:
            self.end(SessionState.SUCCESS)
            return
        if isinstance(exc, Exception):
            try:
                record_error(self.span, exc)
            except Exception as err:
                internal_error("Session.record_exception", err)
            self.end(SessionState.FAIL, type(exc).__name__)
        elif isinstance(exc, KeyboardInterrupt):
            self.end(SessionState.INDETERMINATE, "interrupted")
        elif isinstance(exc, GeneratorExit):
            self.end(SessionState.INDETERMINATE, "closed")
        elif isinstance(exc, SystemExit):
            ok = exc.code is None or exc.code == 0
            self.end(SessionState.SUCCESS if ok else SessionState.FAIL, None if ok else f"exit {exc.code}")
        else:  # asyncio.CancelledError and other BaseExceptions
            self.end(SessionState.INDETERMINATE, type(exc).__name__)

    def summary(self) -> SessionSummary:
        """The session's summary now (state, duration, span count and LLM usage so far); its name and
        reason are scrubbed of secrets, as everything the SDK prints."""
        usage = self.usage
        scrubber = scrubber_for(self.config)
        return SessionSummary(
            self.id,
            scrubber.text(self.name),
            self._state.value,
            self.duration,
            usage.spans,
            scrubber.text(self._reason) if self._reason is not None else None,
            usage.llm_calls,
            usage.input_tokens,
            usage.output_tokens,
            usage.cost_usd,
            usage.errors,
        )

    def _stored_identity(self) -> tuple[str, str | None, tuple[str, ...], str | None]:
        """(name, user id, tags, reason) as the store keeps them (see `stored_text`)."""
        config = self.config
        user = stored_text(self.user_id, config) if self.user_id is not None else None
        reason = stored_text(self._reason, config) if self._reason is not None else None
        return stored_text(self.name, config), user, tuple(stored_text(t, config) for t in self._tags), reason

    def _store_record(self) -> SessionRecord:
        """This session as a new store record with one segment, as it is now (the store writer calls this)."""
        from sdk.store import Segment, SessionRecord, owner_id

        ended = self._ended_ns
        name, user, tags, reason = self._stored_identity()
        return SessionRecord(
            id=self.id,
            name=name,
            trace_id=self.trace_id,
            user_id=user,
            tags=tags,
            segments=(
                Segment(
                    span_id=self.span_id,
                    number=self.segment,
                    owner=owner_id(),
                    started=self.started_ns / 1e9,
                    last_activity=ended / 1e9 if ended is not None else self._last_activity_wall(),
                    state=self._state.value,
                    reason=reason,
                    ended=ended / 1e9 if ended is not None else None,
                    usage=self.usage,
                ),
            ),
        )

    def _store_update(self) -> SegmentUpdate:
        """This segment's state and counters now (the store writer calls this)."""
        from sdk.store import SegmentUpdate

        ended = self._ended_ns
        name, user, tags, reason = self._stored_identity()
        return SegmentUpdate(
            session_id=self.id,
            span_id=self.span_id,
            last_activity=ended / 1e9 if ended is not None else self._last_activity_wall(),
            usage=self.usage,
            state=self._state.value,
            reason=reason,
            ended=ended / 1e9 if ended is not None else None,
            name=name,
            user_id=user,
            tags=tags,
        )

    def _last_activity_wall(self) -> float:
        return time.time() - (STATE.clock.monotonic_ns() - self.last_active_ns) / 1e9

    def __repr__(self) -> str:
        return f"<Session {self.name!r} id={self.id} state={self._state.value}>"


class _SessionUse(AbstractContextManager[Session]):
    """What `Session.use()` returns: makes the session current on entry, restores the previous on exit."""

    __slots__ = ("_activation", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._activation: _Activation | None = None

    def __enter__(self) -> Session:
        if not self._session.ended and self._activation is None:
            self._activation = _Activation(self._session)
        return self._session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        activation, self._activation = self._activation, None
        if activation is not None:
            activation.undo()


def _registry_remove(session: Session) -> None:
    if STATE.registry.remove(session):
        _tell_auto_listeners(False)


def _tell_auto_listeners(running: bool) -> None:
    """Tell the auto session's listeners (the provider's tracers) that it started or ended."""
    for listener in STATE.registry.auto_listeners:
        try:
            listener(running)
        except Exception as exc:
            internal_error("auto session listener", exc)


class _CurrentSessionSpan(trace.Span):
    """The session's span as the current span of a context the session was made current in.

    It is the session's span in all but identity (every call is passed on), except for a
    `start_session()` session ended from another thread (the idle reaper, `end_session(id)`):
    only the context that started it could undo its activation, so that context still holds it.
    Then it is no parent any more, and that context starts new traces again instead of adding
    spans under an ended session for good. (A session ended where it was made current is undone
    there; work handed off earlier keeps it as a parent and joins the session during
    `ended_session_grace`.)
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_span_context(self) -> trace.SpanContext:
        session = self._session
        if session._ended_elsewhere:
            return trace.INVALID_SPAN_CONTEXT
        return session.span.get_span_context()

    def is_recording(self) -> bool:
        return not self._session._ended_elsewhere and self._session.span.is_recording()

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._session.span.set_attributes(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self._session.span.set_attribute(key, value)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self._session.span.add_event(name, attributes, timestamp)

    def add_link(self, context: trace.SpanContext, attributes: Any = None) -> None:
        self._session.span.add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._session.span.update_name(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._session.span.set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._session.span.record_exception(exception, attributes, timestamp, escaped)

    def end(self, end_time: int | None = None) -> None:
        """Ending the current span here ends nothing: a session ends through `Session.end()`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session.span, name)

    def __repr__(self) -> str:
        return f"<current span of {self._session!r}>"


class _Activation:
    """Tokens that made a session current in one context, and how to undo that."""

    __slots__ = ("otel_token", "previous", "previous_ctx", "session", "session_token")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.previous = STATE.current_session.get()
        self.previous_ctx = otel_context.get_current()
        self.session_token = STATE.current_session.set(session)
        current = _CurrentSessionSpan(session)
        self.otel_token = otel_context.attach(trace.set_span_in_context(current, self.previous_ctx))
        session._activated = self

    def undo(self) -> None:
        detach_quietly(self.otel_token)
        try:
            STATE.current_session.reset(self.session_token)
        except ValueError:  # undone from another context than the one that made it current
            STATE.current_session.set(self.previous)
        if self.session._activated is self:
            self.session._activated = None
        restored = STATE.current_session.get()
        if restored is not None and restored._state is not SessionState.RUNNING:
            self._skip_ended(restored)

    def _skip_ended(self, restored: Session) -> None:
        """Sessions ended out of order (a, b started; a ended, then b): never restore an ended one.

        Go back to the nearest running session and the context it was made current in.
        """
        session: Session | None = restored
        ctx = self.previous_ctx
        while session is not None and session._state is not SessionState.RUNNING:
            record = session._activated
            if record is None:
                session = None
                ctx = trace.set_span_in_context(trace.INVALID_SPAN, ctx)
                break
            session, ctx = record.previous, record.previous_ctx
        STATE.current_session.set(session)
        otel_context.attach(ctx)


def stored_text(text: str, config: Config | None) -> str:
    """Text as a store record keeps it: cut to the attribute length limit, scrubbed of secrets."""
    value = to_attribute_value(text, config.attribute_max_length if config is not None else 4096)
    return scrubber_for(config).text(value if isinstance(value, str) else str(value))


def record_error(span: Span, error: BaseException) -> None:
    """Record an exception on a span: the `exception` event, `error.type` and an ERROR status.

    Works for exceptions whose ``str()`` raises too.
    """
    text = to_attribute_value(error, 4096)
    session = STATE.registry.by_trace.get(span.get_span_context().trace_id)
    if session is not None:
        session._add_error()
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {text}"))
    try:
        span.record_exception(error, escaped=True)
    except Exception:  # the exception's own __str__ raised: record what could be read of it
        span.add_event(
            "exception",
            {
                "exception.type": type(error).__qualname__,
                "exception.message": text,
                "exception.escaped": True,
            },
        )


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End a span the SDK started, recording `error` on it first; the span ends whatever happens."""
    try:
        if error is not None:
            record_error(span, error)
    except Exception as exc:
        internal_error("recording an exception", exc)
    finally:
        try:
            span.end()
        except Exception as exc:
            internal_error("span end", exc)


def detach_quietly(token: object) -> None:
    """Detach an OpenTelemetry context token; a token from another context is ignored, not logged.

    ``opentelemetry.context.detach`` logs "Failed to detach context" in that case, which happens
    legitimately when a generator or async generator is closed from another task.
    """
    try:
        otel_context._RUNTIME_CONTEXT.detach(token)  # type: ignore[arg-type]
    except ValueError:
        pass
    except Exception as exc:
        internal_error("context detach", exc)


def current_session() -> Session | None:
    """The session of this context if it is running, else the auto session, else None."""
    session = STATE.current_session.get()
    if session is not None and session._state is SessionState.RUNNING:
        return session
    auto = STATE.registry.auto
    return auto if auto is not None and auto._state is SessionState.RUNNING else None


def auto_session() -> Session | None:
    """The process's auto session, if one is running."""
    return STATE.registry.auto


def session_for_trace(trace_id: int) -> Session | None:
    """The open session that owns this trace."""
    return STATE.registry.by_trace.get(trace_id)


def set_ended_session_grace(seconds: float) -> None:
    """How long an ended session still claims new spans of its trace (the `ended_session_grace` setting)."""
    with STATE.registry.lock:
        STATE.registry.grace = seconds
        if seconds <= 0:
            STATE.registry.ended_traces.clear()


def open_sessions() -> list[Session]:
    """Every open session of the process, the auto session included."""
    return STATE.registry.open_sessions()


def _start(
    name: str | None,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    tags: Iterable[str] | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | Context | None = None,
    resume: bool = False,
    auto: bool = False,
    peer: str | None = None,
    budget: Budget | None = None,
) -> Session:
    rt = runtime.current()
    start_context = _ROOT_CONTEXT
    continued = False
    inbound: _Inbound | None = None
    if parent is not None:
        inbound = _remote_parent(parent, peer)
        start_context = inbound.context
        continued = inbound.adopted is not None
        if session_id is None:
            session_id = inbound.adopted
    config = rt.config
    if overrides:
        if config is None:
            raise RuntimeError("per-session overrides need sdk.init() first")
        config = config.with_overrides(overrides)
    sid = _new_session_id() if session_id is None else _check_id(session_id)
    if name is None:
        name = "session"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"session name must be a non-empty string, got {name!r}")
    if user_id is not None and not isinstance(user_id, str):
        raise ValueError(f"user_id must be a string, got {user_id!r}")
    tag_tuple = _check_tags(tags)
    outer = None if auto or parent is not None else current_session()
    if outer is not None and outer.auto:
        outer = None
    max_length = config.attribute_max_length if config else 4096

    if resume and session_id is None:
        raise ValueError("resume=True needs the session_id of the session to resume")
    if not continued and not resume and sid in STATE.registry.by_id:
        raise ValueError(
            f"a session with id {sid!r} is already open in this process; end it first or choose another id"
        )
    span: Span = trace.INVALID_SPAN
    started_ns = time.time_ns()
    segment = 1
    forced: tuple[int, int] | None = None
    previous: Link | None = None
    prior: Spent | None = None
    if resume and rt.enabled:
        stored = _begin_segment(rt, sid, name, user_id, tag_tuple, started_ns)
        if stored is not None:
            prior = _spent_by(stored.segments[:-1])
            latest = stored.segments[-1]
            segment = latest.number
            forced = (int(stored.trace_id, 16), int(latest.span_id, 16))
            if len(stored.segments) > 1:
                before = stored.segments[-2]
                previous = Link(
                    trace.SpanContext(
                        int(stored.trace_id, 16), int(before.span_id, 16), True, trace.TraceFlags(1)
                    ),
                    {SESSION_ID: sid, SESSION_SEGMENT: before.number},
                )
    if rt.enabled:
        try:
            attrs = to_attributes(attributes, max_length)
            attrs[SESSION_ID] = sid
            attrs[SESSION_NAME] = to_attribute_value(name, max_length)
            attrs[SESSION_STATE] = "running"
            attrs[SPAN_KIND] = "session"
            if tag_tuple:
                attrs[SESSION_TAGS] = tuple(to_attribute_value(list(tag_tuple), max_length))  # type: ignore[arg-type]
            if user_id is not None:
                attrs[USER_ID] = to_attribute_value(user_id, max_length)
            if auto:
                attrs[SESSION_AUTO] = True
            if continued:
                attrs[SESSION_CONTINUED] = True
            elif inbound is not None and inbound.claimed is not None:
                attrs[INBOUND_SESSION_ID] = inbound.claimed
            if forced is not None:
                attrs[SESSION_SEGMENT] = segment
                attrs[SESSION_RESUMED] = previous is not None
            links = []
            if outer is not None:
                attrs[SESSION_PARENT_ID] = outer.id
                links.append(Link(outer.span.get_span_context(), {SESSION_ID: outer.id}))
            if previous is not None:
                links.append(previous)
            if inbound is not None and inbound.link is not None:
                links.append(inbound.link)
            if forced is not None:
                span = _start_with_ids(rt, forced, name, start_context, links, started_ns)
            else:
                span = rt.tracer.start_span(name, context=start_context, links=links, start_time=started_ns)
            write_attributes(span, attrs)
        except Exception as exc:
            internal_error("session start", exc)
            span = trace.INVALID_SPAN
    session = Session(
        session_id=sid,
        name=name,
        user_id=user_id,
        tags=tag_tuple,
        span=span,
        config=config,
        parent_id=outer.id if outer is not None else None,
        auto=auto,
        started_ns=started_ns,
        segment=segment,
        continued=continued,
    )
    if budget is None and config is not None:
        budget = config.session_budget
    if budget is not None and budget.limited:
        session._budget = BudgetState(budget, prior)
    limit = config.max_open_sessions if config else DEFAULT_MAX_OPEN_SESSIONS
    evicted = STATE.registry.add(
        session, continued=continued or resume, limit=limit
    )  # ValueError: duplicate id
    if session.auto:
        _tell_auto_listeners(True)
    STATE.counters.sessions_started.add()
    if rt.session_listeners:
        # A resume whose claim failed (the store is down) is not written later either: a plain
        # write would replace the stored record, and its earlier segments with it. Nor is a
        # continued session, whose record is its owner's.
        rt.session_started(session, stored=resume or continued)
    if evicted:
        warn_once(
            "max-open-sessions",
            "sessiontrace: more than max_open_sessions=%d sessions open; the least recently active "
            "are ended as indeterminate (reason max_open_sessions)",
            limit,
        )
        for old in evicted:
            old.end(SessionState.INDETERMINATE, "max_open_sessions")
    return session


def _spent_by(segments: Iterable[Segment]) -> Spent:
    """What stored segments used, in a budget's terms."""
    total = Spent()
    for segment in segments:
        usage = segment.usage
        end = segment.ended if segment.ended is not None else segment.last_activity
        total = total.plus(
            Spent(
                usage.cost_usd,
                usage.input_tokens + usage.output_tokens,
                usage.llm_calls,
                max(end - segment.started, 0.0),
                usage.errors,
            )
        )
    return total


def _begin_segment(
    rt: runtime.Runtime, sid: str, name: str, user_id: str | None, tags: tuple[str, ...], started_ns: int
) -> SessionRecord | None:
    """Claim the next segment of session `sid` in the store (or create it there): None without a store."""
    store = rt.store
    if store is None:
        warn_once(
            "resume-without-store",
            "sessiontrace: start_session(resume=True) with session_store=none: nothing to resume "
            "from, so a new session with the given id starts",
        )
        return None
    from sdk.store import Segment, SessionRecord, owner_id

    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    now = started_ns / 1e9
    config = rt.config
    candidate = SessionRecord(
        id=sid,
        name=stored_text(name, config),
        trace_id=f"{trace_id:032x}",
        user_id=stored_text(user_id, config) if user_id is not None else None,
        tags=tuple(stored_text(tag, config) for tag in tags),
        segments=(Segment(f"{span_id:016x}", 1, owner_id(), now, now),),
    )
    stored = rt.store_call(lambda: store.begin_segment(candidate, resume=True))
    if stored is None or not stored.segments or stored.segments[-1].span_id != candidate.segments[0].span_id:
        return None
    return stored


class SegmentIds(IdGenerator):
    """The SDK tracer's id generator: the wrapped one's ids, except for a resumed segment's span.

    A resumed segment's span must have the stored trace id and the span id claimed in the store
    before it started; `forced()` hands those to the next span this thread starts.
    """

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._local = threading.local()
        self.forcing = 0

    def generate_span_id(self) -> int:
        if self.forcing:
            span_id = getattr(self._local, "span_id", None)
            if span_id is not None:
                self._local.span_id = None
                return int(span_id)
        return self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        if self.forcing:
            trace_id = getattr(self._local, "trace_id", None)
            if trace_id is not None:
                self._local.trace_id = None
                return int(trace_id)
        return self.inner.generate_trace_id()

    def start_span(
        self,
        tracer: trace.Tracer,
        ids: tuple[int, int],
        name: str,
        context: Context,
        links: list[Link],
        start_time: int,
    ) -> Span:
        """Start a root span with exactly these (trace id, span id)."""
        self.forcing += 1
        self._local.trace_id, self._local.span_id = ids
        try:
            return tracer.start_span(name, context=context, links=links, start_time=start_time)
        finally:
            self._local.trace_id = self._local.span_id = None
            self.forcing -= 1


def _start_with_ids(
    rt: runtime.Runtime, ids: tuple[int, int], name: str, context: Context, links: list[Link], start: int
) -> Span:
    generator = getattr(rt.tracer, "id_generator", None)
    if isinstance(generator, SegmentIds):
        return generator.start_span(rt.tracer, ids, name, context, links, start)
    # Not an OpenTelemetry SDK tracer: continue the stored trace as a child of the claimed span id.
    remote = trace.NonRecordingSpan(trace.SpanContext(ids[0], ids[1], True, trace.TraceFlags(1)))
    return rt.tracer.start_span(
        name, context=trace.set_span_in_context(remote, context), links=links, start_time=start
    )


class _Inbound(NamedTuple):
    """What `parent=` resolved to: where the session starts, and what the caller claimed."""

    context: Context
    adopted: str | None
    """The caller's session id, when trusted: the session continues it."""
    claimed: str | None
    """A session id the caller sent and that was not adopted (recorded, never used)."""
    link: Link | None
    """The caller's span, linked from a session that does not continue the caller's."""


def _remote_parent(parent: object, peer: str | None) -> _Inbound:
    """Resolve `parent=` (a Context, or W3C headers as a mapping or anything with ``items()``, such
    as the headers object http.server gives a handler).

    A trusted inbound ``session.id`` (see `accept_session_from`) is continued: same id, the
    session's span a child of the caller's. Otherwise the session is a new trace of its own, linked
    to the caller's span; the untrusted id is only recorded.
    """
    if isinstance(parent, Context):
        ctx = parent
    else:
        items = getattr(parent, "items", None)
        if not callable(items):
            raise TypeError(
                "parent must be W3C headers (a mapping) or an OpenTelemetry Context, "
                f"not {type(parent).__name__}"
            )
        from sdk.context import extract_w3c

        ctx = extract_w3c({str(k): str(v) for k, v in items()})
    ctx, claimed, adopted = inbound_session(ctx, peer)
    if adopted is None:
        adopted = otel_context.get_value(REMOTE_SESSION_KEY, ctx)  # type: ignore[assignment]
    if isinstance(adopted, str):
        return _Inbound(otel_context.set_value(ROOT_KEY, True, ctx), adopted, None, None)
    remote = trace.get_current_span(ctx).get_span_context()
    link = Link(remote, {"sessiontrace.link": "inbound"}) if remote.is_valid else None
    return _Inbound(_ROOT_CONTEXT, None, claimed, link)


def inbound_session(
    ctx: Context, peer: str | None, *, trusted: bool = False
) -> tuple[Context, str | None, str | None]:
    """Take the ``session.id`` claim out of `ctx`'s W3C baggage and decide whether to adopt it.

    Returns (`ctx` without the baggage entry and, when adopted, with `REMOTE_SESSION_KEY` set; the
    claimed id when valid; the adopted id or None). `trusted` adopts without asking the
    `accept_session_from` setting (work the SDK handed to another process itself). An id that is
    not a valid session id (too long, unprintable) is neither adopted nor returned.
    """
    raw = baggage.get_baggage(SESSION_ID, ctx)
    if raw is None:
        return ctx, None, None
    ctx = baggage.remove_baggage(SESSION_ID, ctx)
    claimed = raw if isinstance(raw, str) and _valid_id(raw) else None
    if claimed is None:
        STATE.counters.inbound_rejected.add()
        return ctx, None, None
    if trusted or _accepts(claimed, peer):
        return otel_context.set_value(REMOTE_SESSION_KEY, claimed, ctx), claimed, claimed
    STATE.counters.inbound_rejected.add()
    return ctx, claimed, None


def _valid_id(session_id: str) -> bool:
    return 0 < len(session_id) <= MAX_ID_LENGTH and session_id.isprintable() and bool(session_id.strip())


def _accepts(session_id: str, peer: str | None) -> bool:
    """Whether the `accept_session_from` setting trusts this inbound id from this peer."""
    config = runtime.current().config
    if config is None:
        return False
    rule = config.accept_session_from
    if isinstance(rule, TrustRules):
        return rule.allows_peer(peer)
    try:
        return rule(session_id, peer) is True
    except Exception as exc:
        STATE.counters.callback_errors.add()
        warn_once(
            f"accept-session-from-{type(exc).__name__}",
            "sessiontrace: the accept_session_from callable raised %s: %s (the inbound session id "
            "is not adopted; further errors are counted in sdk.stats().callback_errors)",
            type(exc).__name__,
            exc,
        )
        return False


def start_session(
    name: str | None = None,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    tags: Iterable[str] | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | Context | None = None,
    resume: bool = False,
    peer: str | None = None,
    budget: Budget | None = None,
) -> Session:
    """Start a session and make it current in this thread or task until it ends.

    Prefer ``with sdk.session(...)``, which also ends the session. `overrides` sets per-session
    settings (those marked per-session in docs/configuration.md).

    ``resume=True`` with a `session_id` continues that session from the session store (after a
    restart, in another process, or after it ended): a new segment in the same trace, linked to
    the previous one. An id the store does not know (or has expired) starts a new session with
    that id. See docs/sessions.md.
    """
    session = _start(
        name,
        session_id=session_id,
        user_id=user_id,
        tags=tags,
        attributes=attributes,
        overrides=overrides,
        parent=parent,
        resume=resume,
        peer=peer,
        budget=budget,
    )
    session._activation = _Activation(session)
    if not session.ended:
        ident = threading.get_ident()
        with STATE.registry.lock:
            session.started_thread = ident
            STATE.registry.started.setdefault(ident, []).append(session)
    return session


def end_session(
    session: Session | str | None = None,
    state: SessionState | str = SessionState.SUCCESS,
    reason: str | None = None,
) -> None:
    """End a session (by object or id; default: the current one). Ending an ended session does nothing.

    With no session to end, this warns once (SessionWarning) and returns; it never raises for that.
    """
    _parse_state(state)
    target: Session | None
    if session is None:
        target = current_session()
        if target is None:
            if STATE.registry.auto_was_ended:
                return
            warnings.warn(
                "sdk.end_session(): there is no current session to end (none was started in this "
                "thread or task, and no auto session is running)",
                SessionWarning,
                stacklevel=2,
            )
            return
    elif isinstance(session, str):
        target = STATE.registry.by_id.get(session)
        if target is None:
            if session not in STATE.registry.recently_ended and not end_stored_session(
                session, state, reason
            ):
                warnings.warn(
                    f"sdk.end_session(): no open session has id {session!r} (nor a running one in the "
                    "session store)",
                    SessionWarning,
                    stacklevel=2,
                )
            return
    elif isinstance(session, Session):
        target = session
    else:
        raise TypeError(f"end_session() takes a Session or a session id, not {type(session).__name__}")
    target.end(state, reason)


def end_stored_session(
    session_id: str, state: SessionState | str = SessionState.INDETERMINATE, reason: str | None = None
) -> bool:
    """End a session that runs in the store but not in this process (its process died, say).

    The store's latest segment is marked ended as of its last recorded activity, and that
    segment's root span, which its process never exported, is exported now (same trace and span
    id, from its start to its last activity) with the state and reason, so the backend's trace
    has its root. False when the store has no running segment for the id.
    """
    parsed = _parse_state(state)
    rt = runtime.current()
    store = rt.store
    if store is None:
        return False
    from sdk.store import end_latest_segment

    record = rt.store_call(lambda: store.get(session_id))
    if record is None or not record.segments or record.state != "running":
        return False
    reason_text = reason or "ended from another process"
    if not rt.store_call(lambda: end_latest_segment(store, record, parsed.value, reason_text)):
        return False
    latest = record.latest
    if rt.enabled:
        try:
            attrs: dict[str, Any] = {
                SESSION_ID: record.id,
                SESSION_NAME: record.name,
                SESSION_STATE: parsed.value,
                SESSION_END_REASON: reason_text,
                SESSION_SEGMENT: latest.number,
                SPAN_KIND: "session",
            }
            if record.user_id is not None:
                attrs[USER_ID] = record.user_id
            if record.tags:
                attrs[SESSION_TAGS] = list(record.tags)
            ids = (int(record.trace_id, 16), int(latest.span_id, 16))
            span = _start_with_ids(rt, ids, record.name, _ROOT_CONTEXT, [], int(latest.started * 1e9))
            write_attributes(span, attrs)
            if parsed is SessionState.FAIL:
                span.set_status(Status(StatusCode.ERROR, reason_text))
            span.end(int(max(latest.last_activity, latest.started) * 1e9))
        except Exception as exc:
            internal_error("end_stored_session", exc)
    return True


SCORE_SPAN = "session.score"
ScoreValue = float | int | bool | str


def score(
    session: Session | str,
    name: str,
    value: ScoreValue,
    *,
    comment: str | None = None,
    source: str = "human",
) -> Score:
    """Score a session — a thumbs-up from its user, an evaluator's grade — from any process, before
    or after the session ended.

    `session` is a `Session` or a session id (open in this process, or in the session store). The
    score is exported as a ``session.score`` span in the session's trace (``session.score.name``,
    ``.value``, ``.comment``, ``.source``), kept in the store's record (``sessions show``), and
    returned. An id that is neither open here nor in the store is a ValueError; so are a name that
    is not a short printable string and a value that is not a number, a bool or a string.
    """
    from sdk.store import Score, add_score

    name = _check_score_text("name", name)
    if isinstance(value, str):
        value = _check_score_text("value", value)
    elif not isinstance(value, (bool, int, float)) or (isinstance(value, float) and value != value):
        raise ValueError(f"sdk.score(): value must be a number, a bool or a string, got {value!r}")
    if comment is not None and not isinstance(comment, str):
        raise ValueError(f"sdk.score(): comment must be a string, got {comment!r}")
    source = _check_score_text("source", source)
    rt = runtime.current()
    session_id, trace_id, span_id = _score_target(rt, session)
    given = Score(name, value, comment, source, time.time())
    store = rt.store
    if store is not None:
        rt.store_call(lambda: add_score(store, session_id, given))
    if rt.enabled:
        _export_score(rt, session_id, trace_id, span_id, given)
    return given


def _check_score_text(what: str, text: object) -> str:
    if not isinstance(text, str) or not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise ValueError(
            f"sdk.score(): {what} must be a non-empty printable string of at most {MAX_ID_LENGTH} "
            f"characters, got {text!r:.60}"
        )
    return text


def _score_target(rt: runtime.Runtime, session: Session | str) -> tuple[str, int, int]:
    """(session id, trace id, root span id of its latest segment) of the session to score."""
    if isinstance(session, Session):
        return session.id, session.trace_id_int, session.span.get_span_context().span_id
    if not isinstance(session, str):
        raise TypeError(f"sdk.score() takes a Session or a session id, not {type(session).__name__}")
    open_here = STATE.registry.by_id.get(session)
    if open_here is not None:
        return open_here.id, open_here.trace_id_int, open_here.span.get_span_context().span_id
    store = rt.store
    record = rt.store_call(lambda: store.get(session)) if store is not None else None
    if record is None or not record.segments:
        where = (
            f"the session store ({store.description})"
            if store is not None
            else "a session store (none is configured)"
        )
        raise ValueError(
            f"sdk.score(): no session has id {session!r}: none is open in this process, none is in {where}"
        )
    return record.id, int(record.trace_id, 16), int(record.latest.span_id, 16)


def _export_score(rt: runtime.Runtime, session_id: str, trace_id: int, span_id: int, given: Score) -> None:
    try:
        parent = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(1)))
        context = otel_context.set_value(ROOT_KEY, True, trace.set_span_in_context(parent, Context()))
        now = time.time_ns()
        span = rt.tracer.start_span(SCORE_SPAN, context=context, start_time=now)
        attributes: dict[str, Any] = {
            SESSION_ID: session_id,
            "session.score.name": given.name,
            "session.score.value": given.value,
            "session.score.source": given.source,
            SPAN_KIND: "score",
        }
        if given.comment is not None:
            attributes["session.score.comment"] = to_attribute_value(given.comment, rt.attribute_max_length)
        write_attributes(span, attributes)
        span.end(now)
    except Exception as exc:
        internal_error("sdk.score span", exc)


def start_auto_session(name: str) -> Session:
    """Start the process's auto session (lifecycle calls this; there is at most one)."""
    existing = STATE.registry.auto
    if existing is not None and not existing.ended:
        return existing
    return _start(name, auto=True)


def end_open_sessions(auto_state: SessionState, auto_reason: str | None, reason: str) -> None:
    """End every open session: explicit ones as indeterminate with `reason`, the auto one as `auto_state`."""
    for session in open_sessions():
        if session.auto:
            session.end(auto_state, auto_reason)
        else:
            session.end(SessionState.INDETERMINATE, reason)


_entered: contextvars.ContextVar[tuple[tuple[SessionScope, _Activation], ...]] = contextvars.ContextVar(
    "sessiontrace_entered_scopes", default=()
)


class SessionScope:
    """What `sdk.session(...)` returns: a context manager (sync and async) and a decorator.

    As a context manager it starts a session on entry and ends it on exit (`fail` when an exception
    escapes, which is recorded and re-raised unchanged). As a decorator, each call of the function
    runs in a new session.
    """

    def __init__(self, name: str | None, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options

    def start(self, default_name: str | None = None) -> Session:
        """Start a new session with this scope's parameters (not made current)."""
        return _start(self.name or default_name, **self.options)

    def __enter__(self) -> Session:
        session = self.start()
        _entered.set((*_entered.get(), (self, _Activation(session))))
        return session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # The entries live in this context (thread or task), so one scope object entered by several
        # tasks at once ends each task's own session.
        entered = _entered.get()
        index = len(entered) - 1
        while index >= 0 and entered[index][0] is not self:
            index -= 1
        if index < 0:
            return
        activation = entered[index][1]
        _entered.set(entered[:index] + entered[index + 1 :])
        activation.undo()
        activation.session._end_for(exc)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        from sdk.decorators import wrap_in_session

        return wrap_in_session(fn, self)


@overload
def session(name: F) -> F: ...


@overload
def session(
    name: str | None = None,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    tags: Iterable[str] | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | Context | None = None,
    resume: bool = False,
    peer: str | None = None,
    budget: Budget | None = None,
) -> SessionScope: ...


def session(
    name: str | Callable[..., Any] | None = None,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    tags: Iterable[str] | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | Context | None = None,
    resume: bool = False,
    peer: str | None = None,
    budget: Budget | None = None,
) -> Any:
    """A session as a context manager (``with`` / ``async with``) or a decorator.

    ``with sdk.session("refund-flow", user_id="u-42", tags=["prod"]) as s:`` — every span created
    inside, in this thread or task and in work it hands off with context, belongs to `s`. A
    session opened inside another is its own trace, linked to the outer one (see docs/concepts.md).

    ``parent=`` W3C headers (``traceparent`` + ``baggage`` from `sdk.context.inject`) or an
    OpenTelemetry Context continues a session of another process or service — same
    ``session.id``, spans in the caller's trace — when the `accept_session_from` setting trusts
    the caller (`peer`: its IP address, for network rules). An untrusted caller's session id is
    never adopted: the session is a new trace, linked to the caller's span (see docs/security.md).

    ``resume=True`` with a `session_id` continues a stored session (see `start_session`).

    ``budget=sdk.Budget(...)`` limits what the session may spend (default: the `session_budget`
    setting): see `Budget` and docs/budgets.md.
    """
    options: dict[str, Any] = {
        "resume": resume,
        "session_id": session_id,
        "user_id": user_id,
        "tags": tags,
        "attributes": attributes,
        "overrides": overrides,
        "parent": parent,
        "peer": peer,
        "budget": budget,
    }
    if callable(name):
        return SessionScope(None, options)(name)
    return SessionScope(name, options)


class SessionInfo(NamedTuple):
    """One open session, as `sdk.sessions()` lists it."""

    id: str
    name: str
    user_id: str | None
    tags: tuple[str, ...]
    auto: bool
    age: float
    """Seconds since the session started."""
    idle: float
    """Seconds since a span last started in it."""
    spans: int
    trace_id: str
    session: Session


@overload
def sessions(*, stale: Literal[False] = False) -> list[SessionInfo]: ...


@overload
def sessions(*, stale: Literal[True]) -> list[SessionRecord]: ...


def sessions(*, stale: bool = False) -> list[SessionInfo] | list[SessionRecord]:
    """The open sessions of this process (the auto session included), oldest first.

    ``stale=True``: instead, the session store's stale sessions — still `running` there, but
    their process on this host is gone or they were silent longer than `session_stale_after` —
    most recently active first. End one with ``sdk.end_session(record.id, "indeterminate",
    "stale")`` (see docs/sessions.md).
    """
    if stale:
        return _stale_records()
    now = time.time_ns()
    listed = [
        SessionInfo(
            s.id,
            s.name,
            s.user_id,
            s.tags,
            s.auto,
            (now - s.started_ns) / 1e9,
            s.idle,
            s.span_count,
            s.trace_id,
            s,
        )
        for s in open_sessions()
    ]
    return sorted(listed, key=lambda info: -info.age)


def _stale_records() -> list[SessionRecord]:
    rt = runtime.current()
    store = rt.store
    if store is None:
        return []
    from sdk.store import is_stale

    stale_after = rt.config.session_stale_after if rt.config is not None else None
    running = rt.store_call(lambda: store.list(state="running"))
    now = time.time()
    mine = set(STATE.registry.by_id)
    return [r for r in running or () if r.id not in mine and is_stale(r, stale_after, now)]


def end_idle_sessions(timeout: float) -> int:
    """End every explicit session idle longer than `timeout` seconds as indeterminate (idle_timeout)."""
    ended = 0
    for session in open_sessions():
        if not session.auto and session.idle > timeout:
            session.end(SessionState.INDETERMINATE, "idle_timeout")
            ended += 1
    return ended
