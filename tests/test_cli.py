"""The command line, run for real in child processes: `python -m sdk doctor` and `python -m sdk run`."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from importlib import metadata
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sdk.export.jsonl import read_otlp_json_spans
from sdk.settings import SETTINGS

pytestmark = pytest.mark.subprocess

PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without SESSIONTRACE_*, OTEL_* or proxy settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SESSIONTRACE_", "OTEL_")) and name.lower() not in PROXY_VARS
    }
    env.update(extra)
    return env


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_python(cwd, "-m", "sdk", *args, env=env)


def run_python(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def setting_row(stdout: str, name: str) -> tuple[str, str]:
    """(value, source) of a setting in doctor's text table."""
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 3 and cells[0] == name:
            return cells[1], cells[2]
    raise AssertionError(f"no row for {name!r} in:\n{stdout}")


def labelled(stdout: str, label: str) -> str:
    """The value of a two-column `label  value` line of doctor's text output (not a settings row)."""
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"no {label!r} line in:\n{stdout}")


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def attributes(span: dict) -> dict[str, object]:
    """An OTLP-JSON span's attributes as a plain dict."""
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", ())}


def exported_spans(cwd: Path) -> list[dict]:
    return read_otlp_json_spans(cwd / ".sessiontrace" / "traces")


def auto_session_root(spans: list[dict]) -> dict:
    """The auto session's root span as it ended (not a start marker still `running`)."""
    ended = [
        s
        for s in spans
        if attributes(s).get("session.auto") is True and attributes(s).get("session.state") != "running"
    ]
    assert len(ended) == 1, f"expected one ended auto session span, got {ended}"
    return ended[0]


def without_summaries(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("sessiontrace:"))


