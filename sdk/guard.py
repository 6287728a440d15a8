"""The one guard used wherever SDK code runs inside user code: internal failures never escape.

An internal error is logged once per place and kind, counted in `sdk.stats()`, and swallowed.
The SDK's own test suite sets ``SESSIONTRACE_RAISE_INTERNAL_ERRORS=1`` so that such bugs fail
the tests instead of hiding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sdk.state import STATE

logger = logging.getLogger("sessiontrace")


def raise_internal_errors() -> bool:
    """Whether internal errors are re-raised (only the SDK's own tests turn this on)."""
    return os.environ.get("SESSIONTRACE_RAISE_INTERNAL_ERRORS", "") == "1"


def internal_error(where: str, exc: BaseException) -> None:
    """Record an internal failure: count it, log it the first time this place fails this way."""
    STATE.counters.internal_errors.add()
    key = (where, type(exc).__name__)
    with STATE.warned_lock:
        first = key not in STATE.warned
        STATE.warned.add(key)
    if first:
        logger.error(
            "sessiontrace: internal error in %s (your program continues; further %s errors here are "
            "only counted in sdk.stats())",
            where,
            type(exc).__name__,
            exc_info=exc,
        )
    if raise_internal_errors():
        raise exc


def warn_once(key: str, message: str, *args: object) -> None:
    """Log a warning about the user's setup or call, once per key."""
    with STATE.warned_lock:
        if ("warn", key) in STATE.warned:
            return
        STATE.warned.add(("warn", key))
    logger.warning(message, *args)


@contextmanager
def guarded(where: str) -> Iterator[None]:
    """Run SDK code; an exception inside is recorded as an internal error and swallowed."""
    try:
        yield
    except Exception as exc:
        internal_error(where, exc)


class _Tally:
    """Losses of one kind counted since they were last logged (see `warn_every`)."""

    __slots__ = ("args", "count", "interval", "message", "next_at")

    def __init__(self, interval: float, message: str, args: tuple[object, ...]) -> None:
        self.interval = interval
        self.message = message
        self.args = args
        self.count = 0
        self.next_at = 0.0


def warn_every(key: str, interval: float, count: int, message: str, *args: object) -> None:
    """Log a warning about `count` more losses of one kind, at most once per `interval` seconds.

    `message` ends with a ``%d`` for the figure: everything counted under `key` since it was last
    logged. The first call logs at once; what comes within the interval is added up and logged once
    the interval has passed (by a later call, or by `report_due_warnings()`).
    """
    if count <= 0:
        return
    now = STATE.clock.monotonic()
    with STATE.warned_lock:
        tally = STATE.tallies.get(key)
        if tally is None:
            tally = STATE.tallies[key] = _Tally(interval, message, args)
        tally.message, tally.args = message, args
        tally.count += count
        if now < tally.next_at:
            return
        total, tally.count = tally.count, 0
        tally.next_at = now + tally.interval
    logger.warning(message, *args, total)


def report_due_warnings() -> None:
    """Log the figures `warn_every` has been adding up whose interval has passed (the SDK's export
    thread calls this as it goes, so that losses are reported even when none follow them)."""
    if not STATE.tallies:
        return
    now = STATE.clock.monotonic()
    due: list[tuple[str, tuple[object, ...], int]] = []
    with STATE.warned_lock:
        for tally in STATE.tallies.values():
            if tally.count and now >= tally.next_at:
                due.append((tally.message, tally.args, tally.count))
                tally.count = 0
                tally.next_at = now + tally.interval
    for message, args, total in due:
        logger.warning(message, *args, total)
