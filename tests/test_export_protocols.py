"""Protocols and settings: OTLP/gRPC, gzip, TLS and mutual TLS, the OTEL_* precedence rules, and
several destinations from one init(). Against real loopback receivers (grpcio, an HTTPS server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme
from opentelemetry import trace
from otlp_receiver import GRPC_TRACES, OTLPReceiver

import sdk
from sdk.export.otlp import metrics_endpoint, traces_endpoint
from sdk.settings import load_config


def one_session(name: str = "work") -> sdk.Session:
    with sdk.session(name, user_id="u-1") as s, trace.get_tracer("t").start_as_current_span("child"):
        pass
    return s


def test_grpc_protocol_sends_sessions_with_headers_and_gzip(grpc_receiver):
    """protocol=grpc sends traces (and metrics) to the gRPC port, with the headers as metadata, gzip-compressed."""
    sdk.init(
        endpoint=grpc_receiver.grpc_url,
        protocol="grpc",
        headers={"x-api-key": "k1"},
        compression="gzip",
        export_interval=0.05,
    )
    session = one_session()
    assert sdk.flush()
    assert grpc_receiver.wait_for_spans(2)
    spans = grpc_receiver.accepted_spans
    assert {s.name for s in spans} == {"work", "child"}
    assert {s.trace_id for s in spans} == {session.trace_id}
    paths = {r.path for r in grpc_receiver.requests}
    assert paths == {GRPC_TRACES, "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"}
    assert all(r.headers["x-api-key"] == "k1" for r in grpc_receiver.requests)


def test_protocol_from_otel_environment(grpc_receiver, monkeypatch):
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc with the generic endpoint variable selects gRPC."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.grpc_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    config = sdk.init(export_interval=0.05)
    assert config.protocol == "grpc"
    one_session()
    assert sdk.flush()
    assert grpc_receiver.wait_for_spans(2)
    assert {r.path for r in grpc_receiver.requests} == {GRPC_TRACES}


def test_gzip_over_http(grpc_receiver):
    """compression=gzip sends Content-Encoding: gzip bodies the receiver decodes."""
    sdk.init(endpoint=grpc_receiver.url, compression="gzip", export_interval=0.05, metrics=False)
    one_session()
    assert sdk.flush()
    assert grpc_receiver.wait_for_spans(2)
    assert all(r.headers["content-encoding"] == "gzip" for r in grpc_receiver.requests)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A test CA, a server certificate for localhost, and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("client@example.org")
    files = {
        "ca": folder / "ca.pem",
        "server": folder / "server.pem",
        "server_key": folder / "server.key",
        "client": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["server"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client"])
    client.private_key_pem.write_to_path(files["client_key"])
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_tls_with_a_ca_file(certificates, protocol):
    """An https:// endpoint is verified against certificate_file; spans arrive over TLS."""
    with OTLPReceiver(grpc=True, tls=(certificates["server"], certificates["server_key"])) as grpc_receiver:
        sdk.init(
            endpoint=grpc_receiver.grpc_url if protocol == "grpc" else grpc_receiver.url,
            protocol=protocol,
            certificate_file=certificates["ca"],
            export_interval=0.05,
            metrics=False,
        )
        one_session()
        assert sdk.flush()
        assert grpc_receiver.wait_for_spans(2)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_mutual_tls_from_otel_environment(certificates, monkeypatch, protocol):
    """OTEL_EXPORTER_OTLP_CERTIFICATE / _CLIENT_CERTIFICATE / _CLIENT_KEY give mutual TLS."""
    tls = (certificates["server"], certificates["server_key"])
    with OTLPReceiver(grpc=True, tls=tls, client_ca=certificates["ca"]) as grpc_receiver:
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.grpc_url if protocol == "grpc" else grpc_receiver.url
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", certificates["ca"])
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", certificates["client"])
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", certificates["client_key"])
        sdk.init(export_interval=0.05, metrics=False)
        one_session()
        assert sdk.flush()
        assert grpc_receiver.wait_for_spans(2)


