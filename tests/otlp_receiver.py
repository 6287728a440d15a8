"""A real OTLP/HTTP traces receiver on 127.0.0.1, for tests that send spans over the wire.

    from otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        sdk.init(endpoint=receiver.url)
        ...
        sdk.flush()
        assert receiver.spans_named("my-span")

Also a pytest fixture, `otlp_receiver`: put ``pytest_plugins = ["otlp_receiver"]`` in the test
module (or in tests/conftest.py), or wrap `OTLPReceiver` in a fixture of your own.

`POST /v1/traces` bodies are decoded with the OTLP protobuf definitions (gzip and deflate
``Content-Encoding`` handled). Every request's headers and every span are recorded. Modes:
`normal()` (answer 200 with an empty ExportTraceServiceResponse), `hang()` (read the request,
then answer nothing until `release()` or `stop()`), `fail(status)` (answer e.g. 503 or 429).
`closed_port_url()` gives a URL whose port refuses connections.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value (lists for arrays, dicts for key-value lists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_dict(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {kv.key: any_value(kv.value) for kv in attributes}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in hex; parent_span_id is "" for a root span)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]


@dataclass
class ReceivedRequest:
    """One HTTP request to the receiver: path, headers (lower-case names) and decoded spans."""

    path: str
    headers: dict[str, str]
    spans: list[ReceivedSpan] = field(default_factory=list)
    error: str | None = None


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """Every span in a serialized ExportTraceServiceRequest."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=attributes_dict(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        status_code=span.status.code,
                        events=[(e.name, attributes_dict(e.attributes)) for e in span.events],
                        links=[
                            (link.trace_id.hex(), link.span_id.hex(), attributes_dict(link.attributes))
                            for link in span.links
                        ],
                    )
                )
    return spans


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        record = ReceivedRequest(self.path, {k.lower(): v for k, v in self.headers.items()})
        encoding = record.headers.get("content-encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.path == TRACES_PATH:
                record.spans = decode_request(body)
        except Exception as exc:  # recorded for the test to see; the client gets a 400
            record.error = f"{type(exc).__name__}: {exc}"
        receiver._record(record)

        mode, status = receiver._mode
        if mode == "hang":
            receiver._hanging.wait()
            if receiver._stopped:
                self.close_connection = True  # drop the connection unanswered
                return
        if record.error is not None or self.path != TRACES_PATH:
            self._answer(400 if record.error else 404, b"")
        elif mode == "fail":
            self._answer(status, b"")
        else:
            self._answer(200, ExportTraceServiceResponse().SerializeToString())

    def _answer(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (e.g. its timeout ran out while we hung)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver
        super().__init__((HOST, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that disconnected mid-request is part of the tests, not an error


class OTLPReceiver:
    """A loopback OTLP/HTTP receiver; a context manager (start on enter, stop on exit)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._mode: tuple[str, int] = ("normal", 200)
        self._hanging = threading.Event()
        self._stopped = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OTLPReceiver:
        """Listen on a free port of 127.0.0.1."""
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and release hanging requests (without answering them)."""
        self._stopped = True
        self._hanging.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where to send ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:<port>``), as OTEL_EXPORTER_OTLP_ENDPOINT takes it."""
        return f"http://{HOST}:{self.port}"

    @property
    def traces_url(self) -> str:
        """The full traces endpoint (``.../v1/traces``)."""
        return self.url + TRACES_PATH

    # -- modes -----------------------------------------------------------------------------

    def normal(self) -> None:
        """Answer every export with 200 and an empty ExportTraceServiceResponse."""
        self._mode = ("normal", 200)
        self._hanging.set()

    def hang(self) -> None:
        """Read each request, then answer nothing until `release()` or `stop()`."""
        self._hanging.clear()
        self._mode = ("hang", 0)

    def release(self) -> None:
        """Let hanging requests be answered (as in normal mode), and answer new ones at once."""
        self.normal()

    def fail(self, status: int) -> None:
        """Answer every export with this HTTP status (e.g. 503 or 429)."""
        self._mode = ("fail", status)
        self._hanging.set()

    # -- what arrived ----------------------------------------------------------------------

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received so far (hanging ones included)."""
        with self._lock:
            return list(self._requests)

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        return [span for request in self.requests for span in request.spans]

    def spans_named(self, name: str) -> list[ReceivedSpan]:
        """The received spans with this name."""
        return [span for span in self.spans if span.name == name]

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least `count` requests arrived; False if the timeout ran out first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 whose port refuses connections (bound to get a free port, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}"


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A running OTLPReceiver in normal mode, stopped after the test."""
    with OTLPReceiver() as receiver:
        yield receiver
