"""Starting and ending sessions: `session()`, `start_session()`, `end_session()`, the auto session.

`start()` makes a `Session` step by step: resolve where it starts (a trusted caller's session,
a stored session to resume), its identity, its span, then register it and tell the listeners.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, overload

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from sdk import runtime
from sdk.attributes import to_attribute_value, to_attributes, write_attributes
from sdk.budget import Budget, BudgetState, Spent
from sdk.decorators import wrap_in_session
from sdk.guard import internal_error, warn_once
from sdk.inbound import Inbound, remote_parent
from sdk.semconv import (
    INBOUND_SESSION_ID,
    ROOT_CONTEXT,
    SESSION_AUTO,
    SESSION_CONTINUED,
    SESSION_END_REASON,
    SESSION_ID,
    SESSION_NAME,
    SESSION_PARENT_ID,
    SESSION_RESUMED,
    SESSION_SEGMENT,
    SESSION_STATE,
    SESSION_TAGS,
    SPAN_KIND,
    USER_ID,
    SessionState,
    SessionWarning,
)
from sdk.session_core import (
    DEFAULT_MAX_OPEN_SESSIONS,
    Activation,
    Session,
    check_id,
    check_tags,
    current_session,
    new_session_id,
    open_sessions,
    parse_state,
    stored_text,
    tell_auto_listeners,
)
from sdk.state import STATE
from sdk.tracing import SegmentIds

if TYPE_CHECKING:
    from sdk.settings import Config
    from sdk.store import Segment, SessionRecord

F = TypeVar("F", bound=Callable[..., Any])


class _Claimed(NamedTuple):
    """A resumed session's segment, as claimed in the store: where its span goes and what came before."""

    segment: int
    ids: tuple[int, int]
    """(trace id, span id) the segment's span must have."""
    previous: Link | None
    """A link to the previous segment's span, if there is one."""
    spent: Spent
    """What the earlier segments used (for the budget)."""


def start(
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
    """Make a session (see the module docstring): the work behind `session()` and `start_session()`."""
    rt = runtime.current()
    inbound = remote_parent(parent, peer) if parent is not None else None
    continued = inbound is not None and inbound.adopted is not None
    if inbound is not None and session_id is None:
        session_id = inbound.adopted
    config = rt.config
    if overrides:
        if config is None:
            raise RuntimeError("per-session overrides need sdk.init() first")
        config = config.with_overrides(overrides)
    sid, name, tag_tuple = _checked_identity(name, session_id, user_id, tags, resume, fresh=not continued)
    outer = None if auto or parent is not None else current_session()
    if outer is not None and outer.auto:
        outer = None
    started_ns = time.time_ns()
    claimed = _claim_segment(rt, sid, name, user_id, tag_tuple, started_ns) if resume and rt.enabled else None
    identity = _Identity(sid, name, user_id, tag_tuple, auto, started_ns)
    span: Span = trace.INVALID_SPAN
    if rt.enabled:
        try:
            max_length = config.attribute_max_length if config else 4096
            attrs = to_attributes(attributes, max_length)
            span = _session_span(rt, identity, attrs, max_length, outer, inbound, claimed)
        except Exception as exc:
            internal_error("session start", exc)
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
        segment=claimed.segment if claimed is not None else 1,
        continued=continued,
        budget=_budget_state(budget, config, claimed),
    )
    # A resume whose claim failed (the store is down) is not written later either: a plain write
    # would replace the stored record, and its earlier segments with it. Nor is a continued
    # session, whose record is its owner's.
    _register(rt, session, stored=resume or continued)
    return session


def _checked_identity(
    name: object,
    session_id: str | None,
    user_id: object,
    tags: Iterable[str] | str | None,
    resume: bool,
    *,
    fresh: bool,
) -> tuple[str, str, tuple[str, ...]]:
    """(id, name, tags) of a session to start, checked (ValueError naming what is wrong); `fresh`:
    not continuing a caller's session, so the id must not be open here already (unless resumed)."""
    if name is None:
        name = "session"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"session name must be a non-empty string, got {name!r}")
    sid = new_session_id() if session_id is None else check_id(session_id)
    if user_id is not None and not isinstance(user_id, str):
        raise ValueError(f"user_id must be a string, got {user_id!r}")
    tag_tuple = check_tags(tags)
    if resume and session_id is None:
        raise ValueError("resume=True needs the session_id of the session to resume")
    if fresh and not resume and sid in STATE.registry.by_id:
        raise ValueError(
            f"a session with id {sid!r} is already open in this process; end it first or choose another id"
        )
    return sid, name, tag_tuple


def _claim_segment(
    rt: runtime.Runtime, sid: str, name: str, user_id: str | None, tags: tuple[str, ...], started_ns: int
) -> _Claimed | None:
    """The next segment of session `sid`, claimed in the store; None when there is no store or it failed."""
    stored = _begin_segment(rt, sid, name, user_id, tags, started_ns)
    if stored is None:
        return None
    latest = stored.segments[-1]
    trace_id = int(stored.trace_id, 16)
    previous = None
    if len(stored.segments) > 1:
        before = stored.segments[-2]
        previous = Link(
            trace.SpanContext(trace_id, int(before.span_id, 16), True, trace.TraceFlags(1)),
            {SESSION_ID: sid, SESSION_SEGMENT: before.number},
        )
    return _Claimed(
        latest.number, (trace_id, int(latest.span_id, 16)), previous, _spent_by(stored.segments[:-1])
    )


