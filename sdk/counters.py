"""Counters the SDK keeps about itself, read with `sdk.stats()`."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import NamedTuple


class Counter:
    """A thread-safe monotonic counter; `next()` on itertools.count is atomic in CPython.

    `add` is the count's own C-level ``__next__``: counting costs no Python frame on the span path.
    `add_many(n)` adds to a second, lock-protected sum: O(1) whatever `n` is.
    """

    __slots__ = ("_count", "_lock", "_many", "add")

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self.add: Callable[[], int] = self._count.__next__
        self._many = 0
        self._lock = threading.Lock()  # for add_many, which runs on the SDK's threads, rarely

    def add_many(self, n: int) -> None:
        """Add `n` (nothing when `n` is not positive)."""
        if n > 0:
            with self._lock:
                self._many += n

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at fork time stays held forever."""
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return counted(self._count) + self._many


def counted(count: itertools.count[int]) -> int:
    """How many values an ``itertools.count(1)`` has given (its repr is "count(N)", N the next)."""
    return int(repr(count)[6:-1]) - 1


class Counters:
    """The process's counters (``STATE.counters``: one for the whole process, re-init keeps counting)."""

    def __init__(self) -> None:
        self.reset()

    def after_fork(self) -> None:
        """In a forked child: fresh locks for every counter."""
        for value in vars(self).values():
            if isinstance(value, Counter):
                value.after_fork()

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
        # Nothing lost (issue 14) and hostile local files (issue 13):
        self.spans_dropped_queue_full = Counter()
        self.spool_rejected = Counter()
        self.torn_writes_recovered = Counter()
        self.store_spilled = Counter()
        self.store_dropped = Counter()
        # Sampling (issue 19):
        self.sessions_sampled_out = Counter()
        self.spans_sampled_out = Counter()


class Stats(NamedTuple):
    """A snapshot of the SDK's counters.

    `spans_dropped` counts every span that was not delivered, whatever the reason; the reasons
    with counters of their own are `spans_dropped_queue_full` (the in-memory queue) and
    `spool_dropped` (the disk budget); the rest are batches a backend refused for good, or spans
    still in memory when `shutdown()` stopped waiting with no spool to keep them. `internal_errors`
    counts failures inside the SDK that were caught so they could not reach your code (each kind
    is also logged once).
    """

    spans_started: int
    spans_ended: int
    spans_exported: int
    spans_dropped: int
    export_errors: int
    """Export requests that failed (a backend down, refusing or erroring), first tries and resends alike."""
    spans_spooled: int
    """Spans that waited in the on-disk spool to be delivered later: the backend was down, refusing
    or slower than the program, or the in-memory queue overflowed (for the OTLP and the file
    destinations). Once delivered they count in `spans_exported`."""
    spool_dropped: int
    """Spans dropped because the spool was full (`spool_max_bytes`, the disk budget); also in
    `spans_dropped`."""
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
    spans_dropped_queue_full: int = 0
    """Spans dropped because the in-memory queue (`max_queue_size`) was full and could not overflow
    to the spool: the export thread got too little CPU to spill them, or the destination has no
    spool (a custom exporter, `console`, OTLP with `spool=False`); also in `spans_dropped`."""
    spool_rejected: int = 0
    """Entries of a spool folder refused unread or unsent: symlinks, non-regular files, files over
    the spool's cap, or content that is not an OTLP request (files the SDK did not write)."""
    torn_writes_recovered: int = 0
    """Torn writes repaired when a destination started: a traces file's unfinished last line cut
    off, an empty or half-written file left by a killed process removed."""
    store_spilled: int = 0
    """Session-store records written to the overflow file because the store writer was more than
    its queue behind; they reach the store when it catches up (also after a restart)."""
    store_dropped: int = 0
    """Session-store records dropped because the overflow file was full too; also in `store_errors`."""
    sessions_sampled_out: int = 0
    """Sessions not exported because `sample_rate` dropped them and no `keep_*` rule kept them
    (their metrics and store records are kept)."""
    spans_sampled_out: int = 0
    """Spans of those sessions (and of sessions of other services the sample rate drops); not in
    `spans_dropped`, which counts losses."""
    otel_fallbacks: int = 0
    """Private OpenTelemetry names the SDK uses that this OpenTelemetry version lacks, each replaced
    by its public-API fallback (slower, correct; or, for the logs and metrics SDKs, that export off).
    ``python -m sdk doctor`` names them; one a supported release is known to lack (``_on_ending``
    before 1.40) is not warned about, any other is, once (docs/compatibility.md)."""
