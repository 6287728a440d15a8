"""The one swappable pipeline: exporters and processors behind the SDK's span processor.

The only module-level state is one lock-protected reference to the current `Runtime`. `init()`
builds a new Runtime and swaps it in; the old one is flushed and closed in the background, so a
span that started before the swap and ends after it goes to the new pipeline, exactly once.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.version import __version__ as otel_sdk_version

from sdk.dialects import DialectTranslator
from sdk.guard import internal_error, warn_once
from sdk.settings import Config
from sdk.state import STATE
from sdk.version import __version__

if TYPE_CHECKING:  # the export modules are imported by build_runtime(), not by `import sdk`
    from opentelemetry.sdk.trace.export import SpanExporter

    from sdk.export.batch import BatchExportProcessor
    from sdk.export.spool import Spool
    from sdk.foreign import ExportPlan
    from sdk.store import SessionStore
    from sdk.store.writer import StoreWriter


T = TypeVar("T")


class SessionListener(Protocol):
    """Told when a session starts and ends (the store writer, metrics, the user's callbacks).

    `session` is an `sdk.session_core.Session` (this module sits below it and does not import it).
    Called in the thread that started or ended the session; must be quick and must not raise.
    """

    def on_session_start(self, session: Any, *, stored: bool) -> None: ...

    def on_session_end(self, session: Any) -> None: ...


class Runtime:
    """One export pipeline built from one Config."""

    def __init__(
        self,
        config: Config | None,
        processors: Sequence[SpanProcessor] = (),
        tracer: trace.Tracer | None = None,
        batches: Sequence[BatchExportProcessor] = (),
        store_writer: StoreWriter | None = None,
        session_listeners: Sequence[SessionListener] = (),
    ) -> None:
        self.config = config
        self.store_writer = store_writer
        self.store: SessionStore | None = store_writer.store if store_writer is not None else None
        self.session_listeners: tuple[SessionListener, ...] = tuple(session_listeners)
        self.enabled = config is not None and config.enabled
        self.batches = tuple(batches)
        self.processors: tuple[SpanProcessor, ...] = (*self.batches, *processors)
        self.starters = tuple(processors)
        self._enders = tuple((p.on_end, type(p).__name__) for p in self.processors)
        self.tracer: trace.Tracer = tracer or trace.NoOpTracer()
        self.attribute_max_length = config.attribute_max_length if config else 4096
        self.summary = bool(config is not None and self.enabled and config.summary_enabled)
        self.plan: ExportPlan | None = None
        """Where this pipeline exports beside the application's (None: no plan was made)."""
        for batch in self.batches:
            batch.hand_on = self._hand_on

    def _hand_on(self, span: ReadableSpan) -> bool:
        """Give a span this (replaced) pipeline's batch processor refused to the current pipeline's.

        False when this is still the current pipeline or the SDK was shut down: then it is dropped
        and counted. Only the export path is repeated; span processors of the application saw the
        span already.
        """
        now = current()
        if now is self or not now.batches:
            return False
        for batch in now.batches:
            batch.on_end(span)
        return True

    def on_start(self, span: Span, parent_context: Context | None) -> None:
        for processor in self.starters:
            try:
                processor.on_start(span, parent_context)
            except Exception as exc:
                internal_error(f"span processor {type(processor).__name__}.on_start", exc)

    def on_end(self, span: ReadableSpan) -> None:
        if not self.enabled:  # a span that started before shutdown() or init(enabled=False)
            STATE.counters.spans_dropped.add()
            return
        sampling = STATE.sampling
        if sampling is not None and sampling.engaged:
            for admitted in sampling.admit(span):
                self.deliver(admitted)
        else:
            self.deliver(span)

    def deliver(self, span: ReadableSpan) -> None:
        """Hand an ended span that sampling admitted to the pipeline's processors."""
        for on_end, name in self._enders:
            try:
                on_end(span)
            except Exception as exc:
                internal_error(f"span processor {name}.on_end", exc)

    def session_started(self, session: Any, *, stored: bool) -> None:
        """Tell the listeners a session started (`stored`: its record was written by a resume)."""
        for listener in self.session_listeners:
            try:
                listener.on_session_start(session, stored=stored)
            except Exception as exc:
                internal_error(f"session listener {type(listener).__name__}", exc)

    def session_ended(self, session: Any) -> None:
        """Tell the listeners a session ended."""
        for listener in self.session_listeners:
            try:
                listener.on_session_end(session)
            except Exception as exc:
                internal_error(f"session listener {type(listener).__name__}", exc)

    def store_call(self, call: Callable[[], T]) -> T | None:
        """A synchronous store operation (a resume): on failure warned once, counted, None."""
        if self.store_writer is None:
            return None
        return self.store_writer.call(call)

    def summary_wanted(self, show: bool | None) -> bool:
        """Whether an ended session prints its summary line (`show`: the session's own setting)."""
        return self.enabled and (show if show is not None else self.summary)

    def force_flush(self, timeout: float) -> bool:
        """Export everything queued (and write pending session records); False when the timeout (for
        all processors together) ran out before every span was exported."""
        deadline = time.monotonic() + timeout
        ok = True
        for batch in self.batches:
            ok = batch.force_flush(int(max(deadline - time.monotonic(), 0.0) * 1000)) and ok
        if self.store_writer is not None:
            # Session records are written within the deadline too, but the result is about spans:
            # a slow store is counted and retried by its writer (see docs/sessions.md).
            self.store_writer.flush(max(deadline - time.monotonic(), 0.0))
        for processor in self.starters:
            # Other processors (OpenTelemetry's BatchSpanProcessor among them) may not honour a
            # timeout: give each the time left, in a daemon thread.
            left = max(deadline - time.monotonic(), 0.0)
            done = _call_within(
                functools.partial(processor.force_flush, int(left * 1000)),
                left,
                f"span processor {type(processor).__name__}.force_flush",
            )
            ok = done is True and ok
        return ok

    def shutdown(self, timeout: float, keep: Sequence[object] = ()) -> None:
        """Flush and close every processor (except those in `keep`, still used by a newer pipeline).

        Returns within `timeout` seconds in all: the SDK's batch processors honour it themselves;
        other processors (the application's, with no timeout of their own) are shut down in a
        daemon thread that is given the time left.
        """
        deadline = time.monotonic() + timeout
        writer = self.store_writer
        if writer is not None:
            if any(writer is k for k in keep):
                writer.flush(timeout / 2)
            else:
                writer.close(timeout / 2)
        for batch in self.batches:
            left = max(deadline - time.monotonic(), 0.0)
            try:
                batch.shutdown(left, close_exporter=not any(batch.exporter is k for k in keep))
            except Exception as exc:
                internal_error(f"span processor {type(batch).__name__}.shutdown", exc)
        for processor in self.starters:
            left = max(deadline - time.monotonic(), 0.0)
            name = type(processor).__name__
            if any(processor is k for k in keep):
                stop = functools.partial(processor.force_flush, int(left * 1000))
                _call_within(stop, left, f"span processor {name}.force_flush")
            else:
                _call_within(processor.shutdown, left, f"span processor {name}.shutdown")


def _call_within(call: Callable[[], object], timeout: float, where: str) -> object:
    """Run `call` in a daemon thread and wait for it at most `timeout` seconds.

    For the application's processors, which may not honour a timeout of their own. Returns what
    `call` returned, or None when it timed out or raised (an internal error, logged once).
    """
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:
            internal_error(where, exc)

    worker = threading.Thread(target=run, name="sessiontrace-close", daemon=True)
    try:
        worker.start()
    except RuntimeError:  # interpreter shutdown (3.12+ starts no new thread in exit handlers): call it here
        run()
        return result[0] if result else None
    worker.join(timeout)
    return result[0] if result else None


def build_resource(config: Config) -> Resource:
    """service.name, telemetry.sdk.*, process.* and the user's resource attributes."""
    attributes: dict[str, str | int] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": otel_sdk_version,
        "telemetry.distro.name": "sessiontrace",
        "telemetry.distro.version": __version__,
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.executable.name": os.path.basename(sys.executable),
    }
    attributes.update(config.resource_attributes)
    attributes["service.name"] = config.service_name
    # Not Resource.create(): it would read OTEL_RESOURCE_ATTRIBUTES again, which the config resolved.
    return Resource(attributes)


