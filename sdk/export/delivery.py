"""The SDK's OTLP span exporter: every batch on disk before its request, a sender thread for the network.

`SpoolingExporter.deliver(batch)` (called by the batch worker, never by the program) encodes the
batch and writes it to the spool (a write-ahead copy: no fsync, the page cache outlives a killed
process; a power loss is outside the promise), then hands it to the sender thread. The batch worker
never waits for the network, so a slow, hanging or refusing backend never holds up the queue, and
a ``kill -9`` loses only what had not reached the spool yet (at most `export_interval` plus the
time to encode a batch; see docs/export.md).

The sender thread sends the spooled batches oldest first, one request each (its own, also batches
an earlier process left in the same folder), and deletes each file once the backend accepted it:

- accepted → exported (a partial success counts the rejected spans as dropped);
- a retryable failure (connection refused or reset, timeout, 429/502/503/504, gRPC UNAVAILABLE,
  ...) → the file stays, the backend is believed down, and the sender retries the oldest file with
  exponential backoff; meanwhile new batches just wait on disk;
- a permanent failure (400, 401, ...) → the file is deleted, its spans dropped and counted.

A batch that waits on disk (the backend down, or slower than the program) counts in
`spans_spooled`; when it is sent, in `spans_exported`. Past `spool_max_bytes` batches are dropped,
counted in `spool_dropped`, and warned about once a minute with the figure. With the spool off
(`spool=False`) the batch worker sends each batch itself, retrying a retryable failure within
`export_timeout`, then drops it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.export.encode import encode_spans
from sdk.export.otlp import Endpoint, Sender, SendResult, make_sender
from sdk.export.spool import Spool, SpoolFile
from sdk.guard import internal_error, warn_every, warn_once
from sdk.otel_internals import suppressed_context
from sdk.state import STATE

logger = logging.getLogger("sessiontrace")
_MAX_BACKOFF = 30.0
MAX_FRESH = 16
"""Batches written moments ago kept in memory too, so the sender does not read them back; past it
(the backend slower than the program) a batch is read from disk when its turn comes."""


class Delivered(NamedTuple):
    """What became of one batch at once: spans exported, spooled (to be sent later) and dropped.

    With the spool on, a batch handed to the sender counts in none of them yet: the sender counts it
    when its request ends."""

    exported: int = 0
    spooled: int = 0
    dropped: int = 0
    failed: bool = False
    """True when a request failed (counted in export_errors)."""


def spool_full(spool: Spool, count: int, destination: str) -> None:
    """Count spans the spool had no room for, and warn (at most once a minute, with the figure)."""
    STATE.counters.spool_dropped.add_many(count)
    STATE.counters.spans_dropped.add_many(count)
    warn_every(
        f"spool-full-{spool.folder}",
        60.0,
        count,
        "sessiontrace: the spool %s is full (spool_max_bytes=%d) while %s cannot keep up; %d spans "
        "were dropped since the last warning (counted in sdk.stats().spool_dropped)",
        spool.folder,
        spool.max_bytes,
        destination,
    )


class SpoolingExporter(SpanExporter):
    """OTLP spans over HTTP or gRPC through the on-disk spool (see the module docstring).

    Cheap to construct and to warm: the sender (requests or grpc, slow to import) is built by the
    sender thread, so the batch worker can spool from its first moment.
    """

    def __init__(self, endpoint: Endpoint, spool: Spool | None, retry_interval: float = 2.0) -> None:
        self.endpoint = endpoint
        self.spool = spool
        self.name = endpoint.describe()
        self._retry_interval = retry_interval
        self._max_backoff = max(retry_interval, min(_MAX_BACKOFF, 16 * retry_interval))
        self._sender: Sender | None = None
        self._lock = threading.Lock()  # held while the sender is built (a fork waits for it)
        self._down = False
        self._deadline: float | None = None
        self._closed = False
        self._state = threading.Condition()  # guards _fresh, _down, _sending; wakes the sender and flushes
        self._fresh: dict[str, tuple[bytes, int]] = {}  # written by this process, not tried yet
        self._mine: set[str] = set()  # every batch this process spooled that is not settled yet
        self._sending: SpoolFile | None = None  # the claimed batch whose request is in flight
        self._held = False  # the sender holds a batch of this process's that is not counted yet
        self._abandoned: SpoolFile | None = None  # put back at shutdown while its request was in flight
        self._retry_after = 0.0
        self._wake = threading.Event()  # a new batch for the sender
        self._stop = threading.Event()  # set at shutdown: ends the sender's waits
        self._resender: threading.Thread | None = None
        self._resender_lock = threading.Lock()
        STATE.at_fork(
            self,
            before=self._hold_for_fork,
            after_in_parent=self._release_after_fork,
            after_in_child=self._after_fork,
        )

    def _hold_for_fork(self) -> None:
        self._lock.acquire()  # a fork waits for a sender being built

    def _release_after_fork(self) -> None:
        self._lock.release()

    def _after_fork(self) -> None:
        # The child opens its own connections and runs its own sender; the parent's batches (in
        # memory and in flight) are the parent's to send.
        self._lock = threading.Lock()
        self._sender = None
        self._resender = None
        self._resender_lock = threading.Lock()
        self._state = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fresh = {}
        self._mine = set()
        self._sending = None
        self._held = False
        self._abandoned = None

    # -- building --------------------------------------------------------------------------

    def warm(self) -> SpanExporter:
        """Start sending what an earlier process spooled; with the spool off, build the sender now
        (imports requests or grpc: the batch worker sends itself then)."""
        if self.spool is None:
            self._get_sender()
        elif self.spool.pending():
            self._start_resender()
        return self

    @property
    def built(self) -> Sender | None:
        """The sender, once built."""
        return self._sender

    def _get_sender(self) -> Sender:
        with self._lock:
            if self._sender is None:
                self._sender = make_sender(self.endpoint)
            return self._sender

    # -- the batch worker's side -----------------------------------------------------------

    def begin_shutdown(self, deadline: float) -> None:
        """From now on, no request may outlast `deadline` (a monotonic time)."""
        self._deadline = deadline

    def _timeout(self) -> float:
        timeout = self.endpoint.timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        return timeout

    def deliver(self, spans: Sequence[ReadableSpan]) -> Delivered:
        """Spool one batch and hand it to the sender (or, with the spool off, send it now); never
        raises for backend trouble. Runs on the batch worker: never waits for the network when the
        spool is on."""
        count = len(spans)
        data = encode_spans(spans)
        spool = self.spool
        if spool is None:
            return self._send_now(data, count)
        try:
            name = spool.put(data)
        except OSError as exc:
            warn_once(
                f"spool-write-{spool.folder}",
                "sessiontrace: cannot write to the spool %s (%s); batches are sent without an on-disk "
                "copy (a crash loses what is in flight)",
                spool.folder,
                exc,
            )
            return self._send_now(data, count)
        if name is None:
            spool_full(spool, count, self.name)
            return Delivered()
        with self._state:
            waits = self._down or self._closed or len(self._fresh) >= MAX_FRESH
            if not waits:
                self._fresh[name] = (data, count)
            self._mine.add(name)
        if waits:
            STATE.counters.spans_spooled.add_many(count)
        else:
            self._wake.set()
        self._start_resender()
        return Delivered()

    def _send_now(self, data: bytes, count: int) -> Delivered:
        """Without a spool: one request, retried in place within export_timeout when retryable."""
        if self._closed:
            return Delivered(dropped=count)
        timeout = self._timeout()
        if timeout <= 0:
            return Delivered(dropped=count)
        started = time.monotonic()
        result = self._get_sender().send(data, timeout)
        result = self._retry_in_place(data, result, started)
        if result.ok:
            return Delivered(exported=count - result.rejected, dropped=result.rejected)
        self._warn_failure(result, spooled=False)
        return Delivered(dropped=count, failed=True)

    def _retry_in_place(self, data: bytes, result: SendResult, started: float) -> SendResult:
        deadline = started + self.endpoint.timeout
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        delay = 0.1
        while not result.ok and result.retryable:
            wait = max(delay, result.retry_after or 0.0) * random.uniform(0.8, 1.2)
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(wait)
            delay = min(delay * 2, 2.0)
            result = self._get_sender().send(data, max(deadline - time.monotonic(), 0.001))
        return result

    def _warn_failure(self, result: SendResult, *, spooled: bool) -> None:
        if result.retryable and spooled and self.spool is not None:
            warn_once(
                f"backend-down-{self.name}",
                "sessiontrace: %s is unreachable (%s); batches are kept in %s and sent when it is back "
                "(counted in sdk.stats().spans_spooled; this is logged once)",
                self.name,
                result.error,
                self.spool.folder,
            )
        else:
            warn_once(
                f"export-failed-{self.name}",
                "sessiontrace: %s refused a batch (%s); failed batches are dropped and counted in "
                "sdk.stats().spans_dropped (this is logged once)",
                self.name,
                result.error,
            )

    def salvage(self, in_flight: Sequence[ReadableSpan] | None, queued: Sequence[ReadableSpan]) -> Delivered:
        """At shutdown, when the batch worker did not finish in time: spool what it still held."""
        total = Delivered()
        for spans in (in_flight or (), queued):
            if not spans:
                continue
            name = None
            if self.spool is not None:
                try:
                    name = self.spool.put(encode_spans(spans))
                except OSError:
                    name = None
            if name is None:
                total = total._replace(dropped=total.dropped + len(spans))
            else:
                total = total._replace(spooled=total.spooled + len(spans))
        return total

    def finish(self, deadline: float) -> None:
        """At shutdown, after the batch worker spooled everything: let the sender deliver this
        process's batches until `deadline` (a monotonic time), then leave the rest in the spool for
        the next process (counted in spans_spooled), the batch whose request is still in flight too."""
        self._deadline = deadline
        with self._state:
            # A backend that was down is waited for only while a request to it is in flight (it may
            # be back: that answer settles the batch and its files).
            while (
                (self._mine or self._held)
                and (not self._down or self._sending is not None)
                and self._resender_alive()
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
            self._closed = True
            self._stop.set()
            self._wake.set()
            waiting = sum(count for _, count in self._fresh.values())
            self._fresh.clear()
            item, self._sending = self._sending, None
            if item is not None:
                if self._held:
                    waiting += item.count
                    self._held = False
                self._abandoned = item
                if self.spool is not None:
                    self.spool.release(item)  # the sender's late answer, if it comes, deletes it again
            self._state.notify_all()
        if waiting:
            STATE.counters.spans_spooled.add_many(waiting)
            if self.spool is not None:
                warn_once(
                    f"salvaged-{self.name}",
                    "sessiontrace: %s did not take every batch in time; %d spans are kept in the spool %s "
                    "and sent when it answers (also by the next process started here)",
                    self.name,
                    waiting,
                    self.spool.folder,
                )

    def _resender_alive(self) -> bool:
        thread = self._resender
        return thread is not None and thread.is_alive()

    # -- the sender thread -----------------------------------------------------------------

    def _start_resender(self) -> None:
        with self._resender_lock:
            if self._resender is not None and self._resender.is_alive():
                return
            if self._closed:
                return
            self._resender = threading.Thread(target=self._send_loop, name="sessiontrace-spool", daemon=True)
            try:
                self._resender.start()
            except RuntimeError:  # interpreter shutting down: the next process sends the spool
                self._resender = None

    def _send_loop(self) -> None:
        otel_context.attach(suppressed_context())
        backoff = self._retry_interval
        wait = backoff if self._down else 0.0
        while True:
            if wait > 0:
                self._stop.wait(wait)  # a backoff: new batches wait on disk meanwhile
            if self._closed:
                return
            self._wake.clear()
            try:
                outcome = self._send_pending()
            except Exception as exc:
                internal_error("spool sender", exc)
                outcome = "failed"
            if outcome == "empty":
                self._wake.wait(30.0)  # a new batch; or, after a while, batches other processes left
                wait = 0.0
            elif outcome == "sent":
                backoff = self._retry_interval
                wait = 0.0
            else:
                wait = max(backoff, self._retry_after) * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self._max_backoff)

    def _send_pending(self) -> str:
        """Send the spooled batches oldest first until one fails: "sent", "failed" or "empty"."""
        spool = self.spool
        assert spool is not None
        with self._state:
            expected = set(self._fresh)  # before listing: a batch spooled meanwhile is not "gone"
        names = spool.pending()
        if not names:
            return self._taken_elsewhere(expected)
        sender = self._get_sender()
        for name in names:
            if self._closed:
                return "failed"
            with self._state:
                fresh = self._fresh.pop(name, None)
                self._held = fresh is not None  # flush() waits for it from now on
                mine = name in self._mine
            if not mine and self._deadline is not None:
                continue  # shutting down: only this process's batches; others wait for a later sender
            timeout = self._timeout()
            with self._state:  # claimed and in hand in one step: finish() either sees it or prevents it
                if self._closed or timeout <= 0:  # shutting down: leave it for the next process
                    first_try, self._held = self._held, False
                    self._state.notify_all()
                    if first_try and fresh is not None:
                        STATE.counters.spans_spooled.add_many(fresh[1])
                    return "failed"
                item = spool.claim(name, *fresh) if fresh is not None else spool.claim(name)
                if item is not None:
                    self._sending = item
            if item is None:
                if fresh is not None:  # another process took it from the spool and sends it
                    STATE.counters.spans_spooled.add_many(fresh[1])
                self._let_go(name)
                continue
            result = sender.send(item.data, timeout)
            with self._state:
                abandoned = self._abandoned is item
                if abandoned:
                    self._abandoned = None
                else:
                    self._sending = None
                first_try = self._held
            if abandoned:  # shutdown put it back in the spool (and counted it) while we waited
                if result.ok and spool.discard(item.name):
                    rejected = min(result.rejected, item.count)
                    STATE.counters.spans_exported.add_many(item.count - rejected)
                    STATE.counters.spans_dropped.add_many(rejected)
                return "failed"
            sent = self._settle(spool, item, result, first_try)
            self._let_go(name if sent else None)
            if not sent:
                return "failed"
        return "sent"

    def _taken_elsewhere(self, expected: set[str]) -> str:
        """The spool is empty: batches fresh before the listing and not in it were taken by another
        process, which sends them; "sent" if batches came meanwhile, else "empty"."""
        with self._state:
            gone = [name for name in expected if name in self._fresh]
            taken = sum(self._fresh.pop(name)[1] for name in gone)
            self._mine.difference_update(gone)
            more = bool(self._fresh)
            self._state.notify_all()
        STATE.counters.spans_spooled.add_many(taken)
        return "sent" if more else "empty"

    def _let_go(self, name: str | None) -> None:
        """The batch in hand is counted; `name` (when not None) is settled for good: flush() and
        finish() need not wait for them."""
        with self._state:
            self._held = False
            if name is not None:
                self._mine.discard(name)
            self._state.notify_all()

    def _settle(self, spool: Spool, item: SpoolFile, result: SendResult, first_try: bool) -> bool:
        """Count one request's outcome and keep or delete its file; False when the backend is down."""
        if result.ok:
            spool.done(item)
            rejected = min(result.rejected, item.count)
            STATE.counters.spans_exported.add_many(item.count - rejected)
            STATE.counters.spans_dropped.add_many(rejected)
            with self._state:
                self._down = False
                self._state.notify_all()
            return True
        STATE.counters.export_errors.add()
        if result.retryable:
            spool.release(item)
            with self._state:
                self._down = True
                self._retry_after = result.retry_after or 0.0
                waiting = sum(count for _, count in self._fresh.values())
                self._fresh.clear()  # they wait on disk until the backend is back
                # Counted before flush() waiters, woken now, read the counters.
                STATE.counters.spans_spooled.add_many(waiting + (item.count if first_try else 0))
                self._state.notify_all()
            self._warn_failure(result, spooled=True)
            return False
        spool.done(item)
        STATE.counters.spans_dropped.add_many(item.count)
        self._warn_failure(result, spooled=False)
        self._notify()
        return True

    def _notify(self) -> None:
        with self._state:
            self._state.notify_all()

    @property
    def closed(self) -> bool:
        """True once shut down."""
        return self._closed

    # -- SpanExporter ----------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The SpanExporter interface (the batch processor calls `deliver`, which counts)."""
        outcome = self.deliver(spans)
        return SpanExportResult.FAILURE if outcome.dropped else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Stop the sender (what it has not sent stays in the spool) and close connections."""
        if not self._closed:
            self.finish(time.monotonic())
        sender = self._sender
        if sender is not None:
            try:
                sender.close()
            except Exception as exc:
                internal_error(f"exporter {self.name}.shutdown", exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every batch this process spooled was sent (or the backend is known to be down:
        they wait in the spool); False when `timeout_millis` ran out first."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._state:
            while (self._mine or self._held) and not self._down and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._resender_alive():
                    return False
                self._state.wait(min(left, 0.5))
        return True

    def __repr__(self) -> str:
        return f"SpoolingExporter({self.name})"