def test_untrusted_certificate_is_not_sent_to(certificates, tmp_path):
    """Without the CA, the server's certificate is refused: nothing is sent, the batch waits in the spool."""
    with OTLPReceiver(tls=(certificates["server"], certificates["server_key"])) as grpc_receiver:
        sdk.init(endpoint=grpc_receiver.url, export_interval=0.05, metrics=False, live_sessions=False)
        one_session()
        assert sdk.flush()
        assert grpc_receiver.accepted_spans == []
        assert sdk.stats().spans_spooled == 2


def test_client_key_without_certificate_is_a_config_error():
    """client_key_file alone is a ConfigError naming the missing half."""
    with pytest.raises(sdk.ConfigError, match="both client_certificate_file and client_key_file"):
        load_config({"endpoint": "https://h:4318", "client_key_file": "k.pem"})


def test_traces_specific_variables_beat_generic_ones_and_metrics_have_their_own():
    """OTEL precedence: _TRACES_ over generic for traces; _METRICS_ over generic for metrics; init() over both."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=traces",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=metrics",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
    }
    config = load_config(environ=env)
    assert traces_endpoint(config).url == "http://traces:4318/v1/traces"
    assert dict(traces_endpoint(config).headers) == {"a": "traces"}
    assert traces_endpoint(config).compression == "gzip"
    assert metrics_endpoint(config).url == "http://generic:4318/v1/metrics"
    assert dict(metrics_endpoint(config).headers) == {"a": "metrics"}

    env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = "http://metrics:4318/v1/metrics"
    assert metrics_endpoint(load_config(environ=env)).url == "http://metrics:4318/v1/metrics"

    # An init() endpoint is used for both signals (metrics path derived), over lower layers.
    config = load_config({"endpoint": "http://mine:4318"}, environ=env)
    assert traces_endpoint(config).url == "http://mine:4318/v1/traces"
    assert metrics_endpoint(config).url == "http://mine:4318/v1/metrics"
    grpc = load_config({"endpoint": "http://mine:4317", "protocol": "grpc", "exporter": "none"})
    assert metrics_endpoint(grpc).url == "http://mine:4317"


def test_metric_export_interval_reads_milliseconds_from_otel():
    """OTEL_METRIC_EXPORT_INTERVAL is in milliseconds; OTEL_METRICS_EXPORTER=none turns metrics off."""
    config = load_config(environ={"OTEL_METRIC_EXPORT_INTERVAL": "1500", "OTEL_METRICS_EXPORTER": "none"})
    assert config.metric_export_interval == 1.5
    assert config.metrics is False


def test_several_destinations_from_one_init(grpc_receiver):
    """exporter=["otlp", "file"]: every span goes to the collector and to the local OTLP-JSON file."""
    config = sdk.init(
        exporter=["otlp", "file"], endpoint=grpc_receiver.url, export_interval=0.05, metrics=False
    )
    assert config.exporter_kind == "otlp+file"
    session = one_session()
    assert sdk.flush()
    assert grpc_receiver.wait_for_spans(2)
    lines = [
        json.loads(line)
        for path in Path(".sessiontrace/traces").glob("*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    in_file = [
        span["name"]
        for line in lines
        for rs in line["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert sorted(in_file) == sorted(s.name for s in grpc_receiver.accepted_spans) == ["child", "work"]
    assert {s.trace_id for s in grpc_receiver.accepted_spans} == {session.trace_id}


def test_destinations_from_environment():
    """SESSIONTRACE_EXPORTER=otlp,file and OTEL_TRACES_EXPORTER=otlp,console name several destinations."""
    assert load_config(environ={"SESSIONTRACE_EXPORTER": "otlp,file"}).destinations == ("otlp", "file")
    assert load_config(environ={"OTEL_TRACES_EXPORTER": "otlp,console"}).exporter_kind == "otlp+console"
    with pytest.raises(sdk.ConfigError, match="cannot be combined"):
        load_config({"exporter": ["none", "file"]})