class _Identity(NamedTuple):
    """Who a session to start is (checked)."""

    sid: str
    name: str
    user_id: str | None
    tags: tuple[str, ...]
    auto: bool
    started_ns: int


def _budget_state(
    budget: Budget | None, config: Config | None, claimed: _Claimed | None
) -> BudgetState | None:
    """The session's budget (its own, else the setting's) with what earlier segments spent; None: unlimited."""
    if budget is None and config is not None:
        budget = config.session_budget
    if budget is None or not budget.limited:
        return None
    return BudgetState(budget, claimed.spent if claimed is not None else None)


def _session_span(
    rt: runtime.Runtime,
    identity: _Identity,
    attrs: dict[str, Any],
    max_length: int,
    outer: Session | None,
    inbound: Inbound | None,
    claimed: _Claimed | None,
) -> Span:
    """The session's root span, started with its attributes and links (the user's `attrs` first)."""
    sid, name, user_id, tags, auto, started_ns = identity
    attrs[SESSION_ID] = sid
    attrs[SESSION_NAME] = to_attribute_value(name, max_length)
    attrs[SESSION_STATE] = "running"
    attrs[SPAN_KIND] = "session"
    links: list[Link] = []
    if tags:
        attrs[SESSION_TAGS] = tuple(to_attribute_value(list(tags), max_length))  # type: ignore[arg-type]
    if user_id is not None:
        attrs[USER_ID] = to_attribute_value(user_id, max_length)
    if auto:
        attrs[SESSION_AUTO] = True
    if inbound is not None:
        if inbound.adopted is not None:
            attrs[SESSION_CONTINUED] = True
        elif inbound.claimed is not None:
            attrs[INBOUND_SESSION_ID] = inbound.claimed
    if outer is not None:
        attrs[SESSION_PARENT_ID] = outer.id
        links.append(Link(outer.span.get_span_context(), {SESSION_ID: outer.id}))
    if claimed is not None:
        attrs[SESSION_SEGMENT] = claimed.segment
        attrs[SESSION_RESUMED] = claimed.previous is not None
        if claimed.previous is not None:
            links.append(claimed.previous)
    if inbound is not None and inbound.link is not None:
        links.append(inbound.link)
    context = inbound.context if inbound is not None else ROOT_CONTEXT
    if claimed is not None:
        span = start_with_ids(rt, claimed.ids, name, context, links, started_ns)
    else:
        span = rt.tracer.start_span(name, context=context, links=links, start_time=started_ns)
    write_attributes(span, attrs)
    return span


def _register(rt: runtime.Runtime, session: Session, *, stored: bool) -> None:
    """Add a new session to the open ones and tell the listeners; end the least active past the limit."""
    config = session.config
    limit = config.max_open_sessions if config else DEFAULT_MAX_OPEN_SESSIONS
    evicted = STATE.registry.add(session, continued=stored, limit=limit)  # ValueError: duplicate id
    if STATE.sampling is not None:
        STATE.sampling.session_started(session.id)
    if session.auto:
        tell_auto_listeners(True)
    STATE.counters.sessions_started.add()
    if rt.session_listeners:
        rt.session_started(session, stored=stored)
    if evicted:
        warn_once(
            "max-open-sessions",
            "sessiontrace: more than max_open_sessions=%d sessions open; the least recently active "
            "are ended as indeterminate (reason max_open_sessions)",
            limit,
        )
        for old in evicted:
            old.end(SessionState.INDETERMINATE, "max_open_sessions")


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


def start_with_ids(
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
    session = start(
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
    session.activate()
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
    parse_state(state)
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
    parsed = parse_state(state)
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
            span = start_with_ids(rt, ids, record.name, ROOT_CONTEXT, [], int(latest.started * 1e9))
            write_attributes(span, attrs)
            if parsed is SessionState.FAIL:
                span.set_status(Status(StatusCode.ERROR, reason_text))
            span.end(int(max(latest.last_activity, latest.started) * 1e9))
        except Exception as exc:
            internal_error("end_stored_session", exc)
    return True


def start_auto_session(name: str) -> Session:
    """Start the process's auto session (lifecycle calls this; there is at most one)."""
    existing = STATE.registry.auto
    if existing is not None and not existing.ended:
        return existing
    return start(name, auto=True)


def end_open_sessions(auto_state: SessionState, auto_reason: str | None, reason: str) -> None:
    """End every open session: explicit ones as indeterminate with `reason`, the auto one as `auto_state`."""
    for session in open_sessions():
        if session.auto:
            session.end(auto_state, auto_reason)
        else:
            session.end(SessionState.INDETERMINATE, reason)


_entered: contextvars.ContextVar[tuple[tuple[SessionScope, Activation], ...]] = contextvars.ContextVar(
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
        return start(self.name or default_name, **self.options)

    def __enter__(self) -> Session:
        session = self.start()
        _entered.set((*_entered.get(), (self, Activation(session))))
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
        activation.session.end_for(exc)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
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
    listed = [
        SessionInfo(
            s.id,
            s.name,
            s.user_id,
            s.tags,
            s.auto,
            s.age,
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
    now = STATE.clock.time()
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
