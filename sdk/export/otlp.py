"""OTLP over HTTP/protobuf and gRPC: one request of already-encoded bytes, and what its answer means.

The SDK sends OTLP itself instead of through OpenTelemetry's exporters so that it can (1) keep the
exact bytes of a batch, to spool them to disk and send them again later, and (2) make one attempt
per call and leave retrying to the spool (OpenTelemetry's exporters retry inside `export()` with
sleeps, which keeps a batch and the exit handler waiting). Encoding is OpenTelemetry's
(`encode_spans`, `encode_metrics`); the transport is `requests` (HTTP) and `grpcio` (gRPC).

Which failures are retryable follows the OTLP specification: HTTP 429, 502, 503 and 504 and
connection failures or timeouts (honouring ``Retry-After``); gRPC CANCELLED, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS. Anything else (400, 401,
404, INVALID_ARGUMENT, UNAUTHENTICATED, ...) is permanent: the batch is dropped and counted.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from sdk.display import mask_url
from sdk.settings import DEFAULT_OTLP_GRPC_ENDPOINT, Config, Source

if TYPE_CHECKING:
    from collections.abc import Mapping

TRACES = "traces"
METRICS = "metrics"
_GRPC_METHODS = {
    TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_RETRYABLE_GRPC = frozenset(
    {
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
)
_LAYER_RANK = {"default": 0, "file": 1, "env": 2, "init": 3, "session": 4}
DEFAULT_OTLP_HTTP_METRICS_ENDPOINT = "http://localhost:4318/v1/metrics"


class SendResult(NamedTuple):
    """The outcome of one request: delivered, or why not and whether trying again may help."""

    ok: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None
    rejected: int = 0
    """Items the backend refused in a partial success (counted as dropped)."""


class Sender(Protocol):
    """Sends one encoded OTLP request; never raises for network or backend failures."""

    def send(self, data: bytes, timeout: float) -> SendResult: ...

    def close(self) -> None: ...


class Endpoint(NamedTuple):
    """Where and how one signal is sent: URL, protocol, headers, compression and TLS files."""

    signal: str
    url: str
    protocol: str
    headers: tuple[tuple[str, str], ...]
    compression: str
    timeout: float
    certificate_file: Path | None
    client_certificate_file: Path | None
    client_key_file: Path | None
    insecure: bool

    @property
    def key(self) -> str:
        """A short stable name for this destination (its spool folder), from protocol and URL."""
        return hashlib.sha256(f"{self.signal} {self.protocol} {self.url}".encode()).hexdigest()[:16]

    def describe(self) -> str:
        """``otlp grpc http://host:4317`` (no credentials: a password in the URL is masked)."""

        return f"otlp {self.protocol} {mask_url(self.url)}"


def traces_endpoint(config: Config) -> Endpoint:
    """The traces destination of `config`."""
    return _endpoint(config, TRACES, config.traces_endpoint, config.protocol, config.headers)


def metrics_endpoint(config: Config) -> Endpoint:
    """The metrics destination: the `metrics_*` settings where they come from a layer at least as
    high as the corresponding traces setting, else derived from the traces settings."""
    protocol = _pick(config, "metrics_protocol", "protocol") or config.protocol
    headers = _pick(config, "metrics_headers", "headers")
    url = _pick(config, "metrics_endpoint", "endpoint")
    if url is None:
        if config.endpoint:
            url = _metrics_url_from_traces(config.endpoint, protocol)
        else:
            url = DEFAULT_OTLP_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_OTLP_HTTP_METRICS_ENDPOINT
    return _endpoint(config, METRICS, url, protocol, headers if headers is not None else config.headers)


def _pick(config: Config, specific: str, general: str) -> Any:
    value = getattr(config, specific)
    if value is None:
        return None
    rank = _LAYER_RANK[config.sources.get(specific, Source("default")).layer]
    general_rank = _LAYER_RANK[config.sources.get(general, Source("default")).layer]
    return value if rank >= general_rank else None


def _metrics_url_from_traces(url: str, protocol: str) -> str:
    if protocol == "grpc":
        return url
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    path = path[: -len("/v1/traces")] + "/v1/metrics" if path.endswith("/v1/traces") else "/v1/metrics"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _endpoint(config: Config, signal: str, url: str, protocol: str, headers: Mapping[str, str]) -> Endpoint:
    if protocol == "grpc":  # gRPC takes host and port; a path (e.g. an appended /v1/traces) means nothing
        parts = urllib.parse.urlsplit(url)
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    return Endpoint(
        signal=signal,
        url=url,
        protocol=protocol,
        headers=tuple(sorted(headers.items())),
        compression=config.compression,
        timeout=config.export_timeout,
        certificate_file=config.certificate_file,
        client_certificate_file=config.client_certificate_file,
        client_key_file=config.client_key_file,
        insecure=config.insecure,
    )


