"""Upload later: send the local OTLP-JSON traces to an OTLP backend, each span once.

A program that ran offline (no endpoint, or the backend out of reach) leaves its spans in
``<data_dir>/traces/*.jsonl``, one ExportTraceServiceRequest per line (see sdk/export/jsonl.py).
`upload` sends those lines, re-encoded as protobuf and grouped into requests of at most
`batch_spans` spans, through the SDK's own OTLP senders (HTTP or gRPC, same headers, TLS and
compression settings as the exporter).

What was sent is remembered in ``<data_dir>/export-state.json`` (0600): for each destination
(protocol and URL), for each trace file, how far into it every line has been delivered. Trace
files are only ever appended to, so a second run sends only what was written since, and a run
interrupted or refused half-way goes on from the last delivered request. A line still being
written (no newline yet) is left for the next run. Two runs at once take turns (a lock file).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from sdk.export.jsonl import trace_files, trace_lines
from sdk.export.otlp import Endpoint, Sender, SendResult, make_sender

STATE_FILE = "export-state.json"
LOCK_FILE = "export-state.lock"
DEFAULT_BATCH_SPANS = 512

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class UploadError(Exception):
    """The upload stopped: the backend refused a request or stayed out of reach (what was sent before is kept)."""


class UploadResult(NamedTuple):
    """What one `upload` did."""

    spans_sent: int
    requests: int
    files: int
    """Trace files that had something new."""
    skipped_lines: int
    """Lines that were not OTLP-JSON (a file the SDK did not write, or a damaged one): left out."""
    rejected: int
    """Spans the backend said it rejected (an OTLP partial success)."""
    already_sent: int
    """Bytes of the traces that earlier runs had delivered to this destination."""


class Progress:
    """Progress of an upload on a stream: a bar redrawn in place on a terminal, else a line every 10%."""

    def __init__(self, stream: IO[str] | None, total_bytes: int, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.total = max(total_bytes, 1)
        self.tty = bool(stream is not None and (stream.isatty() if tty is None else tty))
        self._drawn = 0.0
        self._tenth = 0

    def update(self, done_bytes: int, spans: int, *, final: bool = False) -> None:
        """Show that `done_bytes` of the total are handled and `spans` sent so far."""
        if self.stream is None:
            return
        fraction = min(done_bytes / self.total, 1.0)
        if self.tty:
            now = time.monotonic()
            if not final and now - self._drawn < 0.1:
                return
            self._drawn = now
            width = 30
            filled = int(fraction * width)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\rexport [{bar}] {fraction:4.0%}  {spans:,} spans")
            if final:
                self.stream.write("\n")
        else:
            tenth = int(fraction * 10)
            if tenth <= self._tenth and not final:
                return
            if final and tenth <= self._tenth and self._tenth > 0:
                return
            self._tenth = tenth
            self.stream.write(f"export: {spans:,} spans sent ({fraction:.0%})\n")
        self.stream.flush()


def _b64_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value:
            obj[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


def encode_request(resource_spans: list[dict[str, Any]]) -> bytes:
    """OTLP-JSON ``resourceSpans`` (ids in hex, as the file exporter writes them) as protobuf bytes."""
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    for resource in resource_spans:
        for scope in resource.get("scopeSpans", ()):
            for span in scope.get("spans", ()):
                _b64_ids(span)
                for link in span.get("links", ()):
                    _b64_ids(link)
    request = ExportTraceServiceRequest()
    ParseDict({"resourceSpans": resource_spans}, request)
    return request.SerializeToString()


class ExportState:
    """What was delivered where: ``{destination key: {"url": ..., "files": {file name: offset}}}`` in a 0600 file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.destinations: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            data = {}  # unreadable: start over (at worst spans are sent again, never lost)
        destinations = data.get("destinations") if isinstance(data, dict) else None
        if isinstance(destinations, dict):
            for key, entry in destinations.items():
                files = entry.get("files") if isinstance(entry, dict) else None
                if isinstance(files, dict):
                    clean = {str(k): v for k, v in files.items() if isinstance(v, int) and v >= 0}
                    self.destinations[str(key)] = {"url": str(entry.get("url", "")), "files": clean}

    def offsets(self, endpoint: Endpoint) -> dict[str, int]:
        """The delivered offsets for `endpoint` (changed in place as requests are delivered)."""
        entry = self.destinations.setdefault(endpoint.key, {"url": endpoint.describe(), "files": {}})
        files: dict[str, int] = entry["files"]
        return files

    def forget_missing(self, names: set[str]) -> None:
        """Drop files that no longer exist (the traces folder is pruned oldest first)."""
        for entry in self.destinations.values():
            for name in [n for n in entry["files"] if n not in names]:
                del entry["files"][name]

    def save(self) -> None:
        """Write the state atomically, readable by this user only."""
        data = json.dumps({"version": 1, "destinations": self.destinations}, indent=1, sort_keys=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".export-state-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; concurrent runs may send a batch twice
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _send(sender: Sender, data: bytes, timeout: float, retries: int, backoff: float) -> SendResult:
    """One request, tried again (after `backoff`, doubling, or the backend's Retry-After) while retryable."""
    delay = backoff
    result = sender.send(data, timeout)
    for _ in range(retries):
        if result.ok or not result.retryable:
            break
        time.sleep(min(result.retry_after if result.retry_after is not None else delay, 30.0))
        delay *= 2
        result = sender.send(data, timeout)
    return result


def upload(
    folder: Path,
    endpoint: Endpoint,
    *,
    state_dir: Path,
    batch_spans: int = DEFAULT_BATCH_SPANS,
    progress: IO[str] | None = None,
    retries: int = 4,
    backoff: float = 0.5,
) -> UploadResult:
    """Send what the trace files in `folder` hold that `endpoint` has not received yet.

    Raises `UploadError` when the backend refuses a request or stays unreachable after `retries`
    tries; what was delivered before is remembered, so the next run goes on from there.
    `progress`: where to show progress (a bar when it is a terminal, else a line every 10%).
    """
    files = trace_files(folder)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir / LOCK_FILE):
        state = ExportState(state_dir / STATE_FILE)
        state.forget_missing({p.name for p in files})
        run = _Run(state, endpoint, retries, backoff)
        pending: list[tuple[Path, int]] = []
        for path in files:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            start = min(run.offsets.get(path.name, 0), size)
            run.already += start
            if size > start:
                pending.append((path, start))
                run.total += size - start
        run.bar = Progress(progress, run.total)
        try:
            for path, start in pending:
                run.file(path, start, batch_spans)
        finally:
            run.close()
        if pending:
            run.bar.update(run.total, run.sent, final=True)
        return UploadResult(run.sent, run.requests, len(pending), run.skipped, run.rejected, run.already)


