"""The embedded default destination: OTLP-JSON lines, one ExportTraceServiceRequest per line.

This is the format the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads: protobuf's
JSON mapping with lowerCamelCase names, enums as integers, and trace and span ids as hex.

Every line is written whole or not at all: one ``write`` per line on a file opened ``O_APPEND``,
and when a write fails part-way (a full disk) the file is cut back to where the line began. Each
process writes its own files and holds an ``flock`` on the one it is appending to; when a
destination starts, files nobody holds are repaired: an unfinished last line (a process killed
mid-write, a machine that lost power) is cut off and an empty file is removed, each counted in
``sdk.stats().torn_writes_recovered``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sdk.datadir import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, ensure_data_dir, forget_ready, open_private
from sdk.export.encode import encode_spans
from sdk.guard import warn_once
from sdk.state import STATE

fcntl: Any
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks; torn tails are still skipped by readers
    fcntl = None

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_TAIL_CHUNK = 64 * 1024
_KEY_STRINDEX = "key_strindex" in KeyValue.DESCRIPTOR.fields_by_name
_ENTITY_REFS = "entity_refs" in Resource.DESCRIPTOR.fields_by_name
"""Whether this opentelemetry-proto has OTLP's newer fields (a key in the string table, a resource's
entity references); older releases (1.30's) have neither."""


def _hex_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        if name in obj:
            obj[name] = base64.b64decode(obj[name]).hex()


def encoded_to_otlp_json_reference(data: bytes) -> dict[str, Any]:
    """`encoded_to_otlp_json` through protobuf's generic `MessageToDict` (slower; the tests' reference)."""
    request: dict[str, Any] = MessageToDict(
        ExportTraceServiceRequest.FromString(data), use_integers_for_enums=True
    )
    for resource_spans in request.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return request


def encoded_to_otlp_json(data: bytes) -> dict[str, Any]:
    """The OTLP/JSON form of an encoded ExportTraceServiceRequest (hex ids, as the spec requires).

    The same document `MessageToDict` makes (tests compare them), written for the OTLP trace
    messages only: several times faster, which the export thread needs under load.
    """
    out = []
    for resource_spans in ExportTraceServiceRequest.FromString(data).resource_spans:
        item: dict[str, Any] = {}
        if resource_spans.HasField("resource"):
            item["resource"] = _resource(resource_spans.resource)
        scopes = []
        for scope_spans in resource_spans.scope_spans:
            scope_item: dict[str, Any] = {}
            if scope_spans.HasField("scope"):
                scope_item["scope"] = _scope(scope_spans.scope)
            if scope_spans.spans:
                scope_item["spans"] = [_span(span) for span in scope_spans.spans]
            if scope_spans.schema_url:
                scope_item["schemaUrl"] = scope_spans.schema_url
            scopes.append(scope_item)
        if scopes:
            item["scopeSpans"] = scopes
        if resource_spans.schema_url:
            item["schemaUrl"] = resource_spans.schema_url
        out.append(item)
    return {"resourceSpans": out} if out else {}


def _resource(resource: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if resource.attributes:
        item["attributes"] = _attributes(resource.attributes)
    if resource.dropped_attributes_count:
        item["droppedAttributesCount"] = resource.dropped_attributes_count
    if _ENTITY_REFS and len(resource.entity_refs):
        item.update(MessageToDict(resource, use_integers_for_enums=True))  # rare: the generic way
    return item


def _scope(scope: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if scope.name:
        item["name"] = scope.name
    if scope.version:
        item["version"] = scope.version
    if scope.attributes:
        item["attributes"] = _attributes(scope.attributes)
    if scope.dropped_attributes_count:
        item["droppedAttributesCount"] = scope.dropped_attributes_count
    return item


def _span(span: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if span.trace_id:
        item["traceId"] = span.trace_id.hex()
    if span.span_id:
        item["spanId"] = span.span_id.hex()
    if span.trace_state:
        item["traceState"] = span.trace_state
    if span.parent_span_id:
        item["parentSpanId"] = span.parent_span_id.hex()
    if span.name:
        item["name"] = span.name
    if span.kind:
        item["kind"] = span.kind
    if span.start_time_unix_nano:
        item["startTimeUnixNano"] = str(span.start_time_unix_nano)
    if span.end_time_unix_nano:
        item["endTimeUnixNano"] = str(span.end_time_unix_nano)
    if span.attributes:
        item["attributes"] = _attributes(span.attributes)
    if span.dropped_attributes_count:
        item["droppedAttributesCount"] = span.dropped_attributes_count
    if span.events:
        item["events"] = [_event(event) for event in span.events]
    if span.dropped_events_count:
        item["droppedEventsCount"] = span.dropped_events_count
    if span.links:
        item["links"] = [_link(link) for link in span.links]
    if span.dropped_links_count:
        item["droppedLinksCount"] = span.dropped_links_count
    if span.HasField("status"):
        status: dict[str, Any] = {}
        if span.status.message:
            status["message"] = span.status.message
        if span.status.code:
            status["code"] = span.status.code
        item["status"] = status
    if span.flags:
        item["flags"] = span.flags
    return item


def _event(event: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if event.time_unix_nano:
        item["timeUnixNano"] = str(event.time_unix_nano)
    if event.name:
        item["name"] = event.name
    if event.attributes:
        item["attributes"] = _attributes(event.attributes)
    if event.dropped_attributes_count:
        item["droppedAttributesCount"] = event.dropped_attributes_count
    return item


def _link(link: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if link.trace_id:
        item["traceId"] = link.trace_id.hex()
    if link.span_id:
        item["spanId"] = link.span_id.hex()
    if link.trace_state:
        item["traceState"] = link.trace_state
    if link.attributes:
        item["attributes"] = _attributes(link.attributes)
    if link.dropped_attributes_count:
        item["droppedAttributesCount"] = link.dropped_attributes_count
    if link.flags:
        item["flags"] = link.flags
    return item


def _attributes(attributes: Any) -> list[dict[str, Any]]:
    out = []
    for pair in attributes:
        item: dict[str, Any] = {}
        if pair.key:
            item["key"] = pair.key
        if pair.HasField("value"):
            item["value"] = _value(pair.value)
        if _KEY_STRINDEX and pair.key_strindex:
            item["keyStrindex"] = pair.key_strindex
        out.append(item)
    return out


def _value(value: Any) -> dict[str, Any]:
    which = value.WhichOneof("value")
    if which == "string_value":
        return {"stringValue": value.string_value}
    if which == "int_value":
        return {"intValue": str(value.int_value)}
    if which == "bool_value":
        return {"boolValue": value.bool_value}
    if which == "double_value":
        number = value.double_value
        if number != number:
            return {"doubleValue": "NaN"}
        if number in (math.inf, -math.inf):
            return {"doubleValue": "Infinity" if number > 0 else "-Infinity"}
        return {"doubleValue": number}
    if which == "array_value":
        values = value.array_value.values
        return {"arrayValue": {"values": [_value(v) for v in values]} if values else {}}
    if which == "kvlist_value":
        pairs = value.kvlist_value.values
        return {"kvlistValue": {"values": _attributes(pairs)} if pairs else {}}
    if which == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode("ascii")}
    if which is None:
        return {}
    result: dict[str, Any] = MessageToDict(value, use_integers_for_enums=True)  # fields added later
    return result


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One OTLP/JSON ExportTraceServiceRequest for these spans."""
    return encoded_to_otlp_json(encode_spans(spans))


def _line(request: dict[str, Any]) -> bytes:
    return (json.dumps(request, separators=(",", ":")) + "\n").encode("utf-8")


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
        self._fd: int | None = None
        self._pid = 0
        self._written = 0
        self._shutdown = False
        self._recovered = False
        self.path: Path | None = None

    def warm(self) -> SpanExporter:
        """Repair what killed processes left in the traces folder (on the batch worker, at start)."""
        with self._lock:
            self._recover()
        return self

    def _recover(self) -> None:
        if self._recovered:
            return
        self._recovered = True
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if name.endswith(".jsonl"):
                repair_torn_tail(self.folder / name)

    def _open(self) -> int:
        ensure_data_dir(self._data_dir, "traces")
        self._recover()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._prune(keep=self._max_bytes // 2)
        path = self.folder / f"{stamp}-{os.getpid()}-{next(STATE.file_numbers):06d}.jsonl"
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "being written": not repaired by others
        self.path = path
        self._pid = os.getpid()
        self._written = 0
        return fd

    def _prune(self, keep: int) -> None:
        """Delete the oldest trace files until the folder holds at most `keep` bytes."""
        sizes: list[tuple[float, str, int, Path]] = []
        for path in self.folder.glob("*.jsonl"):
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:  # deleted meanwhile (another process pruning the same folder)
                continue
            sizes.append((info.st_mtime, path.name, info.st_size, path))
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
        return self._append(_line(spans_to_otlp_json(spans)))

    def export_encoded(self, data: bytes) -> SpanExportResult:
        """Append one batch given as an encoded ExportTraceServiceRequest (a spilled batch)."""
        if self._shutdown:
            return SpanExportResult.FAILURE
        return self._append(_line(encoded_to_otlp_json(data)))

    def _append(self, line: bytes) -> SpanExportResult:
        size = len(line)
        with self._lock:
            try:
                self._write_line(line, size)
            except FileNotFoundError:  # the folder was deleted while the process ran: start again
                forget_ready(self.folder)
                try:
                    self._write_line(line, size)
                except OSError as exc:
                    return self._failed(exc)
            except OSError as exc:  # disk full, folder not writable, ...: a failed export, not a crash
                return self._failed(exc)
        return SpanExportResult.SUCCESS

    def _write_line(self, line: bytes, size: int) -> None:
        stale = self._fd is not None and self._pid != os.getpid()  # inherited across fork
        full = self._written > 0 and self._written + size > self._max_bytes // 2
        if self._fd is None or stale or full:
            self._close_file(mine=not stale)
            self._fd = self._open()
        fd = self._fd
        start = self._written
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            # Never leave part of a line: cut the file back to where it began (or remove it).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._written += size

    def _failed(self, exc: OSError) -> SpanExportResult:
        self._close_file(mine=self._pid == os.getpid())
        warn_once(
            f"file-export-{self.folder}",
            "sessiontrace: cannot write traces under %s (%s); spans are dropped and counted in "
            "sdk.stats().spans_dropped",
            self.folder,
            exc,
        )
        return SpanExportResult.FAILURE

    def _close_file(self, *, mine: bool) -> None:
        """Close the current file (removing it if it stayed empty). A file inherited across fork() is
        the parent's: only this process's descriptor of it is closed."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if mine and self._written == 0 and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._close_file(mine=self._pid == os.getpid())

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def repair_torn_tail(path: Path) -> None:
    """Cut an unfinished last line off a traces file no process is writing; remove it if that
    leaves it empty. Counted in ``sdk.stats().torn_writes_recovered``. Symlinks and anything but a
    regular file are left alone."""
    try:
        fd = os.open(path, os.O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # a live process is appending to it
        size = os.fstat(fd).st_size
        keep = size if size == 0 else _whole_lines(fd, size)
        if keep == size and size > 0:
            return
        if keep == 0:
            os.unlink(path)
        else:
            os.ftruncate(fd, keep)
        STATE.counters.torn_writes_recovered.add()
    except OSError:
        return
    finally:
        os.close(fd)


def _whole_lines(fd: int, size: int) -> int:
    """How many bytes of the file, from its start, are whole lines (up to its last newline)."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


MAX_LINE_BYTES = 64 * 1024 * 1024
"""A longer line in a trace file is not read (no exporter writes one: a batch is far smaller)."""


class TraceLine(NamedTuple):
    """One complete line of a trace file: an ExportTraceServiceRequest in OTLP-JSON."""

    resource_spans: list[dict[str, Any]] | None
    """The request's ``resourceSpans``; None for a line that is not OTLP-JSON (left out)."""
    spans: int
    end: int
    """The offset in the file just past this line."""


def trace_lines(path: Path, start: int = 0) -> Iterator[TraceLine]:
    """The complete lines of a trace file from byte `start`, parsed.

    The last line is left out while it has no newline (a process is writing it, or was killed
    writing it). The folder may hold files the SDK did not write: a line that is not OTLP-JSON,
    or longer than `MAX_LINE_BYTES`, comes as a `TraceLine` whose `resource_spans` is None.
    """
    with path.open("rb") as f:
        f.seek(start)
        offset = start
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if not raw.endswith(b"\n"):
                if len(raw) <= MAX_LINE_BYTES:
                    return
                while raw and not raw.endswith(b"\n"):
                    offset += len(raw)
                    raw = f.readline(MAX_LINE_BYTES + 1)
                offset += len(raw)
                yield TraceLine(None, 0, offset)
                continue
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                resource_spans = json.loads(raw)["resourceSpans"]
                count = sum(len(scope["spans"]) for r in resource_spans for scope in r.get("scopeSpans", ()))
            except (ValueError, KeyError, TypeError, AttributeError):
                yield TraceLine(None, 0, offset)
                continue
            yield TraceLine(resource_spans, count, offset)


def trace_files(folder: Path) -> list[Path]:
    """The trace files of `folder`, oldest first (none when it does not exist)."""
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read_otlp_json_spans(folder: Path) -> list[dict[str, Any]]:
    """Every span in the OTLP-JSON files of `folder`, each with its resource's attributes under `resource`.

    Read as `trace_lines` reads: a torn last line (a process killed, or a disk filling up, in the
    middle of a write) and lines that are not OTLP-JSON (files the SDK did not write) are skipped.
    """
    spans: list[dict[str, Any]] = []
    for path in trace_files(folder):
        for line in trace_lines(path):
            for resource_spans in line.resource_spans or ():
                resource = resource_spans.get("resource", {})
                for scope_spans in resource_spans.get("scopeSpans", ()):
                    for span in scope_spans.get("spans", ()):
                        spans.append({**span, "resource": resource})
    return spans
