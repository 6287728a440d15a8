"""The everyday messages, run for real: what `doctor` shows of the endpoint, the exporters, secrets and
defaults (and its gRPC probe), and where the quickstart says spans went, for every destination."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from otlp_receiver import closed_port_url

pytestmark = pytest.mark.subprocess
ROOT = Path(__file__).resolve().parent.parent


def env_with(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSIONTRACE_", "OTEL_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    return {**env, **extra}


def doctor(cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    text = subprocess.run(
        [sys.executable, "-m", "sdk", "doctor"],
        cwd=cwd,
        env=env_with(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "sdk", "doctor", "--json"],
        cwd=cwd,
        env=env_with(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return text, json.loads(as_json.stdout)


def row(stdout: str, name: str, cells_wanted: int = 2) -> list[str]:
    """A line of doctor's text output: a detail (`name  value`) or, with 3 cells, a settings row."""
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name and len(cells) == cells_wanted:
            return cells[1:]
    raise AssertionError(f"no {name!r} line in:\n{stdout}")


def test_doctor_grpc_shows_the_grpc_endpoint_and_probes_it_for_real(tmp_path, grpc_receiver):
    """In gRPC mode doctor shows host and port (no /v1/traces) and makes a real gRPC Export call."""
    text, report = doctor(
        tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.grpc_url, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    assert text.returncode == 0, text.stdout + text.stderr
    assert row(text.stdout, "endpoint") == [grpc_receiver.grpc_url]
    assert report["exporter"]["endpoint"] == grpc_receiver.grpc_url
    assert report["exporter"]["metrics_endpoint"] == f"{grpc_receiver.grpc_url} (grpc)"
    assert report["exporter"]["check"] == {"ok": True, "message": "ok (gRPC Export answered)"}
    grpc_calls = [r for r in grpc_receiver.requests if "TraceService/Export" in r.path]
    assert len(grpc_calls) == 2  # one per doctor run, an empty export each
    assert not any(r.spans for r in grpc_calls)


def test_doctor_grpc_probe_reports_a_dead_endpoint(tmp_path):
    """A gRPC endpoint where nothing listens fails the check with the gRPC status, exit 1."""
    text, report = doctor(
        tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url(), OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    assert text.returncode == 1
    assert report["exporter"]["check"]["ok"] is False
    assert report["exporter"]["check"]["message"].startswith("failed: gRPC UNAVAILABLE")


def test_doctor_lists_every_exporters_version(tmp_path):
    """The versions include both OTLP exporters and what the SDK's senders use."""
    _, report = doctor(tmp_path)
    for name in (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-grpc",
        "opentelemetry-exporter-otlp-proto-common",
        "opentelemetry-proto",
        "requests",
        "grpcio",
    ):
        assert report["versions"][name] == metadata.version(name)


def test_doctor_shows_empty_secrets_as_empty_and_defaults_as_the_docs_name_them(tmp_path):
    """Unset or empty secrets are not masked as if set; `auto` defaults read `auto`, as docs/configuration.md says."""
    text, report = doctor(tmp_path)
    settings = report["settings"]
    assert settings["headers"]["value"] == "empty"
    assert settings["metrics_headers"]["value"] == "unset"
    assert settings["console_summary"]["value"] == "auto"
    assert settings["metrics"]["value"] == "auto"
    assert settings["endpoint"]["value"] == "unset"
    assert row(text.stdout, "metrics_headers", 3) == ["unset", "default"]
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "| `console_summary` | `auto` |" in docs
    assert "| `metrics_headers` | unset |" in docs
    _, with_secret = doctor(tmp_path, OTEL_EXPORTER_OTLP_METRICS_HEADERS="x-key=s3cret")
    assert with_secret["settings"]["metrics_headers"]["value"] == "x-key=***"


def test_doctor_checks_every_destination(tmp_path):
    """With two destinations (otlp and file), doctor shows both and runs both checks."""
    text, report = doctor(
        tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url(), SESSIONTRACE_EXPORTER="otlp,file"
    )
    assert text.returncode == 1
    assert report["exporter"]["kind"] == "otlp+file"
    assert report["exporter"]["traces_folder"].endswith("traces")
    message = report["exporter"]["check"]["message"]
    assert message.startswith("otlp: failed: cannot connect")
    assert "file: writable" in message


def quickstart(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=cwd,
        env=env_with(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quickstart_says_where_spans_went_with_the_default_file(tmp_path):
    """With no endpoint the quickstart names the traces folder, and the per-session summary lines print."""
    result = quickstart(tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path.resolve() / ".sessiontrace" / "traces"
    assert f"spans went to OTLP-JSON files in {folder}" in result.stdout
    assert any(folder.iterdir())
    assert result.stderr.count("sessiontrace: session") == 2  # one summary line per session


def test_quickstart_says_where_spans_went_with_an_otlp_endpoint(tmp_path, receiver):
    """With OTEL_EXPORTER_OTLP_ENDPOINT the quickstart names the backend (not the unused traces folder), and
    says how to see the per-session summary lines."""
    result = quickstart(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_METRICS_EXPORTER="none")
    assert result.returncode == 0, result.stderr
    assert receiver.spans_named("support-chat")
    assert f"spans went to an OTLP backend (http/protobuf) at {receiver.url}/v1/traces" in result.stdout
    assert "traces written under" not in result.stdout
    assert ".sessiontrace/traces" not in result.stdout
    assert "SESSIONTRACE_CONSOLE_SUMMARY=true" in result.stdout


def test_quickstart_with_two_destinations_names_both(tmp_path, receiver):
    """With otlp and file both, the quickstart names both."""
    result = quickstart(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_METRICS_EXPORTER="none",
        SESSIONTRACE_EXPORTER="otlp,file",
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("spans went to")]
    assert lines == [
        f"spans went to an OTLP backend (http/protobuf) at {receiver.url}/v1/traces",
        f"spans went to OTLP-JSON files in {tmp_path.resolve() / '.sessiontrace' / 'traces'}",
    ]


@pytest.mark.parametrize(
    ("exporter", "said"),
    [
        ("console", "spans went to the console (standard output)"),
        ("none", "spans went to nowhere (exporter none: spans are not exported)"),
    ],
)
def test_quickstart_says_where_spans_went_with_console_or_none(tmp_path, exporter, said):
    """With the console or no exporter, the quickstart says so (and writes no traces folder)."""
    result = quickstart(tmp_path, SESSIONTRACE_EXPORTER=exporter, OTEL_METRICS_EXPORTER="none")
    assert result.returncode == 0, result.stderr
    assert said in result.stdout.splitlines()
    assert "traces written under" not in result.stdout
    assert not (tmp_path / ".sessiontrace" / "traces").exists()
