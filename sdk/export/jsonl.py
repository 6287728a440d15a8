"""The embedded default destination: OTLP-JSON lines, one ExportTraceServiceRequest per line.

This is the format the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads: protobuf's
JSON mapping with lowerCamelCase names, enums as integers, and trace and span ids as hex.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.datadir import ensure_data_dir

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        if name in obj:
            obj[name] = base64.b64decode(obj[name]).hex()


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One OTLP/JSON ExportTraceServiceRequest for these spans."""
    request: dict[str, Any] = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in request.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return request


class OTLPJsonFileExporter(SpanExporter):
    """Append OTLP-JSON lines to ``<data_dir>/traces/<time>-<pid>-<n>.jsonl``, under a size cap."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.folder = data_dir / "traces"
        self._data_dir = data_dir
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._pid = 0
        self._written = 0
        self.path: Path | None = None

    def _open(self) -> IO[str]:
        ensure_data_dir(self._data_dir, "traces")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = self.folder / f"{stamp}-{os.getpid()}-{time.monotonic_ns() % 1_000_000:06d}.jsonl"
        self._prune(keep=self._max_bytes // 2)
        self._pid = os.getpid()
        self._written = 0
        return self.path.open("a", encoding="utf-8")

    def _prune(self, keep: int) -> None:
        """Delete the oldest trace files until the folder holds at most `keep` bytes."""
        files = sorted(self.folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= keep:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json.dumps(spans_to_otlp_json(spans), separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None or self._pid != os.getpid() or self._written > self._max_bytes // 2:
                if self._file is not None and self._pid == os.getpid():
                    self._file.close()
                self._file = self._open()
            self._file.write(line)
            self._file.flush()
            self._written += len(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_otlp_json_spans(folder: Path) -> list[dict[str, Any]]:
    """Every span in the OTLP-JSON files of `folder`, each with its resource's attributes under `resource`."""
    spans: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                for resource_spans in json.loads(line).get("resourceSpans", ()):
                    resource = resource_spans.get("resource", {})
                    for scope_spans in resource_spans.get("scopeSpans", ()):
                        for span in scope_spans.get("spans", ()):
                            spans.append({**span, "resource": resource})
    return spans
