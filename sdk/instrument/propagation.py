"""The session in what OpenTelemetry instrumentations inject into outgoing requests.

HTTP and RPC client instrumentations (``opentelemetry-instrumentation-httpx``, ``-requests``,
``-aiohttp-client``, ``-grpc``, ...) write the current context into each request through the
global propagator (``opentelemetry.propagate``). A session lives in a ContextVar, not in
OpenTelemetry's baggage, so without help they send ``traceparent`` but not the session, and the
server cannot tell which session its spans belong to.

`apply()` wraps the global propagator (whatever it is: W3C by default, or what
``OTEL_PROPAGATORS`` chose) in `SessionPropagator`, which injects the context as
`sdk.context.inject` sees it: ``session.id`` in the baggage (the session owning the current
trace, else the context's, else one received in the baggage, else the auto session), and, outside
any span, the session's span as the parent. Extraction is the wrapped propagator's, unchanged. A
server using the SDK (or any baggage-aware span processor) then stamps the caller's ``session.id``
on its spans. The `propagate_session` setting turns this off; `remove()` restores the propagator.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from sdk.guard import internal_error
from sdk.session import SessionState, _current_session

_lock = threading.Lock()


class SessionPropagator(TextMapPropagator):
    """A propagator that injects the current session's ``session.id`` baggage along with `inner`'s fields."""

    def __init__(self, inner: TextMapPropagator) -> None:
        self.inner = inner

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        """`inner`'s extraction."""
        return self.inner.extract(carrier, context, getter)

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        """`inner`'s injection of the context with the session written in (see the module's doc)."""
        ctx = otel_context.get_current() if context is None else context
        try:
            from sdk.context import _outgoing_context

            local = _current_session.get()
            if local is not None and local.state is not SessionState.RUNNING:
                local = None
            ctx = _outgoing_context(ctx, local)
        except Exception as exc:
            internal_error("session propagation", exc)
        self.inner.inject(carrier, ctx, setter)

    @property
    def fields(self) -> set[str]:
        """`inner`'s fields, and ``baggage``."""
        return {*self.inner.fields, "baggage"}


def apply() -> None:
    """Wrap the global propagator (once; a propagator set later by the application is wrapped again)."""
    with _lock:
        current: Any = propagate.get_global_textmap()
        if not isinstance(current, SessionPropagator):
            propagate.set_global_textmap(SessionPropagator(current))


def remove() -> None:
    """Put the wrapped propagator back, if ours is still the global one."""
    with _lock:
        current: Any = propagate.get_global_textmap()
        if isinstance(current, SessionPropagator):
            propagate.set_global_textmap(current.inner)


def is_applied() -> bool:
    """Whether the global propagator injects the session."""
    return isinstance(propagate.get_global_textmap(), SessionPropagator)
