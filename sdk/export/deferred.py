"""An exporter built on the export worker's thread, so that init() never pays for its imports."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


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
        if hasattr(os, "register_at_fork"):
            me = weakref.ref(self)

            def before() -> None:
                exporter = me()
                if exporter is not None:
                    exporter._lock.acquire()  # a fork waits for a build in progress

            def after_in_parent() -> None:
                exporter = me()
                if exporter is not None:
                    exporter._lock.release()

            def after_in_child() -> None:
                # The child builds its own exporter: the parent's holds its HTTP connections.
                exporter = me()
                if exporter is not None:
                    exporter._lock = threading.Lock()
                    exporter._exporter = None

            os.register_at_fork(before=before, after_in_parent=after_in_parent, after_in_child=after_in_child)

    def warm(self) -> SpanExporter:
        """The real exporter, built now if it was not yet."""
        with self._lock:
            if self._exporter is None:
                self._exporter = self._factory()
            return self._exporter

    @property
    def built(self) -> SpanExporter | None:
        """The real exporter, if it has been built."""
        return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        return self.warm().export(spans)

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
