"""The embedded default destination: OTLP-JSON lines, one ExportTraceServiceRequest per line.

This is the format the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads: protobuf's
JSON mapping with lowerCamelCase names, enums as integers, and trace and span ids as hex.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
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
from sdk.guard import warn_once

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_file_numbers = itertools.count(1)  # process-wide, so two exporters never pick the same file name


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
    """Append OTLP-JSON lines to ``<data_dir>/traces/<time>-<pid>-<n>.jsonl``, under a size cap.

    A file is closed and a new one started before it would grow past half of `max_bytes`; when a
    new file starts, the oldest files are deleted until the older ones hold at most the other
    half. So the folder stays under `max_bytes` (a single batch larger than half the cap gets a
    file of its own).
    """

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.folder = data_dir / "traces"
        self._data_dir = data_dir
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._pid = 0
        self._written = 0
        self._shutdown = False
        self.path: Path | None = None

    def _open(self) -> IO[str]:
        ensure_data_dir(self._data_dir, "traces")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._prune(keep=self._max_bytes // 2)
        self.path = self.folder / f"{stamp}-{os.getpid()}-{next(_file_numbers):06d}.jsonl"
        self._pid = os.getpid()
        self._written = 0
        return self.path.open("a", encoding="utf-8")

    def _prune(self, keep: int) -> None:
        """Delete the oldest trace files until the folder holds at most `keep` bytes."""
        sizes: list[tuple[float, str, int, Path]] = []
        for path in self.folder.glob("*.jsonl"):
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile (another process pruning the same folder)
                continue
            sizes.append((stat.st_mtime, path.name, stat.st_size, path))
        sizes.sort()
        total = sum(size for _, _, size, _ in sizes)
        for _, _, size, old in sizes:
            if total <= keep:
                break
            total -= size
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        line = json.dumps(spans_to_otlp_json(spans), separators=(",", ":")) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            try:
                stale = self._file is not None and self._pid != os.getpid()  # inherited across fork
                full = self._written > 0 and self._written + size > self._max_bytes // 2
                if self._file is None or stale or full:
                    if self._file is not None and not stale:
                        self._file.close()
                    self._file = None
                    self._file = self._open()
                self._file.write(line)
                self._file.flush()
                self._written += size
            except OSError as exc:  # disk full, folder not writable, ...: a failed export, not a crash
                if self._file is not None:  # a torn line may end this file: the next batch starts a new one
                    with contextlib.suppress(OSError):
                        self._file.close()
                    self._file = None
                warn_once(
                    f"file-export-{self.folder}",
                    "sessiontrace: cannot write traces under %s (%s); spans are dropped and counted in "
                    "sdk.stats().spans_dropped",
                    self.folder,
                    exc,
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_otlp_json_spans(folder: Path) -> list[dict[str, Any]]:
    """Every span in the OTLP-JSON files of `folder`, each with its resource's attributes under `resource`.

    A torn last line (a process killed, or a disk filling up, in the middle of a write) is skipped.
    """
    spans: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except json.JSONDecodeError:
                    if line.endswith("\n"):
                        raise
                    continue
                for resource_spans in request.get("resourceSpans", ()):
                    resource = resource_spans.get("resource", {})
                    for scope_spans in resource_spans.get("scopeSpans", ()):
                        for span in scope_spans.get("spans", ()):
                            spans.append({**span, "resource": resource})
    return spans