def build_exporter(config: Config, destination: str | SpanExporter | None = None) -> SpanExporter | None:
    """The SpanExporter for one destination of the config (default: its first; None for `none`).

    The built-in exporters are deferred: their modules are imported and the exporter is built on
    the export worker's thread, so init() stays fast whatever the exporter needs. OTLP goes through
    the SDK's own spooling exporter (sdk/export/delivery.py), itself cheap to build.
    """
    from sdk.export.deferred import DeferredExporter

    if destination is None:
        destination = config.destinations[0]
    if not isinstance(destination, str):
        return destination
    if destination == "none":
        return None
    if destination == "otlp":
        from sdk.export.delivery import SpoolingExporter
        from sdk.export.otlp import traces_endpoint
        from sdk.export.spool import Spool

        endpoint = traces_endpoint(config)
        spool = Spool(config.data_dir, endpoint.key, config.spool_max_bytes) if config.spool else None
        return SpoolingExporter(endpoint, spool, config.spool_retry_interval)
    return DeferredExporter(functools.partial(_make_exporter, config, destination), destination)


def _spill(config: Config, destination: str | SpanExporter) -> Spool | None:
    """Where the local traces file's queue overflows (the OTLP exporter has a spool of its own)."""
    if destination != "file" or not config.spool:
        return None
    from sdk.export.spool import Spool

    return Spool(config.data_dir, "traces", config.spool_max_bytes)


