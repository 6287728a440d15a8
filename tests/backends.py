"""Real backends for end-to-end tests: Arize Phoenix, MLflow's tracking server and the rotel collector.

Each is installed from PyPI into a virtual environment cached outside the repository, keyed by
version (``~/.cache/sessiontrace-test/<name>-<version>``, or under ``$SESSIONTRACE_TEST_CACHE``),
so repeated runs on one machine install once. A file lock makes concurrent runs wait for one
install. If PyPI cannot be reached the test is skipped with the reason; any other install failure
fails it. The servers run on 127.0.0.1 only, with Phoenix's telemetry, agent assistant, MCP
server and external resources turned off and its working folder in a temporary folder; MLflow
with its usage telemetry off (``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``) and a SQLite store in
a temporary folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PHOENIX_VERSION = "20.26.1"
MLFLOW_VERSION = "3.17.2"
"""3.18.0 does not install: it pins mlflow-tracing==3.18.0, which is not on the index."""
ROTEL_VERSION = "0.0.1a15"
HOST = "127.0.0.1"
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Temporary failure in name resolution|Name or service not known|"
    r"ConnectTimeout|ReadTimeout|ProxyError|Network is unreachable|Connection refused|"
    r"No matching distribution found"
)


def cache_root() -> Path:
    """Where cached test environments live."""
    configured = os.environ.get("SESSIONTRACE_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "sessiontrace-test"


def cached_venv(name: str, requirement: str, *more: str, python: str = sys.executable) -> Path:
    """A virtual environment of `python` with `requirement` (and `more`) installed, built once per machine and version."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / name
    ready = venv / ".sessiontrace-ready"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run installing the same environment: wait for it
        if ready.exists():
            return venv
        if venv.exists():
            subprocess.run(["rm", "-rf", str(venv)], check=True)
        # --upgrade-deps: the pip that venv bundles may be too old to resolve today's dependency sets
        subprocess.run([python, "-m", "venv", "--upgrade-deps", str(venv)], check=True, capture_output=True)
        install = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                requirement,
                *more,
            ],
            capture_output=True,
            text=True,
            timeout=1500,
        )
        if install.returncode != 0:
            output = install.stdout + install.stderr
            subprocess.run(["rm", "-rf", str(venv)], check=False)
            if _NETWORK_ERRORS.search(output):
                pytest.skip(f"cannot install {requirement}: PyPI is unreachable ({output.strip()[-300:]})")
            pytest.fail(f"installing {requirement} failed:\n{output[-3000:]}")
        ready.write_text(" ".join((requirement, *more)), encoding="utf-8")
    return venv


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], log: Path, timeout: float) -> None:
    """Wait until something listens on `port`; fail with the server's log if it died or took too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.2)
    pytest.fail(
        f"server did not listen on {port} within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}"
    )


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate a server we started (by its own handle), then kill it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Phoenix:
    """A running Phoenix server: OTLP/HTTP at `http_url` + /v1/traces, OTLP/gRPC at `grpc_url`."""

    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"http://{HOST}:{self.grpc_port}"

    def get(self, path: str, **params: str) -> Any:
        """GET a REST API path (e.g. ``/v1/projects/p/spans``) and decode its JSON."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.http_url}{path}{query}", timeout=10) as response:
            return json.load(response)

    def spans(self, project: str) -> list[dict[str, Any]]:
        """Every span of a project (all pages)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "1000"} if cursor is None else {"limit": "1000", "cursor": cursor}
            try:
                page = self.get(f"/v1/projects/{project}/spans", **params)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the project does not exist yet
                    return []
                raise
            found += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def graphql(self, query: str, **variables: Any) -> Any:
        """Run a GraphQL query (what Phoenix's own UI reads); its ``data``, or fail with its errors."""
        request = urllib.request.Request(
            f"{self.http_url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        assert not answer.get("errors"), answer["errors"]
        return answer["data"]

    def sessions(self, project: str) -> list[dict[str, Any]]:
        """The project's sessions listing."""
        try:
            return list(self.get(f"/v1/projects/{project}/sessions", limit="1000")["data"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise


@contextlib.contextmanager
def run_phoenix(workdir: Path) -> Iterator[Phoenix]:
    """Start `phoenix serve` from its cached environment on free loopback ports."""
    venv = cached_venv(f"phoenix-{PHOENIX_VERSION}", f"arize-phoenix=={PHOENIX_VERSION}")
    phoenix = Phoenix(free_port(), free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_", "SESSIONTRACE_"))}
    env.update(
        PHOENIX_WORKING_DIR=str(workdir),
        PHOENIX_HOST=HOST,
        PHOENIX_PORT=str(phoenix.http_port),
        PHOENIX_GRPC_PORT=str(phoenix.grpc_port),
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
        PHOENIX_DISABLE_AGENT_ASSISTANT="true",
        PHOENIX_ENABLE_MCP_SERVER="false",
        PHOENIX_SQL_DATABASE_URL=f"sqlite:///{workdir / 'phoenix.db'}",
    )
    log = workdir / "phoenix.log"
    code = (
        "import sys; from phoenix.server.main import main; sys.argv = ['phoenix', 'serve']; sys.exit(main())"
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-c", code],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(phoenix.http_port, process, log, timeout=180)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{phoenix.http_url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"Phoenix not healthy:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        wait_for_port(phoenix.grpc_port, process, log, timeout=30)
        yield phoenix
    finally:
        stop(process)


@dataclass
class MLflow:
    """A running `mlflow server`: OTLP/HTTP traces at `url` + /v1/traces, its REST API at `url`."""

    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        """One REST call (``/api/...``), its JSON answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            f"{self.url}{path}{query}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.load(response)

    def create_experiment(self, name: str) -> str:
        """A new experiment's id (traces are sent to one with the ``x-mlflow-experiment-id`` header)."""
        return str(self.call("POST", "/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"])

    def traces(self, experiment_id: str, filter_string: str = "") -> list[dict[str, Any]]:
        """The experiment's trace infos (``filter_string`` as in ``mlflow.search_traces``)."""
        body: dict[str, Any] = {
            "locations": [
                {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}}
            ],
            "max_results": 100,
        }
        if filter_string:
            body["filter"] = filter_string
        return list(self.call("POST", "/api/3.0/mlflow/traces/search", body).get("traces", []))

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans MLflow stored for a trace."""
        found = self.call("GET", "/api/3.0/mlflow/traces/get", trace_id=trace_id)
        return (
            list(found["trace"]["trace"]["spans"])
            if "trace" in found.get("trace", {})
            else list(found["trace"]["spans"])
        )


@contextlib.contextmanager
def run_mlflow(workdir: Path) -> Iterator[MLflow]:
    """Start `mlflow server` (SQLite store, loopback, one worker) from its cached environment."""
    venv = cached_venv(f"mlflow-{MLFLOW_VERSION}", f"mlflow=={MLFLOW_VERSION}")
    server = MLflow(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_", "SESSIONTRACE_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    log = workdir / "mlflow.log"
    command = [
        str(venv / "bin" / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--default-artifact-root", str(workdir / "artifacts"),
        "--host", HOST, "--port", str(server.port), "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(server.port, process, log, timeout=180)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"MLflow not healthy:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        stop(process)


@dataclass
class Rotel:
    """A running rotel collector: OTLP in on `http_url` / `grpc_url`."""

    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"http://{HOST}:{self.grpc_port}"


@contextlib.contextmanager
def run_rotel(workdir: Path, forward_to_grpc: str) -> Iterator[Rotel]:
    """Start the rotel collector: OTLP/HTTP and gRPC in, OTLP/gRPC out to `forward_to_grpc`."""
    venv = cached_venv(f"rotel-{ROTEL_VERSION}", f"rotel=={ROTEL_VERSION}")
    find = "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"
    agent = subprocess.run(
        [str(venv / "bin" / "python"), "-c", find], capture_output=True, text=True, check=True
    ).stdout.strip()
    rotel = Rotel(free_port(), free_port())
    log = workdir / "rotel.log"
    command = [
        agent, "start",
        "--otlp-http-endpoint", f"{HOST}:{rotel.http_port}",
        "--otlp-grpc-endpoint", f"{HOST}:{rotel.grpc_port}",
        "--exporter", "otlp",
        "--otlp-exporter-endpoint", forward_to_grpc,
        "--otlp-exporter-protocol", "grpc",
        "--batch-timeout", "100ms",
        "--pid-file", str(workdir / "rotel.pid"),
        "--log-file", str(log),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROTEL_"))}
    with (workdir / "rotel.out").open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(rotel.http_port, process, workdir / "rotel.out", timeout=30)
        yield rotel
    finally:
        stop(process)


def wait_until(check: Any, timeout: float = 30.0, interval: float = 0.3) -> Any:
    """Call `check()` until it returns something truthy; return it (or the last value on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
