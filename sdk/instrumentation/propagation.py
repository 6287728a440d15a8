"""The session in what OpenTelemetry instrumentations inject into requests and extract from them.

HTTP and RPC instrumentations go through the global propagator (``opentelemetry.propagate``):
clients (``opentelemetry-instrumentation-httpx``, ``-requests``, ``-aiohttp-client``, ``-grpc``,
...) inject the current context into each outgoing request, servers (ASGI/FastAPI, WSGI/Flask/
Django, aiohttp, ...) extract the caller's. `apply()` wraps the global propagator (whatever it
is: W3C by default, or what ``OTEL_PROPAGATORS`` chose) in `SessionPropagator`:

- **Inbound** (always, while the SDK runs): a ``session.id`` in the request's baggage is a claim
  by whoever sent it. It is taken out of the baggage and adopted only when the
  `accept_session_from` setting trusts the sender (the peer address is read from an ASGI scope,
  a WSGI environ or an aiohttp request); otherwise the server's spans keep their own session.
- **Outbound** (with `propagate_session`): the context is injected as `sdk.context.inject` sees
  it — the current session's ``session.id`` in the baggage and, outside any span, the session's
  span as the parent — but only for destinations `send_session_to` trusts (read from the client
  span the instrumentation has just started: ``server.address``, ``url.full``, ...). Other
  destinations get the wrapped propagator's fields only.

`remove()` restores the wrapped propagator.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from sdk import runtime
from sdk.context import outgoing_context
from sdk.guard import internal_error
from sdk.inbound import inbound_session
from sdk.semconv import SessionState
from sdk.state import STATE

_DESTINATION_KEYS = ("server.address", "net.peer.name", "url.full", "http.url")


def peer_address(carrier: object) -> str | None:
    """The sender's IP address, when the carrier a server instrumentation extracts from holds it.

    Only what the server itself wrote counts: an ASGI scope (``client``, with its ``headers`` as
    a list of byte pairs), a WSGI environ (``REMOTE_ADDR``, with a tuple ``wsgi.version``), an
    aiohttp request (``remote``). A plain mapping of request headers holds no peer: a client could
    send a header named ``REMOTE_ADDR``.
    """
    if not isinstance(carrier, dict):  # an aiohttp request (a Mapping too, for its per-request storage)
        remote = getattr(carrier, "remote", None)
        if isinstance(remote, str) and hasattr(carrier, "headers"):
            return remote
    if isinstance(carrier, Mapping):
        if carrier.get("type") in ("http", "websocket") and isinstance(carrier.get("headers"), (list, tuple)):
            client = carrier.get("client")
            if isinstance(client, (list, tuple)) and client and isinstance(client[0], str):
                return client[0]
            return None
        if isinstance(carrier.get("wsgi.version"), tuple):
            address = carrier.get("REMOTE_ADDR")
            return address if isinstance(address, str) else None
    return None


def destination_host(ctx: Context) -> str | None:
    """The host of the outgoing request whose client span is current in `ctx`, if it says."""
    span = trace.get_current_span(ctx)
    attributes = getattr(span, "attributes", None)
    if not isinstance(attributes, Mapping):
        return None
    for key in _DESTINATION_KEYS:
        value = attributes.get(key)
        if not isinstance(value, str) or not value:
            continue
        if "://" in value:
            try:
                host = urllib.parse.urlsplit(value).hostname
            except ValueError:
                continue
            if host:
                return host
            continue
        return value
    return None


class SessionPropagator(TextMapPropagator):
    """Wraps the global propagator: filters inbound session ids, adds the session to trusted outbound requests."""

    def __init__(self, inner: TextMapPropagator) -> None:
        self.inner = inner
        self.outbound = True

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        """`inner`'s extraction, with an inbound ``session.id`` adopted only from a trusted sender."""
        ctx = self.inner.extract(carrier, context, getter)
        try:
            ctx, _, _ = inbound_session(ctx, peer_address(carrier))
        except Exception as exc:
            internal_error("inbound session filter", exc)
        return ctx

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        """`inner`'s injection; for a trusted destination, of the context with the session written in."""
        ctx = otel_context.get_current() if context is None else context
        if self.outbound:
            try:
                ctx = _with_session_for_destination(ctx)
            except Exception as exc:
                internal_error("session propagation", exc)
        self.inner.inject(carrier, ctx, setter)

    @property
    def fields(self) -> set[str]:
        """`inner`'s fields, and ``baggage``."""
        return {*self.inner.fields, "baggage"}


def _with_session_for_destination(ctx: Context) -> Context:
    config = runtime.current().config
    if config is None or not config.send_session_to.allows_destination(destination_host(ctx)):
        return ctx

    local = STATE.current_session.get()
    if local is not None and local.state is not SessionState.RUNNING:
        local = None
    return outgoing_context(ctx, local)


def apply(outbound: bool) -> None:
    """Wrap the global propagator (once; a propagator set later by the application is wrapped again).

    `outbound`: whether trusted outgoing requests carry the session (`propagate_session`).
    """
    with STATE.propagation_lock:
        current: Any = propagate.get_global_textmap()
        if not isinstance(current, SessionPropagator):
            current = SessionPropagator(current)
            propagate.set_global_textmap(current)
        current.outbound = outbound


def remove() -> None:
    """Put the wrapped propagator back, if ours is still the global one."""
    with STATE.propagation_lock:
        current: Any = propagate.get_global_textmap()
        if isinstance(current, SessionPropagator):
            propagate.set_global_textmap(current.inner)


def is_applied() -> bool:
    """Whether the global propagator is the SDK's."""
    return isinstance(propagate.get_global_textmap(), SessionPropagator)