def _make_exporter(config: Config, kind: str) -> SpanExporter:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stdout)
    from sdk.export.jsonl import OTLPJsonFileExporter

    return OTLPJsonFileExporter(config.data_dir, config.file_max_bytes)


class _Callbacks:
    """The application's `on_session_start` / `on_session_end` callbacks, as a session listener.

    A callback that raises is logged once (per callback and exception type) and counted in
    `sdk.stats().callback_errors`; the session goes on.
    """

    def __init__(self, on_start: Sequence[Callable[..., Any]], on_end: Sequence[Callable[..., Any]]) -> None:
        self.on_start = tuple(on_start)
        self.on_end = tuple(on_end)

    def on_session_start(self, session: Any, *, stored: bool) -> None:
        for callback in self.on_start:
            self._call(callback, session, "on_session_start")

    def on_session_end(self, session: Any) -> None:
        for callback in self.on_end:
            self._call(callback, session, "on_session_end")

    @staticmethod
    def _call(callback: Callable[..., Any], session: Any, which: str) -> None:
        try:
            callback(session)
        except Exception as exc:
            STATE.counters.callback_errors.add()
            name = getattr(callback, "__qualname__", type(callback).__name__)
            warn_once(
                f"callback-{which}-{name}-{type(exc).__name__}",
                "sessiontrace: the %s callback %s raised %s: %s (the session goes on; further "
                "errors are counted in sdk.stats().callback_errors)",
                which,
                name,
                type(exc).__name__,
                exc,
            )


def _store_writer(config: Config, previous: Runtime | None) -> StoreWriter | None:
    """The session store's writer: the previous pipeline's when the store settings are unchanged."""
    if previous is not None and previous.store_writer is not None and previous.config is not None:
        old = previous.config
        if (old.session_store, old.data_dir, old.session_expiry, old.store_write_interval) == (
            config.session_store,
            config.data_dir,
            config.session_expiry,
            config.store_write_interval,
        ):
            return previous.store_writer
    from sdk.store import open_store
    from sdk.store.writer import StoreWriter

    try:
        store = open_store(config.session_store, config.data_dir, config.session_expiry)
    except Exception as exc:
        STATE.counters.store_errors.add()
        warn_once(
            "session-store-open",
            "sessiontrace: the session store (%s) cannot be opened: %s. Sessions work without persistence",
            config.masked("session_store"),
            f"{type(exc).__name__}: {exc}",
        )
        return None
    return None if store is None else StoreWriter(store, config.store_write_interval, config.data_dir)


def build_runtime(
    config: Config, tracer: trace.Tracer, previous: Runtime | None = None, plan: ExportPlan | None = None
) -> Runtime:
    """A new pipeline for `config`. Never blocks on the network: exporters connect lazily.

    `previous`: the pipeline being replaced, whose session store is kept when its settings match.
    `plan`: which destinations to export to beside the application's own pipeline (sdk/foreign.py;
    default: every destination of the config)."""
    if not config.enabled:
        return Runtime(config, (), tracer)
    built = _build_runtime(config, tracer, previous, config.destinations if plan is None else plan.exported)
    built.plan = plan
    return built


