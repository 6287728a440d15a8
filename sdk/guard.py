"""The one guard used wherever SDK code runs inside user code: internal failures never escape.

An internal error is logged once per place and kind, counted in `sdk.stats()`, and swallowed.
The SDK's own test suite sets ``SESSIONTRACE_RAISE_INTERNAL_ERRORS=1`` so that such bugs fail
the tests instead of hiding.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sdk.stats import COUNTERS

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
