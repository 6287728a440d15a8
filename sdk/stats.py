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
        self.sessions_started = Counter()
        self.sessions_ended = Counter()
        self.internal_errors = Counter()


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
    sessions_open: int
    sessions_started: int
    sessions_ended: int
    internal_errors: int


COUNTERS = Counters()