def _build_runtime(
    config: Config,
    tracer: trace.Tracer,
    previous: Runtime | None,
    destinations: Sequence[str | SpanExporter],
) -> Runtime:
    from sdk.export.batch import BatchExportProcessor
    from sdk.export.scrub import scrub_spans
    from sdk.redaction import scrubber_for

    scrubber = scrubber_for(config)
    translator = DialectTranslator(config.dialects)
    translate = translator.attributes_of if translator.enabled else None
    prepare: Callable[[list[ReadableSpan]], list[ReadableSpan]] | None = (
        functools.partial(scrub_spans, scrubber=scrubber, translate=translate)
        if scrubber.enabled or translate is not None
        else None
    )
    # One batch processor (queue and worker) per destination: a backend that is down never holds
    # up the local file, and each destination gets every span.
    batches = []
    for destination in destinations:
        exporter = build_exporter(config, destination)
        if exporter is not None:
            batches.append(
                BatchExportProcessor(
                    exporter,
                    max_queue_size=config.max_queue_size,
                    max_export_batch_size=config.max_export_batch_size,
                    export_interval=config.export_interval,
                    spill=_spill(config, destination),
                    prepare=prepare,
                )
            )
    writer = _store_writer(config, previous)
    listeners: list[SessionListener] = [writer] if writer is not None else []
    listeners += _export_listeners(config, batches)
    if config.on_session_start or config.on_session_end:
        listeners.append(_Callbacks(config.on_session_start, config.on_session_end))
    return Runtime(config, config.span_processors, tracer, batches, writer, listeners)


def _export_listeners(config: Config, batches: Sequence[BatchExportProcessor]) -> list[SessionListener]:
    """Live-session markers and the metrics pipeline (attached to the first batch processor)."""
    listeners: list[SessionListener] = []
    if config.live_sessions and batches:
        from sdk.export.batch import LiveMarkers

        listeners.append(LiveMarkers(batches))
    metrics_on = config.metrics if config.metrics is not None else "otlp" in config.destination_kinds
    if metrics_on:
        # Cheap: the metrics SDK is built by a thread of its own (see sdk/export/meters.py).
        from sdk.export.meters import metrics_handle
        from sdk.export.otlp import metrics_endpoint

        metrics = metrics_handle()
        companion = metrics.attach(
            metrics_endpoint(config), build_resource(config), config.metric_export_interval
        )
        if batches:
            batches[0].companions.append(companion)
        listeners.append(metrics.listener())
    elif "sdk.export.meters" in sys.modules:  # metrics were on before this init(): stop them
        from sdk.export.meters import existing_handle

        existing = existing_handle()
        if existing is not None:
            existing.detach()
    return listeners


OFF = Runtime(None)
"""The pipeline before `init()` and after `shutdown()`: records nothing."""


def current() -> Runtime:
    """The pipeline in use now."""
    return STATE.runtime or OFF


def swap(new: Runtime) -> Runtime:
    """Put `new` in place and return the previous pipeline (which the caller closes)."""
    with STATE.runtime_lock:
        old, STATE.runtime = STATE.runtime or OFF, new
    return old


def _after_fork_in_child() -> None:
    writer = current().store_writer
    if writer is not None:
        writer.after_fork()


STATE.at_fork(OFF, after_in_child=_after_fork_in_child)


def close_in_background(old: Runtime, new: Runtime, timeout: float) -> threading.Thread:
    """Flush and close a replaced pipeline without making init() wait for the network.

    Processors and exporters that the new pipeline uses too (the same instances passed to init()
    again) are flushed but not closed."""
    keep: list[object] = list(new.starters)
    keep += [b.exporter for b in new.batches]
    if new.store_writer is not None:
        keep.append(new.store_writer)
    closer = threading.Thread(
        target=old.shutdown, args=(timeout, keep), name="sessiontrace-close", daemon=True
    )
    with STATE.runtime_lock:
        STATE.closing[:] = [(t, rt) for t, rt in STATE.closing if t.is_alive()]
        STATE.closing.append((closer, old))
    closer.start()
    return closer


def wait_for_replaced(timeout: float, count_undelivered: bool = False) -> bool:
    """Wait until pipelines replaced by init() have delivered what they held; False on timeout.

    With `count_undelivered`, what a pipeline still holds after the wait is counted as dropped
    (the exit handler's last step: nothing may disappear uncounted).
    """
    deadline = time.monotonic() + timeout
    with STATE.runtime_lock:
        closing = list(STATE.closing)
    for closer, _ in closing:
        closer.join(max(deadline - time.monotonic(), 0.0))
    late = [old for closer, old in closing if closer.is_alive()]
    if count_undelivered:
        for old in late:
            for batch in old.batches:
                STATE.counters.spans_dropped.add_many(batch.take_undelivered())
    return not late
