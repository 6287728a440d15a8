"""Counters the SDK keeps about itself, read with `sdk.stats()`."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple


class Counter:
    """A thread-safe monotonic counter; `next()` on itertools.count is atomic in CPython.

    `add` is the count's own C-level ``__next__``: counting costs no Python frame on the span path.
    """

    __slots__ = ("_count", "add")

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self.add: Callable[[], int] = self._count.__next__

    def add_many(self, n: int) -> None:
        for _ in range(n):
            next(self._count)

    @property
    def value(self) -> int:
        # repr is "count(N)" where N is the next value to be returned.
        return int(repr(self._count)[6:-1]) - 1


class Counters:
    """The process's counters. One instance lives for the whole process (re-init keeps counting)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start every counter again from zero."""
        self.spans_started = Counter()
        self.spans_ended = Counter()
        self.spans_exported = Counter()
        self.spans_dropped = Counter()
        self.export_errors = Counter()
        self.spans_spooled = Counter()
        self.spool_dropped = Counter()
        self.sessions_started = Counter()
        self.sessions_ended = Counter()
        self.internal_errors = Counter()
        self.store_errors = Counter()
        self.callback_errors = Counter()
        self.inbound_rejected = Counter()
        self.llm_calls = Counter()
        self.llm_calls_unpriced = Counter()


class Stats(NamedTuple):
    """A snapshot of the SDK's counters.

    `spans_dropped` counts every span that was not delivered: refused by a full queue, or in a
    batch the exporter failed to send. `internal_errors` counts failures inside the SDK that were
    caught so they could not reach your code (each kind is also logged once).
    """

    spans_started: int
    spans_ended: int
    spans_exported: int
    spans_dropped: int
    export_errors: int
    """Export requests that failed (a backend down, refusing or erroring), first tries and resends alike."""
    spans_spooled: int
    """Spans written to the on-disk spool because the backend could not take them (sent later;
    once sent they count in `spans_exported`)."""
    spool_dropped: int
    """Spans the spool refused because it was full (`spool_max_bytes`); also in `spans_dropped`."""
    sessions_open: int
    sessions_started: int
    sessions_ended: int
    internal_errors: int
    store_errors: int
    """Session-store operations that failed (the store was down, full or unreadable)."""
    callback_errors: int
    """Exceptions raised by `on_session_start` / `on_session_end` callbacks (caught)."""
    inbound_rejected: int
    """Inbound ``session.id`` claims (W3C baggage) not adopted: the sender is not trusted by
    `accept_session_from`, or the id is invalid (see docs/security.md)."""
    llm_calls: int
    """LLM calls recorded by the instrumentation."""
    llm_calls_unpriced: int
    """LLM calls whose model is not in the pricing table (no cost recorded for them)."""


COUNTERS = Counters()
