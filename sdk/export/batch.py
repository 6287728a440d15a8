"""A batching span processor with a bounded queue that overflows to disk, and a flush that always returns.

Ending a span only appends it to a deque (the program's threads never wait for disk or network).
The worker thread exports batches; for the built-in destinations nothing is dropped while there is
disk room: the OTLP exporter puts every batch in its spool before any request (delivery.py), and
for the local traces file, when the queue backs up (past half of `max_queue_size`), the worker
*spills* batches to a spool as OTLP protobuf — several times cheaper than the JSON it would
otherwise write — and converts them to JSON lines, oldest first, as soon as it has caught up. A
span is dropped only when the queue is full all the same (the worker got too little CPU to spill,
or the destination has no spool) or the spool is full; each drop is counted per reason in
`sdk.stats()` and warned about at most once a minute with the figure.

Unlike OpenTelemetry's BatchSpanProcessor it counts every span it could not deliver, and its
`shutdown(timeout)` and `force_flush(timeout)` return within their timeout even when the
exporter hangs (the worker is a daemon thread; what it could not send, the batch stuck in the
exporter included, is spooled or counted as dropped).

The worker runs with OpenTelemetry's suppress-instrumentation key set in its context, so the
exporter's own HTTP or gRPC traffic is never traced by instrumentations that honour it. What
OpenTelemetry's exporters log from the SDK's threads (a line or three per failed batch while a
backend is down) is logged once per message; every failure stays counted in `sdk.stats()`.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from sdk.export.deferred import DeferredExporter
from sdk.export.spool import Spool
from sdk.guard import internal_error, report_due_warnings, warn_every, warn_once
from sdk.otel_internals import suppressed_context
from sdk.state import STATE

_THREAD_PREFIX = "sessiontrace-"


class _OncePerMessage(logging.Filter):
    """Let an exporter's log message through once when it comes from the SDK's export threads."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, object]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.threadName or "").startswith(_THREAD_PREFIX):
            return True  # the application's own use of the same exporter classes is left alone
        key = (record.name, record.msg)
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        return True


MARKER_NAME = "session.start"
_MARKER_KIND = "session.start"
MARKER_AFTER_NS = 1_000_000_000
"""A session still running this long after its start gets a marker at the next export (a shorter one
is exported whole, soon enough, when it ends)."""


class Companion(Protocol):
    """Flushed and closed with a batch processor (the metrics pipeline rides on the first one)."""

    def force_flush(self, timeout: float) -> bool: ...

    def shutdown(self, timeout: float) -> None: ...


def session_marker(session: Any) -> ReadableSpan | None:
    """The `session.start` marker of a running session: a zero-length child of its root span.

    Exported while the session runs, so a backend lists the session (its trace, its `session.id`)
    before the session's own span arrives at its end. None when the session has no real span.
    """
    root = session.span
    parent = root.get_span_context()
    if not parent.is_valid or not isinstance(root, ReadableSpan):
        return None
    attributes: dict[str, Any] = {
        "session.id": session.id,
        "session.name": session.name,
        "session.state": "running",
        "sessiontrace.span.kind": _MARKER_KIND,
    }
    if session.user_id is not None:
        attributes["user.id"] = session.user_id
    if session.tags:
        attributes["session.tags"] = tuple(session.tags)
    context = SpanContext(parent.trace_id, random.getrandbits(64) or 1, False, TraceFlags(TraceFlags.SAMPLED))
    return ReadableSpan(
        name=MARKER_NAME,
        context=context,
        parent=parent,
        resource=root.resource,
        attributes=attributes,
        start_time=session.started_ns,
        end_time=session.started_ns,
        instrumentation_scope=root.instrumentation_scope,
    )


def _quiet_exporter_logs(exporter: SpanExporter) -> None:
    """Add the once-per-message filter to the loggers of the OpenTelemetry modules `exporter` runs."""
    once = STATE.exporter_log_filter
    if once is None:
        once = STATE.exporter_log_filter = _OncePerMessage()
    for cls in type(exporter).__mro__:
        if cls.__module__.startswith("opentelemetry.exporter."):
            logger = logging.getLogger(cls.__module__)
            if once not in logger.filters:
                logger.addFilter(once)