class _CollectorHandler(http.server.BaseHTTPRequestHandler):
    """Answers an OTLP/HTTP export on /v1/traces with 200, anything else with 404."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        status = 200 if self.path == "/v1/traces" else 404
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass


class _Collector(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def collector():
    """A loopback OTLP/HTTP receiver on 127.0.0.1 that records the requests it gets."""
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the command line itself


def test_no_command_prints_help_and_exits_2(tmp_path):
    """`python -m sdk` alone prints the help, naming both commands, and exits 2."""
    result = run_cli(tmp_path)
    assert result.returncode == 2
    assert "usage: python -m sdk" in result.stderr
    assert "doctor" in result.stderr
    assert "run" in result.stderr


def test_command_help_texts(tmp_path):
    """`doctor --help` and `run --help` explain their options and exit 0."""
    doctor = run_cli(tmp_path, "doctor", "--help")
    run = run_cli(tmp_path, "run", "--help")
    assert doctor.returncode == 0
    assert "--json" in doctor.stdout
    assert "exit status" in doctor.stdout
    assert run.returncode == 0
    assert "-m MODULE" in run.stdout
    assert "SCRIPT [ARGS ...]" in run.stdout


# ---------------------------------------------------------------------------------------------
# doctor


def test_doctor_defaults(tmp_path):
    """With no config, doctor lists every setting with source `default`, the versions, and the file exporter."""
    result = run_cli(tmp_path, "doctor")
    assert result.returncode == 0, result.stderr
    for name in SETTINGS:
        assert setting_row(result.stdout, name)[1] == "default"
    assert setting_row(result.stdout, "service_name")[0] == "unknown_service"
    lines = (re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines())
    integrations = {
        cells[0]: cells[1:] for cells in lines if len(cells) == 4
    }  # PACKAGE VERSION SUPPORTED STATUS
    for package in ("opentelemetry-api", "opentelemetry-sdk"):
        assert integrations[package] == [metadata.version(package), ">=1.30,<2", "ok"]
    assert labelled(result.stdout, "sessiontrace") == metadata.version("sessiontrace")
    assert labelled(result.stdout, "python").startswith(".".join(map(str, sys.version_info[:3])))
    assert "exporter: file" in result.stdout
    data_dir = tmp_path.resolve() / ".sessiontrace"
    assert labelled(result.stdout, "data dir") == str(data_dir)
    assert labelled(result.stdout, "traces folder") == str(data_dir / "traces")
    assert labelled(result.stdout, "check").startswith("writable")
    assert not data_dir.exists(), "doctor must not create the data folder"


def test_doctor_ranges_are_the_ones_pyproject_declares():
    """Each range doctor shows has the floor (and the ceiling, where there is one) that pyproject.toml declares for the package, so the two cannot drift apart."""
    from packaging.requirements import Requirement

    from sdk.cli import integrations

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    extras = (r for name, reqs in project["optional-dependencies"].items() if name != "dev" for r in reqs)
    declared = {
        req.name: {str(s) for s in req.specifier}
        for req in map(Requirement, [*project["dependencies"], *extras])
    }
    checked = []
    for package, _, supported in integrations():
        if package not in declared:
            continue  # protobuf: OpenTelemetry's exporters choose it
        bounds = {s for s in declared[package] if s.startswith((">", "<"))}
        assert bounds <= set(supported.split(",")), (package, supported, declared[package])
        checked.append(package)
    assert {"opentelemetry-sdk", "openai", "anthropic", "langgraph", "agency-swarm", "redis"} <= set(checked)


def test_doctor_env_sources_and_masked_headers(tmp_path):
    """Values from the environment name their variable as source, and header values are never printed."""
    env = clean_env(
        OTEL_SERVICE_NAME="checkout",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20secret",
    )
    text = run_cli(tmp_path, "doctor", env=env)
    as_json = run_cli(tmp_path, "doctor", "--json", env=env)
    assert text.returncode == 0, text.stderr
    assert setting_row(text.stdout, "service_name") == ("checkout", "env OTEL_SERVICE_NAME")
    assert setting_row(text.stdout, "headers") == ("authorization=***", "env OTEL_EXPORTER_OTLP_HEADERS")
    assert json.loads(as_json.stdout)["settings"]["headers"]["value"] == "authorization=***"
    for output in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        assert "secret" not in output


def test_doctor_config_file_source(tmp_path):
    """Values from a sessiontrace.toml in the working folder name that file as their source."""
    config_file = write(tmp_path / "sessiontrace.toml", 'service_name = "from-file"\nmax_queue_size = 64\n')
    result = run_cli(tmp_path, "doctor")
    assert result.returncode == 0, result.stderr
    source = f"file {config_file.resolve()}"
    assert setting_row(result.stdout, "service_name") == ("from-file", source)
    assert setting_row(result.stdout, "max_queue_size") == ("64", source)
    assert setting_row(result.stdout, "protocol")[1] == "default"
    assert f"config file: {config_file.resolve()}" in result.stdout


def test_doctor_bad_env_value_exits_2_with_one_line(tmp_path):
    """An invalid environment value gives one stderr line naming the key and the variable, exit 2, no traceback."""
    result = run_cli(tmp_path, "doctor", env=clean_env(SESSIONTRACE_MAX_QUEUE_SIZE="lots"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "max_queue_size" in lines[0]
    assert "SESSIONTRACE_MAX_QUEUE_SIZE" in lines[0]
    assert "Traceback" not in result.stderr


def test_doctor_json(tmp_path):
    """`doctor --json` prints one JSON object with versions, every setting with value and source, and the exporter."""
    result = run_cli(tmp_path, "doctor", "--json", env=clean_env(SESSIONTRACE_SERVICE_NAME="api"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["settings"]) == set(SETTINGS)
    assert report["settings"]["service_name"] == {"value": "api", "source": "env SESSIONTRACE_SERVICE_NAME"}
    assert report["settings"]["protocol"] == {"value": "http/protobuf", "source": "default"}
    assert report["versions"]["opentelemetry-sdk"] == metadata.version("opentelemetry-sdk")
    assert report["config_file"] is None
    assert report["exporter"]["kind"] == "file"
    assert report["exporter"]["data_dir"] == str(tmp_path.resolve() / ".sessiontrace")
    assert report["exporter"]["check"]["ok"] is True
    assert report["ok"] is True


def test_doctor_endpoint_answers(tmp_path, collector):
    """With a reachable OTLP endpoint, doctor POSTs an empty export with the configured headers and reports ok."""
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20secret",
    )
    result = run_cli(tmp_path, "doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exporter: otlp" in result.stdout
    assert labelled(result.stdout, "endpoint") == f"{collector.url}/v1/traces"
    assert labelled(result.stdout, "check") == "ok (HTTP 200)"
    assert "secret" not in result.stdout
    [request] = collector.requests
    assert request["path"] == "/v1/traces"
    assert request["headers"]["content-type"] == "application/x-protobuf"
    assert request["headers"]["authorization"] == "Bearer secret"
    assert ExportTraceServiceRequest.FromString(request["body"]) == ExportTraceServiceRequest()


def test_doctor_endpoint_http_error(tmp_path, collector):
    """An endpoint that answers with an error status is reported with that status, exit 1."""
    env = clean_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{collector.url}/wrong/path")
    result = run_cli(tmp_path, "doctor", "--json", env=env)
    assert result.returncode == 1
    check = json.loads(result.stdout)["exporter"]["check"]
    assert check == {"ok": False, "message": "failed: HTTP 404 Not Found"}


def test_doctor_endpoint_closed_port(tmp_path):
    """An endpoint where nothing listens is reported as a connection failure in one line, exit 1."""
    port = closed_port()
    result = run_cli(
        tmp_path, "doctor", env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
    )
    assert result.returncode == 1
    check = labelled(result.stdout, "check")
    assert check.startswith(f"failed: cannot connect to 127.0.0.1:{port}")
    assert "refused" in check.lower()
    assert "result: a check failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_console_script_doctor(tmp_path):
    """The installed `sessiontrace` console script runs the same doctor."""
    script = Path(sys.executable).with_name("sessiontrace")
    if not script.exists():
        script = Path(shutil.which("sessiontrace") or "sessiontrace")
    assert script.exists(), "the sessiontrace console script is not installed next to this Python"
    result = subprocess.run(
        [str(script), "doctor", "--json"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["exporter"]["kind"] == "file"


# ---------------------------------------------------------------------------------------------
# run

TRACED_SCRIPT = """\
import json
import sys

