"""Inbound session ids: a ``session.id`` in a request's W3C baggage, adopted only from trusted senders.

See docs/security.md: by default no inbound session id is adopted; the `accept_session_from`
setting names the peers that may name the session their requests belong to.
"""

from __future__ import annotations

from typing import NamedTuple

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Link

from sdk import runtime
from sdk.guard import warn_once
from sdk.semconv import MAX_ID_LENGTH, REMOTE_SESSION_KEY, ROOT_CONTEXT, ROOT_KEY, SESSION_ID
from sdk.state import STATE
from sdk.trust import TrustRules
from sdk.w3c import extract_w3c


class Inbound(NamedTuple):
    """What `parent=` resolved to: where the session starts, and what the caller claimed."""

    context: Context
    adopted: str | None
    """The caller's session id, when trusted: the session continues it."""
    claimed: str | None
    """A session id the caller sent and that was not adopted (recorded, never used)."""
    link: Link | None
    """The caller's span, linked from a session that does not continue the caller's."""


def remote_parent(parent: object, peer: str | None) -> Inbound:
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
        ctx = extract_w3c({str(k): str(v) for k, v in items()})
    ctx, claimed, adopted = inbound_session(ctx, peer)
    if adopted is None:
        adopted = otel_context.get_value(REMOTE_SESSION_KEY, ctx)  # type: ignore[assignment]
    if isinstance(adopted, str):
        return Inbound(otel_context.set_value(ROOT_KEY, True, ctx), adopted, None, None)
    remote = trace.get_current_span(ctx).get_span_context()
    link = Link(remote, {"sessiontrace.link": "inbound"}) if remote.is_valid else None
    return Inbound(ROOT_CONTEXT, None, claimed, link)


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
    claimed = raw if isinstance(raw, str) and valid_id(raw) else None
    if claimed is None:
        STATE.counters.inbound_rejected.add()
        return ctx, None, None
    if trusted or accepts(claimed, peer):
        return otel_context.set_value(REMOTE_SESSION_KEY, claimed, ctx), claimed, claimed
    STATE.counters.inbound_rejected.add()
    return ctx, claimed, None


def valid_id(session_id: str) -> bool:
    return 0 < len(session_id) <= MAX_ID_LENGTH and session_id.isprintable() and bool(session_id.strip())


def accepts(session_id: str, peer: str | None) -> bool:
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
