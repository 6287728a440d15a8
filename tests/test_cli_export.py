"""`sessiontrace export --to URL`: local traces recorded offline, sent to a real OTLP receiver, each span once."""

from __future__ import annotations

import io
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

from opentelemetry import trace
from otlp_receiver import OTLPReceiver

import sdk
import sdk.testing
from sdk.cli import main
from sdk.export.otlp import Endpoint
from sdk.records import read_spans
from sdk.upload import STATE_FILE, upload

DATA = Path(".sessiontrace")


def record_offline(name: str, steps: int = 3) -> set[str]:
    """One session with `steps` raw child spans, written by the default file exporter; their span ids and the session's."""
    sdk.init(service_name="offline", console_summary=False)
    tracer = trace.get_tracer("tests.export")
    with sdk.session(name, user_id="u-1"):
        for index in range(steps):
            with tracer.start_as_current_span(f"{name}-{index}"):
                pass
    sdk.flush()
    return {s.span_id for s in read_spans(data_dir=DATA) if s.name.startswith(name)}


def local_ids() -> set[str]:
    """Every span id in the local traces (live markers included: they are sent as the exporter would)."""
    from sdk.records import local_span_rows

    return {s.span_id for s in local_span_rows(DATA / "traces")}


def export(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["export", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_sends_each_span_once_and_a_rerun_sends_nothing_new(capsys):
    """Every local span reaches the backend once; a second run sends nothing; spans recorded later go in the next run only."""
    first = record_offline("first")
    with OTLPReceiver() as receiver:
        code, out, err = export(capsys, "--to", receiver.url)
        assert code == 0, err
        assert out.startswith(
            f"exported {len(local_ids())} spans in 1 request to otlp http/protobuf {receiver.traces_url}"
        )
        assert {s.span_id for s in receiver.accepted_spans} == local_ids()
        assert first <= {s.span_id for s in receiver.accepted_spans}
        assert {s.resource.get("service.name") for s in receiver.accepted_spans} == {"offline"}
        assert len(receiver.accepted_spans) == len(local_ids())  # none twice
        sent_before = len(receiver.requests)

        code, out, _ = export(capsys, "--to", receiver.url)
        assert code == 0
        assert out.startswith("nothing new to export")
        assert len(receiver.requests) == sent_before

        sdk.testing.reset()
        second = record_offline("second")
        code, out, err = export(capsys, "--to", receiver.url)
        assert code == 0, err
        names = [s.name for r in receiver.requests[sent_before:] for s in r.spans]
        assert second <= {s.span_id for s in receiver.accepted_spans}
        assert not any(name.startswith("first") for name in names)
        assert len(receiver.accepted_spans) == len({s.span_id for s in receiver.accepted_spans})
    state = DATA / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert receiver.url.split("//")[1] in state.read_text()


def test_export_over_grpc_with_config_headers_and_header_options(capsys, monkeypatch):
    """`--protocol grpc` sends over OTLP/gRPC with the configured headers and each --header as metadata; HTTP is a separate destination."""
    record_offline("grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    with OTLPReceiver(grpc=True) as receiver:
        code, out, err = export(
            capsys, "--to", receiver.grpc_url, "--protocol", "grpc", "--header", "authorization=Bearer t0k"
        )
        assert code == 0, err
        assert out.startswith("exported ")
        (request,) = receiver.requests
        assert request.path.endswith("TraceService/Export")
        assert request.headers["x-tenant"] == "acme"
        assert request.headers["authorization"] == "Bearer t0k"
        assert {s.span_id for s in receiver.accepted_spans} == local_ids()
        code, _, _ = export(capsys, "--to", receiver.url)  # the HTTP endpoint has received nothing yet
        assert code == 0
        assert len(receiver.accepted_spans) == 2 * len(local_ids())
    assert "t0k" not in (DATA / STATE_FILE).read_text()  # headers are not remembered


def test_refused_export_exits_1_and_the_next_run_sends_it(capsys):
    """A backend that refuses the request makes the export exit 1 with one line; nothing is marked sent, so the next run sends it all."""
    record_offline("refused")
    with OTLPReceiver() as receiver:
        receiver.fail(400)
        code, out, err = export(capsys, "--to", receiver.url)
        assert code == 1
        assert out == ""
        assert err.startswith(
            f"sessiontrace export: otlp http/protobuf {receiver.traces_url} refused a request (HTTP 400)"
        )
        receiver.normal()
        code, _, err = export(capsys, "--to", receiver.url)
        assert code == 0, err
        assert {s.span_id for s in receiver.accepted_spans} == local_ids()


def test_progress_lines_when_not_a_terminal_and_a_bar_on_one(tmp_path):
    """Progress is a line per 10% done on a pipe, and a bar redrawn in place (carriage returns) on a terminal."""
    for index in range(6):
        record_offline(f"batch{index}", steps=4)
        sdk.testing.reset()
    total = len(local_ids())
    with OTLPReceiver() as receiver:
        endpoint = Endpoint(
            "traces", receiver.traces_url, "http/protobuf", (), "none", 5.0, None, None, None, False
        )
        stream = io.StringIO()
        result = upload(DATA / "traces", endpoint, state_dir=DATA, batch_spans=5, progress=stream)
        assert result.spans_sent == total
        assert result.requests == len(receiver.requests) > 3
        lines = stream.getvalue().splitlines()
        assert len(lines) >= 3
        assert all(line.startswith("export: ") and line.endswith("%)") for line in lines)
        assert lines[-1] == f"export: {total:,} spans sent (100%)"
        assert "\r" not in stream.getvalue()

    with OTLPReceiver() as other:  # another destination: everything is new to it
        # On a terminal (a real pseudo-terminal), the command draws a bar.
        primary, secondary = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
        done = subprocess.run(
            [sys.executable, "-m", "sdk", "export", "--to", other.url],
            stderr=secondary,
            stdout=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
        )
        os.close(secondary)
        drawn = os.read(primary, 65536).decode()
        os.close(primary)
    assert done.returncode == 0
    assert "\rexport [" in drawn
    assert "100%" in drawn


def test_nothing_to_export_and_bad_options(capsys):
    """No traces folder: nothing to do (exit 0); a malformed --header or URL: exit 2 with a message."""
    code, out, _ = export(capsys, "--to", "http://127.0.0.1:9")
    assert code == 0
    assert out.startswith("nothing to export: ")
    code, _, err = export(capsys, "--to", "http://127.0.0.1:9", "--header", "no-equals")
    assert code == 2
    assert "expected a header as KEY=VALUE, not 'no-equals'" in err
    code, _, err = export(capsys, "--to", "ftp://example")
    assert code == 2
    assert "endpoint" in err