OVERFLOW_FACTOR = 4
"""With a spool, the in-memory queue holds up to this many times `max_queue_size` spans (see __init__)."""
DROP_WARNING_INTERVAL = 60.0
"""Seconds between two warnings about spans dropped at a full queue (each gives the figure)."""


class LiveMarkers:
    """A session listener: tells each batch processor of a new session, for its live marker."""

    def __init__(self, batches: Sequence[BatchExportProcessor]) -> None:
        self._notes = tuple(batch.session_started for batch in batches)

    def on_session_start(self, session: Any, *, stored: bool) -> None:
        sampling = STATE.sampling
        if sampling is not None and sampling.holds(session.id):
            return  # no marker for a session that may not be exported
        for note in self._notes:
            note(session)

    def on_session_end(self, session: Any) -> None:
        pass


class BatchExportProcessor(SpanProcessor):
    """Queue ended spans; a worker thread exports them in batches."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int,
        max_export_batch_size: int,
        export_interval: float,
        spill: Spool | None = None,
        prepare: Callable[[list[ReadableSpan]], list[ReadableSpan]] | None = None,
    ) -> None:
        """`spill`: where batches overflow when the queue backs up, for an exporter that takes
        encoded batches too (`export_encoded`, the local traces file). `prepare`: run on the worker
        over each batch before it is exported or spilled (secrets scrubbed: export/scrub.py)."""
        self.exporter = exporter
        self._prepare = prepare
        name = getattr(exporter, "name", None)
        self._exporter_name = (
            name
            if isinstance(name, str)
            and (isinstance(exporter, DeferredExporter) or hasattr(exporter, "deliver"))
            else type(exporter).__name__
        )
        _quiet_exporter_logs(exporter)
        self._batch = max_export_batch_size
        self._interval = export_interval
        self._spill = spill if spill is not None and hasattr(exporter, "export_encoded") else None
        self._spill_high = max(1, max_queue_size // 2)  # queued spans from which batches spill
        # With a spool behind it, the queue takes up to OVERFLOW_FACTOR times max_queue_size: what the
        # worker could not spill yet because it got no CPU for a moment (a GIL convoy of many busy
        # threads stalls it for hundreds of milliseconds); without one, past max_queue_size spans drop.
        spools = self._spill is not None or getattr(exporter, "spool", None) is not None
        self._max_queue = max_queue_size * (OVERFLOW_FACTOR if spools else 1)
        self._spilled = False  # batches may be waiting in the spill (this process's or left earlier)
        self._deadline: float | None = None  # set by shutdown(): converting spilled batches stops then
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_waiters: list[threading.Event] = []
        self._stopping = False
        self._append_lock = threading.Lock()
        self._exporter_closed = False
        # The batch the exporter is working on; shutdown() takes it over when it gives up waiting.
        self._inflight_lock = threading.Lock()
        self._inflight: list[ReadableSpan] | None = None
        # Set by the Runtime that owns this processor: hands a span this processor refuses because
        # it is stopping (a re-init replaced its pipeline) to the pipeline current now.
        self.hand_on: Callable[[ReadableSpan], bool] | None = None
        # Sessions started since the last export, for their live markers (bounded: best effort).
        self._new_sessions: collections.deque[Any] = collections.deque(maxlen=max_queue_size)
        self._markers_max = max_queue_size
        self.companions: list[Companion] = []
        self._start_worker()
        STATE.at_fork(self, after_in_child=self._after_fork)

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name=f"{_THREAD_PREFIX}export", daemon=True)
        self._worker.start()

    def _after_fork(self) -> None:
        # The parent's queued spans are the parent's to send; locks may have been held at fork time.
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_waiters = []
        self._append_lock = threading.Lock()
        self._inflight_lock = threading.Lock()
        self._inflight = None
        self._new_sessions = collections.deque(maxlen=self._markers_max)
        if not self._stopping:
            self._start_worker()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def session_started(self, session: Any) -> None:
        """Note a new session: at the next export, if it is still running, its marker is exported."""
        self._new_sessions.append(session)

    def _add_markers(self, now_ns: int) -> None:
        sessions = self._new_sessions
        while sessions:
            session = sessions[0]  # oldest first: the first one too young ends the scan
            if session.ended and not session.marked:
                sessions.popleft()
                continue  # its own span is exported when it ends
            if now_ns - session.started_ns < MARKER_AFTER_NS and not self._stopping:
                return
            sessions.popleft()
            marker = session_marker(session)
            if marker is not None:
                session.note_marker()  # counted in span_count, as backends count it
                self.on_end(marker)

    def on_end(self, span: ReadableSpan) -> None:
        # The check and the append are one step under the lock: once shutdown() has set _stopping,
        # no span can slip into the queue after the worker's last drain (a span ending on a pipeline
        # that init() is replacing right now is either exported by it or counted as dropped).
        with self._append_lock:
            if self._stopping:
                full = False
            elif len(self._queue) >= self._max_queue:
                full = True
            else:
                self._queue.append(span)
                if (len(self._queue) >= self._batch or self._interval <= 0) and not self._wake.is_set():
                    self._wake.set()
                return
        # A span that chose this pipeline just before init() replaced it (it read runtime._current,
        # then waited for the GIL or for _append_lock while the old pipeline began to close) goes to
        # the new pipeline: exported once, not dropped.
        if not full and self.hand_on is not None and self.hand_on(span):
            return
        STATE.counters.spans_dropped.add()
        if full:  # warned about by the worker (the program's thread does no I/O)
            STATE.counters.spans_dropped_queue_full.add()

    def _run(self) -> None:
        otel_context.attach(suppressed_context())
        warm = getattr(self.exporter, "warm", None)
        start_building = getattr(self.exporter, "start_building", None)
        if self._spill is not None and start_building is not None:
            start_building()  # meanwhile the worker spills what backs up
        elif callable(warm):
            try:
                _quiet_exporter_logs(warm())
            except Exception as exc:  # e.g. the grpc extra missing: export() will fail and count
                internal_error(f"building exporter {self._exporter_name}", exc)
        if self._spill is not None:
            self._spilled = bool(self._spill.pending())  # what an earlier process left, converted first
        # export_interval=0 means "export as soon as a span ends": on_end wakes the worker then.
        interval = self._interval if self._interval > 0 else None
        while True:
            # Spilled batches wait: convert them as soon as the queue leaves time for it.
            self._wake.wait(0.0 if self._spilled and len(self._queue) < self._batch else interval)
            self._wake.clear()
            with self._flush_lock:
                waiters, self._flush_waiters = self._flush_waiters, []
            stopping = self._stopping  # read before draining: no span is queued after it was set
            if self._new_sessions and not stopping:
                try:
                    self._add_markers(time.time_ns())
                except Exception as exc:
                    internal_error("session start markers", exc)
            self._drain()
            if self._spilled:
                try:
                    self._unspill(everything=bool(waiters) or stopping)
                except Exception as exc:
                    internal_error(f"exporter {self._exporter_name} spill", exc)
            self._report_drops()
            for waiter in waiters:
                waiter.set()
            if stopping:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            # Spill while the queue backs up, while older batches wait in the spill (age order), and
            # while the exporter is still being built.
            spill = self._spill is not None and (
                self._spilled
                or len(queue) >= self._spill_high
                or getattr(self.exporter, "built", True) is None
            )
            batch: list[ReadableSpan] = []
            try:
                while len(batch) < self._batch:
                    batch.append(queue.popleft())
            except IndexError:
                pass
            if self._prepare is not None:
                try:
                    batch = self._prepare(batch)
                except Exception as exc:  # never export or spill what could not be scrubbed
                    STATE.counters.spans_dropped.add_many(len(batch))
                    internal_error(f"preparing a batch for {self._exporter_name}", exc)
                    continue
            if spill:
                self._spill_batch(batch)
            else:
                self._export(batch)

    def _spill_batch(self, batch: list[ReadableSpan]) -> None:
        """Write one batch to the spill, as OTLP protobuf (converted by `_unspill` later)."""
        from sdk.export.encode import encode_spans

        spill = self._spill
        assert spill is not None
        try:
            name = spill.put(encode_spans(batch))
        except Exception as exc:  # the disk refuses: try the destination itself
            warn_once(
                f"spill-write-{spill.folder}",
                "sessiontrace: cannot write to the spool %s (%s); the queue does not overflow to disk",
                spill.folder,
                exc,
            )
            self._export(batch)
            return
        if name is None:
            from sdk.export.delivery import spool_full

            spool_full(spill, len(batch), self._exporter_name)
            return
        self._spilled = True
        STATE.counters.spans_spooled.add_many(len(batch))

    def _unspill(self, *, everything: bool) -> None:
        """Hand spilled batches to the exporter, oldest first: until the queue needs the worker
        again, or (`everything`, for a flush or at shutdown) all of them, within the deadline."""
        spill = self._spill
        assert spill is not None
        names = spill.pending()
        if not names:
            self._spilled = False
            return
        if getattr(self.exporter, "built", True) is None and not everything:
            return  # still being built
        export_encoded = self.exporter.export_encoded  # type: ignore[attr-defined]
        for name in names:
            if not everything and len(self._queue) >= self._batch:
                return
            if self._deadline is not None and time.monotonic() > self._deadline - 0.1:
                return  # left in the spill for the next process
            item = spill.claim(name)
            if item is None:
                continue
            try:
                result = export_encoded(item.data)
            except Exception:
                spill.release(item)
                raise
            if result is SpanExportResult.SUCCESS:
                spill.done(item)
                STATE.counters.spans_exported.add_many(item.count)
            else:  # the traces file cannot be written now: keep it, try again later
                spill.release(item)
                STATE.counters.export_errors.add()
                return
        self._spilled = bool(spill.pending())

    def _report_drops(self) -> None:
        """Warn about spans dropped at a full queue since the last time (at most once a minute)."""
        dropped = STATE.counters.spans_dropped_queue_full.value
        with STATE.queue_full_lock:  # one figure for every processor
            seen = STATE.queue_full_seen
            new = dropped - seen if dropped >= seen else dropped  # the counters were reset
            STATE.queue_full_seen = dropped
        if new:
            warn_every(
                "queue-full",
                DROP_WARNING_INTERVAL,
                new,
                "sessiontrace: export queue full (%d spans in memory; max_queue_size) and the spans "
                "could not overflow to disk in time; %d spans were dropped since the last warning "
                "(counted in sdk.stats().spans_dropped_queue_full)",
                self._max_queue,
            )
        report_due_warnings()

    def _export(self, batch: list[ReadableSpan]) -> None:
        with self._inflight_lock:
            self._inflight = batch
        error: Exception | None = None
        deliver = getattr(self.exporter, "deliver", None)
        if deliver is not None:  # the SDK's OTLP exporter: it says what it sent, spooled and dropped
            try:
                delivered = deliver(batch)
            except Exception as exc:
                if self._settle(batch):
                    STATE.counters.export_errors.add()
                    STATE.counters.spans_dropped.add_many(len(batch))
                internal_error(f"exporter {self._exporter_name}.export", exc)
                return
            if self._settle(batch):
                STATE.counters.spans_exported.add_many(delivered.exported)
                STATE.counters.spans_spooled.add_many(delivered.spooled)
                STATE.counters.spans_dropped.add_many(delivered.dropped)
                if delivered.failed:
                    STATE.counters.export_errors.add()
            return
        try:
            result = self.exporter.export(batch)
        except Exception as exc:
            result = SpanExportResult.FAILURE
            error = exc
        if self._settle(batch):  # else shutdown() gave up on this batch and counted it as dropped
            if result is SpanExportResult.SUCCESS:
                STATE.counters.spans_exported.add_many(len(batch))
            else:
                STATE.counters.export_errors.add()
                STATE.counters.spans_dropped.add_many(len(batch))
                warn_once(
                    f"export-failed-{id(self.exporter)}",
                    "sessiontrace: %s failed to export %d spans; failed batches are counted in "
                    "sdk.stats().spans_dropped (this is logged once)",
                    self._exporter_name,
                    len(batch),
                )
        if error is not None:  # last: the SDK's own tests make internal_error() re-raise
            internal_error(f"exporter {self._exporter_name}.export", error)

    def _settle(self, batch: list[ReadableSpan]) -> bool:
        """Mark `batch` as no longer in flight; False if shutdown() already took it over."""
        with self._inflight_lock:
            if self._inflight is not batch:
                return False
            self._inflight = None
            return True

    def take_undelivered(self) -> int:
        """Remove what is queued and the batch in flight; return how many spans that was."""
        in_flight, queued = self._take_undelivered_spans()
        return len(queued) + (len(in_flight) if in_flight is not None else 0)

    def _take_undelivered_spans(self) -> tuple[list[ReadableSpan] | None, list[ReadableSpan]]:
        """Remove and return the batch in flight and what is queued."""
        queued: list[ReadableSpan] = []
        queue = self._queue
        while True:
            try:
                queued.append(queue.popleft())
            except IndexError:
                break
        with self._inflight_lock:
            in_flight, self._inflight = self._inflight, None
        return in_flight, queued

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now (and flush the companions); True when done within the timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        if self._stopping or not self._worker.is_alive():
            ok = not self._queue
        else:
            done = threading.Event()
            with self._flush_lock:
                self._flush_waiters.append(done)
            self._wake.set()
            ok = done.wait(timeout_millis / 1000)
        if ok and hasattr(self.exporter, "deliver"):  # the SDK's OTLP exporter: its sender too
            ok = self.exporter.force_flush(int(max(deadline - time.monotonic(), 0.0) * 1000))
        for companion in self.companions:
            try:
                ok = companion.force_flush(max(deadline - time.monotonic(), 0.0)) and ok
            except Exception as exc:
                internal_error(f"{type(companion).__name__}.force_flush", exc)
        return ok

    def shutdown(self, timeout: float = 30.0, close_exporter: bool = True) -> None:
        """Export what is queued, then close the exporter; returns within `timeout` seconds."""
        with self._append_lock:
            if self._stopping:
                return
            self._stopping = True
        deadline = time.monotonic() + timeout
        self._deadline = deadline - min(0.25 * timeout, 0.5)
        companions, self.companions = self.companions, []
        begin_shutdown = getattr(self.exporter, "begin_shutdown", None)
        if begin_shutdown is not None:
            # Requests end before the deadline, leaving time to spool what could not be sent.
            begin_shutdown(deadline - min(0.25 * timeout, 0.5))
        self._wake.set()
        self._worker.join(timeout * 0.9 if companions else timeout)
        for companion in companions:
            try:
                companion.shutdown(max(deadline - time.monotonic(), 0.0))
            except Exception as exc:
                internal_error(f"{type(companion).__name__}.shutdown", exc)
        self._worker.join(max(deadline - time.monotonic(), 0.0))
        if self._worker.is_alive():
            in_flight, queued = self._take_undelivered_spans()
            left = len(queued) + (len(in_flight) if in_flight is not None else 0)
            salvage = getattr(self.exporter, "salvage", None)
            if salvage is not None and left:  # the SDK's OTLP exporter: spool them for the next run
                try:
                    kept = salvage(in_flight, queued)
                    STATE.counters.spans_spooled.add_many(kept.spooled)
                    left = kept.dropped
                except Exception as exc:
                    internal_error(f"exporter {self._exporter_name}.salvage", exc)
            STATE.counters.spans_dropped.add_many(left)
            if not left:
                if close_exporter:
                    self._close_in_background()
                return
            warn_once(
                f"shutdown-timeout-{id(self)}",
                "sessiontrace: the exporter did not finish within %.1fs; %d spans were dropped "
                "(counted in sdk.stats().spans_dropped)",
                timeout,
                left,
            )
            if close_exporter:
                self._close_in_background()
            return
        # Nothing is left when the worker finished (on_end stops queueing first); count it if so.
        STATE.counters.spans_dropped.add_many(self.take_undelivered())
        finish = getattr(self.exporter, "finish", None)
        if finish is not None and close_exporter:  # the OTLP sender delivers what it can until then
            finish(deadline - min(0.1 * timeout, 0.2))
        if close_exporter:
            self._close_exporter()

    def _close_in_background(self) -> None:
        # Closing may wait for the stuck export; do it aside. At interpreter exit (3.12+) no thread
        # can be started any more: the process is ending, so skip it then.
        closer = threading.Thread(target=self._close_exporter, name=f"{_THREAD_PREFIX}close", daemon=True)
        try:
            closer.start()
        except RuntimeError:
            return
        closer.join(0.1)

    def _close_exporter(self) -> None:
        if self._exporter_closed:
            return
        self._exporter_closed = True
        try:
            self.exporter.shutdown()
        except Exception as exc:
            internal_error(f"exporter {self._exporter_name}.shutdown", exc)
