"""An exporter built on the export worker's thread, so that init() never pays for its imports."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.state import STATE


class DeferredExporter(SpanExporter):
    """Builds the real exporter with `factory` on first use (the batch worker warms it at start).

    Importing the OTLP/HTTP exporter (requests, urllib3, protobuf) takes over 100 ms; building it
    here keeps that off the thread that called `init()`.
    """

    def __init__(self, factory: Callable[[], SpanExporter], name: str) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._exporter: SpanExporter | None = None
        self._closed = False
        self.name = name
        STATE.at_fork(
            self,
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def _before_fork(self) -> None:
        self._lock.acquire()  # a fork waits for a build in progress

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        # The child builds its own exporter: the parent's holds its HTTP connections.
        self._lock = threading.Lock()
        self._exporter = None

    def start_building(self) -> None:
        """Build the real exporter in a thread of its own: the batch worker stays free to spill
        while the exporter's modules are imported (that takes long on a busy machine)."""
        builder = threading.Thread(target=self._build_quietly, name="sessiontrace-build", daemon=True)
        with contextlib.suppress(RuntimeError):  # interpreter shutting down: built when first needed
            builder.start()

    def _build_quietly(self) -> None:
        from sdk.guard import internal_error

        try:
            self.warm()
        except Exception as exc:  # export() will fail and count
            internal_error(f"building exporter {self.name}", exc)

    def warm(self) -> SpanExporter:
        """The real exporter, built (and warmed, if it has a `warm()` of its own) now if it was not yet."""
        with self._lock:
            if self._exporter is None:
                exporter = self._factory()
                warm = getattr(exporter, "warm", None)
                self._exporter = warm() if callable(warm) else exporter
            return self._exporter

    @property
    def built(self) -> SpanExporter | None:
        """The real exporter, if it has been built."""
        return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        return self.warm().export(spans)

    def export_encoded(self, data: bytes) -> SpanExportResult:
        """Export a batch given as an encoded ExportTraceServiceRequest, when the real exporter can."""
        if self._closed:
            return SpanExportResult.FAILURE
        export_encoded = getattr(self.warm(), "export_encoded", None)
        return SpanExportResult.FAILURE if export_encoded is None else export_encoded(data)

    def shutdown(self) -> None:
        self._closed = True
        exporter = self._exporter
        if exporter is not None:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        exporter = self._exporter
        return True if exporter is None else exporter.force_flush(timeout_millis)

    def __repr__(self) -> str:
        return f"DeferredExporter({self.name})"
