"""The SDK's OTLP span exporter: one attempt per batch, the spool for the rest, a resender thread.

`SpoolingExporter.deliver(batch)` (called by the batch worker, never by the program) encodes the
batch once and:

- sends it, when the backend is believed up: accepted → exported; a retryable failure (connection
  refused or reset, timeout, 429/502/503/504, gRPC UNAVAILABLE, ...) → the batch is written to the
  spool and the backend is believed down; a permanent failure (400, 401, ...) → dropped;
- writes it straight to the spool while the backend is believed down (no request, no waiting);
- with the spool off, retries a retryable failure within `export_timeout`, then drops it.

A resender thread (started when the spool has batches, also batches left by an earlier process in
the same data folder) sends spooled batches oldest first, with exponential backoff while they
fail; its first success marks the backend up again. Spans over the spool's cap are dropped;
every drop is counted in `sdk.stats()` and warned about once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.export.otlp import Endpoint, Sender, SendResult, make_sender
from sdk.export.spool import Spool
from sdk.guard import internal_error, warn_once
from sdk.stats import COUNTERS

logger = logging.getLogger("sessiontrace")
_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_MAX_BACKOFF = 30.0


class Delivered(NamedTuple):
    """What became of one batch: spans exported, spooled (to be sent later) and dropped."""

    exported: int = 0
    spooled: int = 0
    dropped: int = 0
    failed: bool = False
    """True when a request failed (counted in export_errors)."""


class SpoolingExporter(SpanExporter):
    """OTLP spans over HTTP or gRPC with the on-disk spool (see the module docstring).

    Cheap to construct: the sender (requests or grpc) is built by `warm()` on the batch worker.
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
        self._wake = threading.Event()
        self._resender: threading.Thread | None = None
        self._resender_lock = threading.Lock()
        # Batches shutdown() spooled while their request was still in flight: id(batch) -> file name.
        self._salvaged: dict[int, str] = {}
        if hasattr(os, "register_at_fork"):
            me = weakref.ref(self)

            def before() -> None:
                exporter = me()
                if exporter is not None:
                    exporter._lock.acquire()

            def after_in_parent() -> None:
                exporter = me()
                if exporter is not None:
                    exporter._lock.release()

            def after_in_child() -> None:
                exporter = me()
                if exporter is not None:
                    exporter._after_fork()

            os.register_at_fork(before=before, after_in_parent=after_in_parent, after_in_child=after_in_child)

    def _after_fork(self) -> None:
        # The child opens its own connections and runs its own resender (the parent's is not here).
        self._lock = threading.Lock()
        self._sender = None
        self._resender = None
        self._resender_lock = threading.Lock()
        self._wake = threading.Event()
        self._salvaged = {}

    # -- building --------------------------------------------------------------------------

    def warm(self) -> SpanExporter:
        """Build the sender now (imports requests or grpc), and resend what an earlier process spooled."""
        self._get_sender()
        if self.spool is not None and self.spool.pending():
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
        """From now on, no request may outlast `deadline` (a monotonic time); later batches are spooled."""
        self._deadline = deadline

    def _timeout(self) -> float:
        timeout = self.endpoint.timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        return timeout

    def deliver(self, spans: Sequence[ReadableSpan]) -> Delivered:
        """Send, spool or drop one batch; never raises for backend trouble."""
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        count = len(spans)
        data = encode_spans(spans).SerializeToString()
        if self._closed:
            return self._spool_or_drop(data, count, failed=False)
        if self._down and self.spool is not None:
            return self._spool_or_drop(data, count, failed=False)
        timeout = self._timeout()
        if timeout <= 0:  # shutting down and out of time: keep it for later
            return self._spool_or_drop(data, count, failed=False)
        started = time.monotonic()
        result = self._get_sender().send(data, timeout)
        if self.spool is None:
            result = self._retry_in_place(data, result, started)
        salvaged = self._salvaged.pop(id(spans), None)
        if salvaged is not None and self.spool is not None:
            # shutdown() gave up waiting and spooled this batch: keep exactly one copy.
            if result.ok:
                self.spool.discard(salvaged)
            return Delivered(exported=count if result.ok else 0, spooled=0 if result.ok else count)
        if result.ok:
            if self._down:
                self._down = False
            if self.spool is not None and self._resender is None and self.spool.pending():
                self._start_resender()
            return Delivered(exported=count - result.rejected, dropped=result.rejected, failed=False)
        self._warn_failure(result)
        if result.retryable:
            self._down = True
            return self._spool_or_drop(data, count, failed=True)
        return Delivered(dropped=count, failed=True)

    def _retry_in_place(self, data: bytes, result: SendResult, started: float) -> SendResult:
        """Without a spool: retry a retryable failure with backoff while export_timeout lasts."""
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

    def _spool_or_drop(self, data: bytes, count: int, *, failed: bool) -> Delivered:
        spool = self.spool
        if spool is None:
            return Delivered(dropped=count, failed=failed)
        try:
            stored = spool.put(data, count) is not None
        except OSError as exc:
            warn_once(
                f"spool-write-{spool.folder}",
                "sessiontrace: cannot write to the spool %s (%s); spans that cannot be sent are "
                "dropped and counted in sdk.stats().spans_dropped",
                spool.folder,
                exc,
            )
            return Delivered(dropped=count, failed=failed)
        if not stored:
            COUNTERS.spool_dropped.add_many(count)
            warn_once(
                f"spool-full-{spool.folder}",
                "sessiontrace: the spool %s is full (spool_max_bytes=%d) while %s is unreachable; "
                "spans are dropped and counted in sdk.stats().spans_dropped and spool_dropped",
                spool.folder,
                spool.max_bytes,
                self.name,
            )
            return Delivered(dropped=count, failed=failed)
        self._start_resender()
        return Delivered(spooled=count, failed=failed)

    def _warn_failure(self, result: SendResult) -> None:
        if result.retryable and self.spool is not None:
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
        """At shutdown, when time ran out: spool the queued spans and the batch still in flight.

        The batch in flight is spooled too; if its request succeeds after all, `deliver` deletes
        the spooled copy (so one copy is delivered).
        """
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        total = Delivered()
        parts: list[tuple[Sequence[ReadableSpan], bool]] = [(queued, False)]
        if in_flight:
            parts.insert(0, (in_flight, True))
        for spans, flying in parts:
            if not spans:
                continue
            if self.spool is None:
                total = total._replace(dropped=total.dropped + len(spans))
                continue
            data = encode_spans(spans).SerializeToString()
            try:
                name = self.spool.put(data, len(spans))
            except OSError:
                name = None
            if name is None:
                if not flying:
                    COUNTERS.spool_dropped.add_many(len(spans))
                total = total._replace(dropped=total.dropped + len(spans))
                continue
            if flying:
                self._salvaged[id(in_flight)] = name
            total = total._replace(spooled=total.spooled + len(spans))
        if total.spooled and self.spool is not None:
            warn_once(
                f"salvaged-{self.name}",
                "sessiontrace: %s did not answer in time; %d spans are kept in the spool %s and sent "
                "when it answers (also by the next process started here)",
                self.name,
                total.spooled,
                self.spool.folder,
            )
        return total

    # -- the resender ----------------------------------------------------------------------

    def _start_resender(self) -> None:
        with self._resender_lock:
            if self._resender is not None and self._resender.is_alive():
                self._wake.set()
                return
            if self._closed:
                return
            self._resender = threading.Thread(
                target=self._resend_loop, name="sessiontrace-spool", daemon=True
            )
            try:
                self._resender.start()
            except RuntimeError:  # interpreter shutting down: the next process sends the spool
                self._resender = None

    def _resend_loop(self) -> None:
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        backoff = self._retry_interval
        wait = 0.0 if not self._down else backoff
        while not self._closed:
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                if self.closed:
                    return
            try:
                outcome = self._resend_once()
            except Exception as exc:
                internal_error("spool resender", exc)
                outcome = "failed"
            if outcome == "empty":
                self._wake.wait()  # until a batch is spooled
                self._wake.clear()
                wait = 0.0
            elif outcome == "sent":
                backoff = self._retry_interval
                wait = 0.0
            else:
                wait = max(backoff, self._retry_after) * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self._max_backoff)

    _retry_after = 0.0

    def _resend_once(self) -> str:
        """Send the spooled batches oldest first until one fails: "sent", "failed" or "empty"."""
        spool = self.spool
        assert spool is not None
        names = spool.pending()
        if not names:
            return "empty"
        sender = self._get_sender()
        for name in names:
            if self._closed:
                return "failed"
            item = spool.claim(name)
            if item is None:
                continue  # another process took it
            try:
                data = item.read()
            except OSError:
                spool.release(item)
                continue
            timeout = self._timeout()
            if timeout <= 0:
                spool.release(item)
                return "failed"
            result = sender.send(data, timeout)
            if result.ok:
                spool.done(item)
                self._down = False
                COUNTERS.spans_exported.add_many(item.count - result.rejected)
                COUNTERS.spans_dropped.add_many(result.rejected)
                continue
            COUNTERS.export_errors.add()
            if result.retryable:
                spool.release(item)
                self._down = True
                self._retry_after = result.retry_after or 0.0
                return "failed"
            spool.done(item)
            COUNTERS.spans_dropped.add_many(item.count)
            self._warn_failure(result)
        return "sent"

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
        """Stop the resender (what it has not sent stays in the spool) and close connections."""
        self._closed = True
        self._wake.set()
        sender = self._sender
        if sender is not None:
            try:
                sender.close()
            except Exception as exc:
                internal_error(f"exporter {self.name}.shutdown", exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here (the spool is on disk)."""
        return True

    def __repr__(self) -> str:
        return f"SpoolingExporter({self.name})"