class _Run:
    """One upload's progress: what is delivered, counted and remembered as it goes."""

    def __init__(self, state: ExportState, endpoint: Endpoint, retries: int, backoff: float) -> None:
        self.state = state
        self.endpoint = endpoint
        self.offsets = state.offsets(endpoint)
        self.retries = retries
        self.backoff = backoff
        self.sender: Sender | None = None
        self.bar = Progress(None, 0)
        self.total = self.already = self.done = 0
        self.sent = self.requests = self.skipped = self.rejected = 0

    def file(self, path: Path, start: int, batch_spans: int) -> None:
        """Send the new lines of one file, in requests of at most `batch_spans` spans (a bigger line alone)."""
        batch: list[dict[str, Any]] = []
        count, end = 0, start
        for line in trace_lines(path, start):
            if line.resource_spans is None:
                self.skipped += 1
            else:
                if batch and count + line.spans > batch_spans:
                    self.deliver(path.name, batch, count, end)
                    batch, count = [], 0
                batch.extend(line.resource_spans)
                count += line.spans
            end = line.end
        self.deliver(path.name, batch, count, end)

    def deliver(self, name: str, resource_spans: list[dict[str, Any]], count: int, end: int) -> None:
        """Send one request (if it holds spans), then remember that the file is delivered up to `end`."""
        if count:
            if self.sender is None:
                self.sender = make_sender(self.endpoint)
            result = _send(
                self.sender, encode_request(resource_spans), self.endpoint.timeout, self.retries, self.backoff
            )
            if not result.ok:
                kind = "is still unreachable or busy" if result.retryable else "refused a request"
                raise UploadError(
                    f"{self.endpoint.describe()} {kind} ({result.error}); {self.sent:,} spans were sent "
                    "and are remembered: run the export again to go on"
                )
            self.sent += count
            self.requests += 1
            self.rejected += result.rejected
        before = self.offsets.get(name, 0)
        if end > before:
            self.done += end - before
            self.offsets[name] = end
            self.state.save()
        self.bar.update(self.done, self.sent)

    def close(self) -> None:
        """Close the connection and write the state one last time."""
        if self.sender is not None:
            self.sender.close()
        self.state.save()
