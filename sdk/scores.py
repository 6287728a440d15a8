"""Scores and feedback on a session, from the process that ran it or any other."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from sdk import runtime
from sdk.attributes import to_attribute_value, write_attributes
from sdk.export.meters import existing_handle
from sdk.guard import internal_error
from sdk.semconv import MAX_ID_LENGTH, ROOT_KEY, SCORE_SPAN, SESSION_ID, SPAN_KIND
from sdk.session_core import Session
from sdk.state import STATE

if TYPE_CHECKING:
    from sdk.store import Score

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
        metrics = existing_handle()
        if metrics is not None and not isinstance(value, str):
            metrics.record_score(name, source, float(value))
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
    if rt.store_writer is not None:
        rt.store_writer.catch_up()  # a session this process just ended may still be queued
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
