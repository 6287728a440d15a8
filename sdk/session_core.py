"""Sessions: each one the root span of its own trace, current per context through a ContextVar.

Resolution of "the current session": the session set in this context (a ``with sdk.session()``
block, or `start_session()` in this thread or task), else the process's auto session, else None.
This module holds what a session is (`Session`) and how one is made current (`Activation`); how
sessions start and end is in `sdk.session_api`.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from sdk import otel_internals, runtime
from sdk.attributes import to_attribute_value, to_attributes, write_attributes
from sdk.budget import Budget, BudgetExceeded, BudgetState, Spent, report_exceeded
from sdk.counters import counted
from sdk.export.summary import SessionSummary, print_summary
from sdk.guard import internal_error
from sdk.redaction import scrubber_for
from sdk.semconv import (
    MAX_ID_LENGTH,
    SESSION_END_REASON,
    SESSION_ERRORS,
    SESSION_LLM_CALLS,
    SESSION_LLM_COST,
    SESSION_LLM_INPUT_TOKENS,
    SESSION_LLM_OUTPUT_TOKENS,
    SESSION_STATE,
    SESSION_TAGS,
    SessionState,
)
from sdk.settings import Config
from sdk.state import STATE

if TYPE_CHECKING:  # imported when a session is stored or resumed, not by `import sdk`
    from sdk.store import SegmentUpdate, SessionRecord, Usage

DEFAULT_MAX_OPEN_SESSIONS = 10_000  # before init(), when there is no config yet


def new_session_id() -> str:
    return f"{random.getrandbits(128):032x}"


def parse_state(state: SessionState | str) -> SessionState:
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


def check_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id.strip():
        raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
    if len(session_id) > MAX_ID_LENGTH or not session_id.isprintable():
        raise ValueError(
            f"session_id must be at most {MAX_ID_LENGTH} printable characters, got {session_id[:40]!r}..."
        )
    return session_id


def check_tags(tags: Iterable[str] | str | None) -> tuple[str, ...]:
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
        "_marked",
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
        "started_monotonic_ns",
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
        budget: BudgetState | None = None,
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
        self.started_monotonic_ns = self.last_active_ns = STATE.clock.monotonic_ns()
        """When the session was made and when a span last started in it, on the SDK's clock."""
        self._step: Span | None = None
        self.started_thread: int | None = None
        """The thread `start_session()` made this session current in (None for other sessions)."""
        self.trace_id_int = span.get_span_context().trace_id
        self._state = SessionState.RUNNING
        self._reason: str | None = None
        self._ended_ns: int | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._spans = itertools.count(1)
        next(self._spans)  # the session's own span
        self._marked = False
        self._activation: Activation | None = None
        self._activated: Activation | None = None
        self._ended_elsewhere = False
        self._show_summary: bool | None = config.console_summary if config else None
        self._usage = [0, 0, 0, 0.0, 0]  # LLM calls, input tokens, output tokens, cost (USD), errors
        self._budget = budget

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
        """Spans of this session so far, as a backend counts them: the session's own span, every
        span started in it, and its live `session.start` marker once one was exported."""
        return counted(self._spans)

    @property
    def marked(self) -> bool:
        """Whether a live `session.start` marker was exported for this session."""
        return self._marked

    def note_marker(self) -> None:
        """Count the session's live marker (the export pipeline calls this when it makes the first;
        every destination then gets one, and the count includes it once)."""
        with self._lock:
            if self._marked:
                return
            self._marked = True
        next(self._spans)

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
        return Usage(
            counted(self._spans), int(calls), int(tokens_in), int(tokens_out), float(cost), int(errors)
        )

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
        next(self._spans)
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
            report_exceeded(self.span, error, state, self.config.on_budget_exceeded if self.config else ())
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
    def age(self) -> float:
        """Seconds since the session started, on the SDK's clock (whether or not it has ended)."""
        return (STATE.clock.monotonic_ns() - self.started_monotonic_ns) / 1e9

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
        tags = check_tags([tag])
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
        return SessionUse(self)

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

    def activate(self) -> None:
        """Make this session current in this context until it ends (what `start_session()` does)."""
        self._activation = Activation(self)

    def end(self, state: SessionState | str = SessionState.SUCCESS, reason: str | None = None) -> None:
        """End the session as `success`, `fail` or `indeterminate`. Ending an ended session does nothing."""
        parsed = parse_state(state)
        if self._pid != os.getpid():
            # A forked child's copy of a session of its parent: the parent ends and exports it.
            self._state = parsed
            registry_remove(self)
            return
        with self._lock:
            if self._state is not SessionState.RUNNING:
                return
            self._state = parsed
            self._reason = reason
            self._ended_ns = time.time_ns()
        registry_remove(self)
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
            sampling = STATE.sampling
            if sampling is not None and sampling.engaged:
                how, held = sampling.decide(self.id, parsed, int(errors), self.duration, cost)
                final.update(how)
                for span in held:  # a kept session's spans, held until now
                    rt.deliver(span)
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

    def end_for(self, exc: BaseException | None) -> None:
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

    def store_update(self) -> SegmentUpdate:
        """This segment's state and counters now (the store writer calls this)."""
        from sdk.store import SegmentUpdate

        config, ended, reason = self.config, self._ended_ns, self._reason
        text = stored_texts(config)
        return SegmentUpdate(
            session_id=self.id,
            span_id=self.span_id,
            last_activity=ended / 1e9 if ended is not None else self._last_activity_wall(),
            usage=self.usage,
            state=self._state.value,
            reason=text(reason) if reason is not None else None,
            ended=ended / 1e9 if ended is not None else None,
            name=text(self.name),
            user_id=text(self.user_id) if self.user_id is not None else None,
            tags=tuple(text(t) for t in self._tags),
        )

    def store_record(self) -> SessionRecord:
        """This session as a new store record with one segment, as it is now (the store writer calls this)."""
        from sdk.store import Segment, SessionRecord, owner_id

        now = self.store_update()
        segment = Segment(
            now.span_id, self.segment, owner_id(), self.started_ns / 1e9, now.last_activity, now.state,
            now.reason, now.ended, now.usage,
        )  # fmt: skip
        return SessionRecord(
            self.id,
            now.name or self.name,
            f"{self.trace_id_int:032x}",
            now.user_id,
            now.tags or (),
            (segment,),
        )

    def _last_activity_wall(self) -> float:
        return STATE.clock.time() - (STATE.clock.monotonic_ns() - self.last_active_ns) / 1e9

    def __repr__(self) -> str:
        return f"<Session {self.name!r} id={self.id} state={self._state.value}>"


