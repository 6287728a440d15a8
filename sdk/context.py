"""Carrying the current session across threads, executors, processes and services.

- `wrap(fn)`: a callable that runs `fn` in the caller's session and OpenTelemetry context, in
  whatever thread calls it (and, pickled, in another process: see `wrap`).
- `run(fn, *args, **kwargs)`: call `fn` in a copy of the current context, so that sessions it
  starts or context it attaches never leak back into the caller.
- `inject(carrier)` / `extract(carrier)`: W3C ``traceparent`` and ``baggage`` (carrying
  ``session.id``) for HTTP headers, message envelopes and environment variables.
"""

from __future__ import annotations

# Imported before the SDK creates its TracerProvider, so that this module's at-fork handler (which
# re-creates the lock ThreadPoolExecutor.submit takes) is registered before the provider's: in a
# forked child the provider's handler submits resource detectors to a ThreadPoolExecutor, and with
# the handlers in the other order the child deadlocks inside os.fork() on the inherited held lock.
import concurrent.futures.thread  # noqa: F401
import contextvars
import functools
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Generic, ParamSpec, TypeVar

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from sdk import runtime
from sdk.inbound import inbound_session
from sdk.semconv import REMOTE_SESSION_KEY, SESSION_ID, SessionState
from sdk.session_core import Session, auto_session, detach_quietly, session_for_trace
from sdk.state import STATE
from sdk.w3c import W3C, extract_w3c

P = ParamSpec("P")
R = TypeVar("R")


def outgoing_context(ctx: Context, local: Session | None) -> Context:
    """`ctx` with the session its work belongs to written in: that session's id in the baggage, and
    its span as the parent when `ctx` has no span.

    The session is found by the rule the span processor stamps spans with: the open session that
    owns the current span's trace; else `local` (the session set in the caller's context); else the
    ``session.id`` `ctx` already carries in its baggage (a session of another process, passed on
    unchanged); else the auto session.
    """
    span_context = trace.get_current_span(ctx).get_span_context()
    session = session_for_trace(span_context.trace_id) if span_context.is_valid else None
    if session is None:
        session = local
    if session is None:
        remote = session_id_from(ctx)
        if remote is not None:  # a trusted session of another process: passed on unchanged
            return baggage.set_baggage(SESSION_ID, remote, ctx)
        auto = auto_session()
        session = auto if auto is not None and auto.state is SessionState.RUNNING else None
    if session is None:
        return ctx
    if not span_context.is_valid:
        ctx = trace.set_span_in_context(session.span, ctx)
    return baggage.set_baggage(SESSION_ID, session.id, ctx)


def inject(carrier: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Write ``traceparent`` (and ``tracestate``) and ``baggage`` with ``session.id`` into `carrier`.

    Returns the carrier (a new dict when none is given). Outside any span the current session's
    own span is the parent; outside any session only the ambient context is written.
    """
    target: MutableMapping[str, str] = {} if carrier is None else carrier
    local = STATE.current_session.get()
    if local is not None and local.state is not SessionState.RUNNING:
        local = None
    W3C.inject(target, context=outgoing_context(otel_context.get_current(), local))
    return target


def extract(
    carrier: Mapping[str, str], context: Context | None = None, *, peer: str | None = None
) -> Context:
    """An OpenTelemetry Context from W3C headers: the remote parent span and the baggage.

    Spans started under it sit in the remote trace. They join the remote *session* (the
    ``session.id`` in the baggage) only when the `accept_session_from` setting trusts the sender
    (`peer`: its IP address, for network rules); otherwise the claimed id is dropped from the
    baggage and the spans keep this process's session (see docs/security.md). Header names are
    matched case-insensitively.
    """
    ctx, _, _ = inbound_session(extract_w3c(carrier, context), peer)
    return ctx


def session_id_from(context: Context | None = None) -> str | None:
    """The id of the other process's or service's session a context continues (a trusted inbound
    ``session.id``, see `extract`), or None."""
    value = otel_context.get_value(REMOTE_SESSION_KEY, context)
    return value if isinstance(value, str) and value else None


class Wrapped(Generic[P, R]):
    """`fn` bound to the session and OpenTelemetry context that were current when it was wrapped.

    Calling it in any thread runs `fn` with that session current. Pickled (to send to a process
    pool or a `multiprocessing` child), it carries the W3C headers instead of the live context:
    in the other process, spans started by `fn` join the same trace and session.
    """

    def __init__(self, fn: Callable[P, R], session: Session | None, ctx: Context | None) -> None:
        self.fn = fn
        self._session = session
        self._ctx = ctx
        self._carrier: dict[str, str] | None = None
        self._pid = os.getpid()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        elsewhere = os.getpid() != self._pid
        try:
            if self._ctx is None:
                # Unpickled in another process: the session travels in the headers' baggage. Clear
                # the session this process's context may hold (a forked pool worker inherits the
                # one that was current in the thread that forked it), so the headers decide.
                session_token = STATE.current_session.set(None)
                ctx, _, _ = inbound_session(extract_w3c(self._carrier or {}), None, trusted=True)
                token = otel_context.attach(ctx)
                try:
                    return self.fn(*args, **kwargs)
                finally:
                    detach_quietly(token)
                    STATE.current_session.reset(session_token)
            session_token = STATE.current_session.set(self._session)
            token = otel_context.attach(self._ctx)
            try:
                return self.fn(*args, **kwargs)
            finally:
                detach_quietly(token)
                STATE.current_session.reset(session_token)
        finally:
            if elsewhere:
                # A process-pool or multiprocessing child may leave through os._exit(), which runs
                # no exit handler: deliver this call's spans now.
                rt = runtime.current()
                if rt.config is not None:
                    rt.force_flush(rt.config.flush_timeout)

    def __reduce__(self) -> tuple[Any, ...]:
        carrier = self._carrier
        if carrier is None and self._ctx is not None:
            carrier = {}
            W3C.inject(carrier, context=outgoing_context(self._ctx, self._session))
        return (_rebuild, (self.fn, carrier))

    def __repr__(self) -> str:
        return f"sdk.context.wrap({self.fn!r})"


def _rebuild(fn: Callable[..., Any], carrier: dict[str, str] | None) -> Wrapped[Any, Any]:
    wrapped: Wrapped[Any, Any] = Wrapped(fn, None, None)
    wrapped._carrier = carrier
    wrapped._pid = -1  # unpickled: this is another process than the one that wrapped it
    return wrapped


def wrap(fn: Callable[P, R]) -> Wrapped[P, R]:
    """Bind `fn` to the caller's current session and OpenTelemetry context (captured now).

    ``threading.Thread(target=sdk.context.wrap(work))``, callbacks, queues: wherever `fn` runs,
    its spans belong to the session that was current here.
    """
    return Wrapped(fn, STATE.current_session.get(), otel_context.get_current())


def run(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call `fn` in a copy of the current context: what it starts or attaches stays inside the call.

    A callback that calls `sdk.start_session()` makes that session current only for itself, not
    for the code that invoked the callback (an event loop, a framework's dispatcher).
    """
    return contextvars.copy_context().run(fn, *args, **kwargs)
