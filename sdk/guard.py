"""The one guard used wherever SDK code runs inside user code: internal failures never escape.

An internal error is logged once per place and kind, counted in `sdk.stats()`, and swallowed.
The SDK's own test suite sets ``SESSIONTRACE_RAISE_INTERNAL_ERRORS=1`` so that such bugs fail
the tests instead of hiding.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sdk.counters import COUNTERS

logger = logging.getLogger("sessiontrace")

_seen: set[tuple[str, str]] = set()
_seen_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _seen_lock
    _seen_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def raise_internal_errors() -> bool:
    """Whether internal errors are re-raised (only the SDK's own tests turn this on)."""
    return os.environ.get("SESSIONTRACE_RAISE_INTERNAL_ERRORS", "") == "1"


def internal_error(where: str, exc: BaseException) -> None:
    """Record an internal failure: count it, log it the first time this place fails this way."""
    COUNTERS.internal_errors.add()
    key = (where, type(exc).__name__)
    with _seen_lock:
        first = key not in _seen
        _seen.add(key)
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


def forget_logged() -> None:
    """Log the next internal error or warning of each kind again (used by `sdk.testing.reset`)."""
    with _seen_lock:
        _seen.clear()
        _tallies.clear()


def warn_once(key: str, message: str, *args: object) -> None:
    """Log a warning about the user's setup or call, once per key."""
    with _seen_lock:
        if ("warn", key) in _seen:
            return
        _seen.add(("warn", key))
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


_tallies: dict[str, _Tally] = {}


def warn_every(key: str, interval: float, count: int, message: str, *args: object) -> None:
    """Log a warning about `count` more losses of one kind, at most once per `interval` seconds.

    `message` ends with a ``%d`` for the figure: everything counted under `key` since it was last
    logged. The first call logs at once; what comes within the interval is added up and logged once
    the interval has passed (by a later call, or by `report_due_warnings()`).
    """
    if count <= 0:
        return
    now = time.monotonic()
    with _seen_lock:
        tally = _tallies.get(key)
        if tally is None:
            tally = _tallies[key] = _Tally(interval, message, args)
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
    if not _tallies:
        return
    now = time.monotonic()
    due: list[tuple[str, tuple[object, ...], int]] = []
    with _seen_lock:
        for tally in _tallies.values():
            if tally.count and now >= tally.next_at:
                due.append((tally.message, tally.args, tally.count))
                tally.count = 0
                tally.next_at = now + tally.interval
    for message, args, total in due:
        logger.warning(message, *args, total)
