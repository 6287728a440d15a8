"""A real OTLP/HTTP traces receiver on 127.0.0.1, for tests that send spans over the wire.

    from otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        sdk.init(endpoint=receiver.url)
        ...
        sdk.flush()
        assert receiver.spans_named("my-span")

The tests get one through the `receiver` (HTTP) and `grpc_receiver` fixtures of tests/conftest.py.

`POST /v1/traces`, `POST /v1/metrics` and `POST /v1/logs` bodies are decoded with the OTLP protobuf definitions
(gzip and deflate ``Content-Encoding`` handled). Every request's headers, every span and every
metric data point are recorded. `OTLPReceiver(grpc=True)` also serves OTLP/gRPC (traces and
metrics, on `grpc_url`), recording into the same lists; `tls=(cert, key)` serves HTTPS (and a TLS
gRPC port), `client_ca=` requires client certificates signed by that CA. Modes:
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
GRPC_TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GRPC_METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


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


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point: the metric's name, unit and type, the point's attributes and value.

    `value` is the sum or gauge value; for a histogram it is the sum, with `count` set."""

    name: str
    unit: str
    kind: str
    attributes: dict[str, Any]
    value: float
    count: int | None
    resource: dict[str, Any]
    monotonic: bool | None = None


@dataclass(frozen=True)
class ReceivedLog:
    """One log record (ids in hex, "" when the record has none)."""

    trace_id: str
    span_id: str
    body: Any
    severity_text: str
    severity_number: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass
class ReceivedRequest:
    """One request to the receiver: path (the gRPC method for gRPC), headers (lower-case names),
    decoded spans and metric points."""

    path: str
    headers: dict[str, str]
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    error: str | None = None
    accepted: bool = False
    """True once answered with success (its spans and points count as delivered)."""
    logs: list[ReceivedLog] = field(default_factory=list)
    body: bytes = b""
    """The request body as sent (after gzip/deflate decoding)."""


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


