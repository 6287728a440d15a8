"""A batching span processor with a bounded queue, counted drops and a flush that always returns.

Unlike OpenTelemetry's BatchSpanProcessor it counts every span it could not deliver, and its
`shutdown(timeout)` and `force_flush(timeout)` return within their timeout even when the
exporter hangs (the worker is a daemon thread; what it could not send is counted as dropped).
"""

from __future__ import annotations

import collections
import os
import threading
import weakref

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.guard import internal_error, warn_once
from sdk.stats import COUNTERS

_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY


class BatchExportProcessor(SpanProcessor):
    """Queue ended spans; a worker thread exports them in batches."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int,
        max_export_batch_size: int,
        export_interval: float,
    ) -> None:
        self.exporter = exporter
        self._max_queue = max_queue_size
        self._batch = max_export_batch_size
        self._interval = export_interval
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_waiters: list[threading.Event] = []
        self._stopping = False
        self._exporter_closed = False
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            weak_self = weakref.ref(self)

            def after_fork_in_child() -> None:
                me = weak_self()
                if me is not None:
                    me._after_fork()

            os.register_at_fork(after_in_child=after_fork_in_child)

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="sessiontrace-export", daemon=True)
        self._worker.start()

    def _after_fork(self) -> None:
        # The parent's queued spans are the parent's to send; locks may have been held at fork time.
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_waiters = []
        if not self._stopping:
            self._start_worker()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping:
            COUNTERS.spans_dropped.add()
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            COUNTERS.spans_dropped.add()
            warn_once(
                "queue-full",
                "sessiontrace: export queue full (max_queue_size=%d); spans are being dropped and "
                "counted in sdk.stats().spans_dropped",
                self._max_queue,
            )
            return
        queue.append(span)
        if len(queue) >= self._batch:
            self._wake.set()

    def _run(self) -> None:
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._flush_lock:
                waiters, self._flush_waiters = self._flush_waiters, []
            self._drain()
            for waiter in waiters:
                waiter.set()
            if self._stopping:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch: list[ReadableSpan] = []
            try:
                while len(batch) < self._batch:
                    batch.append(queue.popleft())
            except IndexError:
                pass
            self._export(batch)

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:
            result = self.exporter.export(batch)
        except Exception as exc:
            result = SpanExportResult.FAILURE
            internal_error(f"exporter {type(self.exporter).__name__}.export", exc)
        if result is SpanExportResult.SUCCESS:
            COUNTERS.spans_exported.add_many(len(batch))
        else:
            COUNTERS.export_errors.add()
            COUNTERS.spans_dropped.add_many(len(batch))
            warn_once(
                f"export-failed-{id(self.exporter)}",
                "sessiontrace: %s failed to export %d spans; failed batches are counted in "
                "sdk.stats().spans_dropped (this is logged once)",
                type(self.exporter).__name__,
                len(batch),
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now; True when done within the timeout."""
        if self._stopping or not self._worker.is_alive():
            return not self._queue
        done = threading.Event()
        with self._flush_lock:
            self._flush_waiters.append(done)
        self._wake.set()
        return done.wait(timeout_millis / 1000)

    def shutdown(self, timeout: float = 30.0, close_exporter: bool = True) -> None:
        """Export what is queued, then close the exporter; returns within `timeout` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._worker.join(timeout)
        if self._worker.is_alive():
            left = len(self._queue)
            self._queue.clear()
            COUNTERS.spans_dropped.add_many(left)
            warn_once(
                f"shutdown-timeout-{id(self)}",
                "sessiontrace: the exporter did not finish within %.1fs; %d queued spans were dropped "
                "(counted in sdk.stats().spans_dropped)",
                timeout,
                left,
            )
            if close_exporter:
                closer = threading.Thread(target=self._close_exporter, name="sessiontrace-close", daemon=True)
                closer.start()
                closer.join(0.1)
        elif close_exporter:
            self._close_exporter()

    def _close_exporter(self) -> None:
        if self._exporter_closed:
            return
        self._exporter_closed = True
        try:
            self.exporter.shutdown()
        except Exception as exc:
            internal_error(f"exporter {type(self.exporter).__name__}.shutdown", exc)