def make_sender(endpoint: Endpoint) -> Sender:
    """The sender for `endpoint` (imports requests or grpc: call it off the program's threads)."""
    if endpoint.protocol == "grpc":
        return GrpcSender(endpoint)
    return HttpSender(endpoint)


def _rejected(signal: str, body: bytes) -> tuple[int, str]:
    """Items refused in an OTLP partial success response, and the backend's message."""
    if not body:
        return 0, ""
    try:
        if signal == TRACES:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            trace_response = ExportTraceServiceResponse.FromString(body)
            partial = trace_response.partial_success
            return int(partial.rejected_spans), str(partial.error_message)
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )

        metrics_response = ExportMetricsServiceResponse.FromString(body)
        return int(metrics_response.partial_success.rejected_data_points), str(
            metrics_response.partial_success.error_message
        )
    except Exception:  # not a protobuf answer (a proxy's HTML page): success all the same
        return 0, ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:  # an HTTP date: rare for OTLP backends, fall back to our own backoff
        return None
    return max(0.0, min(seconds, 300.0))


class HttpSender:
    """OTLP/HTTP with protobuf bodies, through a `requests` session (connections are reused)."""

    def __init__(self, endpoint: Endpoint) -> None:
        import requests

        self._requests = requests
        self.endpoint = endpoint
        self._session = requests.Session()
        self._session.headers.update(dict(endpoint.headers))
        self._session.headers["Content-Type"] = "application/x-protobuf"
        if endpoint.compression == "gzip":
            self._session.headers["Content-Encoding"] = "gzip"
        self._verify: bool | str = str(endpoint.certificate_file) if endpoint.certificate_file else True
        self._cert: tuple[str, str] | None = None
        if endpoint.client_certificate_file is not None and endpoint.client_key_file is not None:
            self._cert = (str(endpoint.client_certificate_file), str(endpoint.client_key_file))

    def send(self, data: bytes, timeout: float) -> SendResult:
        """POST one request; a timeout or connection failure is retryable."""
        body = gzip.compress(data, compresslevel=6) if self.endpoint.compression == "gzip" else data
        try:
            response = self._session.post(
                self.endpoint.url,
                data=body,
                timeout=max(timeout, 0.001),
                verify=self._verify,
                cert=self._cert,
            )
        except self._requests.RequestException as exc:
            return SendResult(False, True, f"{type(exc).__name__}: {_short(exc)}")
        status = response.status_code
        if 200 <= status < 300:
            rejected, message = _rejected(self.endpoint.signal, response.content)
            return SendResult(True, rejected=rejected, error=message)
        error = f"HTTP {status}"
        if status in _RETRYABLE_HTTP:
            return SendResult(False, True, error, _retry_after(response.headers.get("Retry-After")))
        return SendResult(False, False, error)

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()


class GrpcSender:
    """OTLP/gRPC: one unary call with the encoded request as its raw body."""

    def __init__(self, endpoint: Endpoint) -> None:
        import grpc

        self._grpc = grpc
        self.endpoint = endpoint
        parts = urllib.parse.urlsplit(endpoint.url)
        target = parts.netloc or parts.path
        options = [
            # Reconnect soon after a backend comes back (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),  # the spool retries
        ]
        compression = (
            grpc.Compression.Gzip if endpoint.compression == "gzip" else grpc.Compression.NoCompression
        )
        if parts.scheme == "http" or endpoint.insecure:
            self._channel = grpc.insecure_channel(target, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(endpoint.certificate_file),
                private_key=_read(endpoint.client_key_file),
                certificate_chain=_read(endpoint.client_certificate_file),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options, compression=compression)
        self._call = self._channel.unary_unary(_GRPC_METHODS[endpoint.signal])
        self._metadata = tuple(endpoint.headers)

    def send(self, data: bytes, timeout: float) -> SendResult:
        """One Export call; the retryable status codes are those of the OTLP specification."""
        try:
            response = self._call(data, timeout=max(timeout, 0.001), metadata=self._metadata)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = getattr(code, "name", "UNKNOWN")
            details = exc.details() if hasattr(exc, "details") else ""
            return SendResult(False, name in _RETRYABLE_GRPC, f"gRPC {name}: {_short(details)}")
        rejected, message = _rejected(self.endpoint.signal, response if isinstance(response, bytes) else b"")
        return SendResult(True, rejected=rejected, error=message)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."