def decode_logs(body: bytes) -> list[ReceivedLog]:
    """Every log record in a serialized ExportLogsServiceRequest."""
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    logs: list[ReceivedLog] = []
    for resource_logs in request.resource_logs:
        resource = attributes_dict(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                logs.append(
                    ReceivedLog(
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        body=any_value(record.body),
                        severity_text=record.severity_text,
                        severity_number=record.severity_number,
                        attributes=attributes_dict(record.attributes),
                        resource=resource,
                        scope=scope_logs.scope.name,
                    )
                )
    return logs


def decode_metrics(body: bytes) -> list[ReceivedPoint]:
    """Every data point in a serialized ExportMetricsServiceRequest."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    points: list[ReceivedPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = attributes_dict(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind)
                monotonic = getattr(data, "is_monotonic", None)
                for point in data.data_points:
                    attrs = attributes_dict(point.attributes)
                    if kind == "histogram":
                        value, count = point.sum, point.count
                    else:
                        value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                        count = None
                    points.append(
                        ReceivedPoint(
                            metric.name, metric.unit, kind, attrs, value, count, resource, monotonic
                        )
                    )
    return points


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
            record.body = body
            if self.path == TRACES_PATH:
                record.spans = decode_request(body)
            elif self.path == METRICS_PATH:
                record.points = decode_metrics(body)
            elif self.path == LOGS_PATH:
                record.logs = decode_logs(body)
        except Exception as exc:  # recorded for the test to see; the client gets a 400
            record.error = f"{type(exc).__name__}: {exc}"

        receiver._record(record)

        if receiver._delay:
            time.sleep(receiver._delay)
        mode, status = receiver._mode
        if mode == "hang":
            receiver._hanging.wait()
            if receiver._stopped:
                self.close_connection = True  # drop the connection unanswered
                return
            mode, status = receiver._mode
        if record.error is not None or self.path not in (TRACES_PATH, METRICS_PATH, LOGS_PATH):
            self._answer(400 if record.error else 404, b"")
        elif mode == "fail":
            self._answer(status, b"")
        elif self.path == LOGS_PATH:
            self._accept(record, ExportLogsServiceResponse().SerializeToString())
        else:
            response = (
                ExportMetricsServiceResponse() if self.path == METRICS_PATH else ExportTraceServiceResponse()
            )
            self._accept(record, response.SerializeToString())

    def _accept(self, record: ReceivedRequest, body: bytes) -> None:
        """Answer 200; the request counts as accepted before the client can read the answer (a
        client that returns on the answer then finds its spans accepted), unless the write fails."""
        record.accepted = True
        if not self._answer(200, body):
            record.accepted = False

    def _answer(self, status: int, body: bytes) -> bool:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (e.g. its timeout ran out while we hung)
            self.close_connection = True
            return False
        return True

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


_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class OTLPReceiver:
    """A loopback OTLP/HTTP (and, with `grpc=True`, OTLP/gRPC) receiver; a context manager."""

    def __init__(
        self,
        *,
        grpc: bool = False,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
    ) -> None:
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._mode: tuple[str, int] = ("normal", 200)
        self._delay = 0.0
        self._hanging = threading.Event()
        self._stopped = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._with_grpc = grpc
        self._tls = tls
        self._client_ca = client_ca
        self._grpc_server: Any = None
        self.grpc_port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OTLPReceiver:
        """Listen on a free port of 127.0.0.1 (and another for gRPC)."""
        self._server = _Server(self)
        if self._tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            if self._client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self._client_ca)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        if self._with_grpc:
            self._start_grpc()
        return self

    def _start_grpc(self) -> None:
        from concurrent import futures

        import grpc

        receiver = self

        def behaviour(method: str) -> Any:
            def handle(body: bytes, context: Any) -> bytes:
                metadata = {k.lower(): v for k, v in context.invocation_metadata()}
                record = ReceivedRequest(method, metadata)
                try:
                    if method == GRPC_TRACES:
                        record.spans = decode_request(body)
                    else:
                        record.points = decode_metrics(body)
                except Exception as exc:
                    record.error = f"{type(exc).__name__}: {exc}"
                receiver._record(record)
                mode, status = receiver._mode
                if mode == "hang":
                    receiver._hanging.wait()
                    if receiver._stopped:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "receiver stopped")
                    mode, status = receiver._mode
                if record.error is not None:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, record.error)
                if mode == "fail":
                    context.abort(getattr(grpc.StatusCode, _GRPC_STATUS.get(status, "INTERNAL")), "failing")
                record.accepted = context.is_active()
                response = (
                    ExportTraceServiceResponse() if method == GRPC_TRACES else ExportMetricsServiceResponse()
                )
                return response.SerializeToString()

            return grpc.unary_unary_rpc_method_handler(handle)

        handlers = {GRPC_TRACES: behaviour(GRPC_TRACES), GRPC_METRICS: behaviour(GRPC_METRICS)}

        class Handler(grpc.GenericRpcHandler):
            def service(self, handler_call_details: Any) -> Any:
                return handlers.get(handler_call_details.method)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[Handler()])
        if self._tls is not None:
            with open(self._tls[0], "rb") as cert, open(self._tls[1], "rb") as key:
                pair = (key.read(), cert.read())
            root = None
            if self._client_ca is not None:
                with open(self._client_ca, "rb") as ca:
                    root = ca.read()
            credentials = grpc.ssl_server_credentials(
                [pair], root_certificates=root, require_client_auth=root is not None
            )
            self.grpc_port = server.add_secure_port(f"{HOST}:0", credentials)
        else:
            self.grpc_port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        self._grpc_server = server

    def stop(self) -> None:
        """Stop listening and release hanging requests (without answering them)."""
        self._stopped = True
        self._hanging.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None)

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
        """The base URL (``http://127.0.0.1:<port>``, https with `tls`), as OTEL_EXPORTER_OTLP_ENDPOINT takes it."""
        scheme = "https" if self._tls is not None else "http"
        host = "localhost" if self._tls is not None else HOST  # the name in test certificates
        return f"{scheme}://{host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        """The gRPC endpoint (``http://127.0.0.1:<port>``; https with `tls`)."""
        assert self.grpc_port, "started without grpc=True"
        if self._tls is not None:
            return f"https://localhost:{self.grpc_port}"
        return f"http://{HOST}:{self.grpc_port}"

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

    def slow(self, seconds: float) -> None:
        """Wait this long before answering each request (0: answer at once again)."""
        self._delay = seconds

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
        """Every span received so far, in arrival order (also in requests answered with an error)."""
        return [span for request in self.requests for span in request.spans]

    @property
    def accepted_spans(self) -> list[ReceivedSpan]:
        """The spans of requests answered with success: what was delivered."""
        return [span for request in self.requests if request.accepted for span in request.spans]

    @property
    def points(self) -> list[ReceivedPoint]:
        """Every metric data point of accepted requests, in arrival order."""
        return [point for request in self.requests if request.accepted for point in request.points]

    @property
    def logs(self) -> list[ReceivedLog]:
        """Every log record of accepted requests (`POST /v1/logs`), in arrival order."""
        return [log for request in self.requests if request.accepted for log in request.logs]

    def wait_for_logs(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` log records were accepted; False if the timeout ran out first."""
        deadline = time.monotonic() + timeout
        while len(self.logs) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def latest_points(self, name: str) -> list[ReceivedPoint]:
        """The data points of metric `name` in the last accepted request that had it."""
        for request in reversed(self.requests):
            found = [p for p in request.points if p.name == name]
            if request.accepted and found:
                return found
        return []

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` spans were accepted; False if the timeout ran out first."""
        deadline = time.monotonic() + timeout
        while len(self.accepted_spans) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

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