class SessionUse(AbstractContextManager[Session]):
    """What `Session.use()` returns: makes the session current on entry, restores the previous on exit."""

    __slots__ = ("_activation", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._activation: Activation | None = None

    def __enter__(self) -> Session:
        if not self._session.ended and self._activation is None:
            self._activation = Activation(self._session)
        return self._session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        activation, self._activation = self._activation, None
        if activation is not None:
            activation.undo()


def registry_remove(session: Session) -> None:
    if STATE.registry.remove(session):
        tell_auto_listeners(False)


def tell_auto_listeners(running: bool) -> None:
    """Tell the auto session's listeners (the provider's tracers) that it started or ended."""
    for listener in STATE.registry.auto_listeners:
        try:
            listener(running)
        except Exception as exc:
            internal_error("auto session listener", exc)


class CurrentSessionSpan(trace.Span):
    """The session's span as the current span of a context the session was made current in.

    It is the session's span in all but identity (every call is passed on), except for a
    `start_session()` session ended from another thread (the idle reaper, `end_session(id)`):
    only the context that started it could undo its activation, so that context still holds it.
    Then it is no parent any more, and that context starts new traces again instead of adding
    spans under an ended session for good. (A session ended where it was made current is undone
    there; work handed off earlier keeps it as a parent and joins the session during
    `ended_session_grace`.)
    """

    __slots__ = ("_context", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._context = session.span.get_span_context()  # read for every span started under it

    def get_span_context(self) -> trace.SpanContext:
        if self._session._ended_elsewhere:
            return trace.INVALID_SPAN_CONTEXT
        return self._context

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


class Activation:
    """Tokens that made a session current in one context, and how to undo that."""

    __slots__ = ("otel_token", "previous", "previous_ctx", "session", "session_token")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.previous = STATE.current_session.get()
        self.previous_ctx = otel_context.get_current()
        self.session_token = STATE.current_session.set(session)
        current = CurrentSessionSpan(session)
        self.otel_token = otel_context.attach(trace.set_span_in_context(current, self.previous_ctx))
        session._activated = self

    def undo(self) -> None:
        # A token resets only in the context that made it. Undone elsewhere, the session is put away
        # only where it is still current: a copy of that context (on Python 3.10, ipykernel 7.1+ runs
        # each cell in a copy of the last one's), not another task closing a generator of it.
        current_here = STATE.current_session.get() is self.session
        if not detach_quietly(self.otel_token) and current_here:
            otel_context.attach(self.previous_ctx)
        try:
            STATE.current_session.reset(self.session_token)
        except ValueError:
            if current_here:
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
    return stored_texts(config)(text)


def stored_texts(config: Config | None) -> Callable[[str], str]:
    """`stored_text` for several texts of one session (the limit and scrubber looked up once)."""
    max_length = config.attribute_max_length if config is not None else 4096
    scrub = scrubber_for(config).text

    def stored(text: str) -> str:
        value = to_attribute_value(text, max_length)
        return scrub(value if isinstance(value, str) else str(value))

    return stored


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


def detach_quietly(token: object) -> bool:
    """Detach an OpenTelemetry context token; a token from another context is ignored, not logged.

    ``opentelemetry.context.detach`` logs "Failed to detach context" in that case, which happens
    legitimately when a generator or async generator is closed from another task. Returns whether
    the token was detached.
    """
    try:
        otel_internals.detach(token)
    except ValueError:
        return False
    except Exception as exc:
        internal_error("context detach", exc)
        return False
    return True


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