from opentelemetry import trace

tracer = trace.get_tracer("user.script")
with tracer.start_as_current_span("outer"):
    with tracer.start_as_current_span("inner"):
        print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0]}))
"""


def test_run_script_lands_in_auto_session(tmp_path):
    """A script's raw OpenTelemetry spans land in the auto session, which ends `success`; argv is passed."""
    script = write(tmp_path / "app" / "job.py", TRACED_SCRIPT)
    result = run_cli(tmp_path, "run", "app/job.py", "alpha", "--beta", "-m")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {
        "argv": ["app/job.py", "alpha", "--beta", "-m"],
        "name": "__main__",
        "path0": str(script.parent),
    }

    spans = exported_spans(tmp_path)
    root = auto_session_root(spans)
    root_attrs = attributes(root)
    assert root_attrs["session.state"] == "success"
    by_name = {s["name"]: s for s in spans if s is not root and not attributes(s).get("session.auto")}
    assert set(by_name) == {"outer", "inner"}
    assert {attributes(s)["session.id"] for s in spans} == {root_attrs["session.id"]}
    assert {s["traceId"] for s in spans} == {root["traceId"]}
    assert by_name["outer"]["parentSpanId"] == root["spanId"]
    assert by_name["inner"]["parentSpanId"] == by_name["outer"]["spanId"]
    assert re.search(r"^sessiontrace: session 'auto' \S+ success", result.stderr, re.MULTILINE)


def test_run_uncaught_exception_like_plain_python(tmp_path):
    """An uncaught exception gives python's exit status and exact traceback, and the auto session ends `fail`."""
    write(
        tmp_path / "boom.py",
        """\
        import json

        def parse(text):
            return json.loads(text)

        print("before")
        parse("{not json")
        """,
    )
    plain = run_python(tmp_path, "boom.py")
    wrapped = run_cli(tmp_path, "run", "boom.py")
    assert plain.returncode == 1
    assert wrapped.returncode == plain.returncode
    assert wrapped.stdout == plain.stdout == "before\n"
    assert "Traceback (most recent call last):" in plain.stderr
    assert without_summaries(wrapped.stderr) == plain.stderr
    root = attributes(auto_session_root(exported_spans(tmp_path)))
    assert root["session.state"] == "fail"
    assert "JSONDecodeError" in root["session.end_reason"]


def test_run_sys_exit_code(tmp_path):
    """A script's sys.exit(3) is the exit status of `run`, and ends the auto session as fail."""
    write(tmp_path / "quit.py", "import sys\nprint('bye')\nsys.exit(3)\n")
    result = run_cli(tmp_path, "run", "quit.py")
    assert result.returncode == 3
    assert result.stdout == "bye\n"
    assert "Traceback" not in result.stderr
    root = auto_session_root(exported_spans(tmp_path))
    assert attributes(root)["session.state"] == "fail"
    assert attributes(root)["session.end_reason"] == "exit 3"


def test_run_module(tmp_path):
    """`run -m pkg.mod ARGS` runs the module as __main__ with python -m's sys.argv, inside the auto session."""
    module = write(tmp_path / "pkg" / "job.py", TRACED_SCRIPT)
    write(tmp_path / "pkg" / "__init__.py", "")
    result = run_cli(tmp_path, "run", "-m", "pkg.job", "x", "--y")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {
        "argv": [str(module.resolve()), "x", "--y"],
        "name": "__main__",
        "path0": str(tmp_path.resolve()),
    }
    spans = exported_spans(tmp_path)
    root = auto_session_root(spans)
    assert attributes(root)["session.state"] == "success"
    assert {s["name"] for s in spans} >= {"outer", "inner"}
    assert {attributes(s)["session.id"] for s in spans} == {attributes(root)["session.id"]}


def test_run_missing_targets(tmp_path):
    """A missing script exits 2 and a missing module exits 1, each with one message and no session started."""
    script = run_cli(tmp_path, "run", "nope.py")
    module = run_cli(tmp_path, "run", "-m", "no_such_module_here")
    assert script.returncode == 2
    assert "can't open file" in script.stderr
    assert module.returncode == 1
    assert "No module named no_such_module_here" in module.stderr
    for result in (script, module):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / ".sessiontrace").exists()
