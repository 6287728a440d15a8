"""``python -m benchmarks --peers``: the peers' own APIs side by side, each against raw OpenTelemetry.

Not run by CI. Each peer gets its own virtual environment outside the repository (they pin
different OpenTelemetry versions), made once and cached under
``~/.cache/sessiontrace-bench/peers/<name>-<version>`` (``SESSIONTRACE_BENCH_CACHE`` moves it):
``python -m venv``, then ``pip install <peer>==<version> opentelemetry-sdk
opentelemetry-exporter-otlp-proto-http``. sessiontrace itself runs in the current environment.

Every network destination is loopback: a small HTTP sink on 127.0.0.1 (answers 200 to anything,
counts requests by path) is each peer's endpoint, ``HTTP(S)_PROXY`` / ``ALL_PROXY`` point at a
closed loopback port (``NO_PROXY`` only for 127.0.0.1 / localhost), and every phone-home knob we
know of is off (see `peer_env`).

Per peer, in that peer's interpreter:

- import time: fresh interpreters, the peer's import against ``import opentelemetry.sdk.trace``
  in the same environment, interleaved, median of the rounds;
- per span and attribution: ``benchmarks/peers/worker.py`` (see its docstring), which compares the
  peer's decorator with raw OpenTelemetry in the same process and runs 32 threads x 200 spans,
  each thread in its own session / trace.

A peer that fails to install or to run is a row saying so, not a crash.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import TIMES, Settings, machine_info

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = Path(__file__).resolve().parent / "worker.py"
THREADS, SPANS_PER_THREAD = 32, 200


@dataclass(frozen=True)
class PeerSpec:
    name: str  # distribution name, and the worker's key
    version: str  # pinned: the venv is cached by name and version
    import_stmt: str  # what a user's program imports
    extras: tuple[str, ...] = ()  # what the peer needs but does not declare

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def requirements(self) -> list[str]:
        return [self.requirement, *self.extras, "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"]


PEERS = (
    PeerSpec("agentops", "0.4.21", "import agentops"),
    # traceloop-sdk 0.62.4 imports httpx (traceloop/sdk/evaluator) without declaring it.
    PeerSpec("traceloop-sdk", "0.62.4", "from traceloop.sdk import Traceloop", extras=("httpx",)),
    # logfire 5.x requires certifi>=2026.10.19, which the package index here does not have yet.
    PeerSpec("logfire", "4.41.0", "import logfire"),
    PeerSpec("langfuse", "5.0.4", "import langfuse"),
)
SELF = PeerSpec("sessiontrace", "repo", "import sdk")
OTEL_IMPORT = "import opentelemetry.sdk.trace"


# ---------------------------------------------------------------------------------------------
# The loopback sink


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    server: _Sink
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.count(self.command, self.path.split("?", 1)[0])
        # AgentOps trades its API key for a token before it exports; give it one.
        body = b'{"token": "bench", "project_id": "bench"}' if "auth" in self.path else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Sink(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, method: str, path: str) -> None:
        with self.lock:
            self.requests[f"{method} {path}"] += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self) -> dict[str, int]:
        with self.lock:
            out = dict(self.requests)
            self.requests.clear()
        return out


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_env(sink: str, dead: str) -> dict[str, str]:
    """The environment of every peer process: all endpoints on loopback, telemetry off."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSIONTRACE_", "OTEL_", "AGENTOPS_", "TRACELOOP_", "LOGFIRE_", "LANGFUSE_"))
        and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PYTHONPATH")
    }
    env.update(
        {
            # Anything that would still leave the machine goes to a closed loopback port instead.
            "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead,
            "ALL_PROXY": dead,
            "http_proxy": dead,
            "https_proxy": dead,
            "all_proxy": dead,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "DO_NOT_TRACK": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            # AgentOps
            "AGENTOPS_API_KEY": "00000000-0000-4000-8000-000000000000",
            "AGENTOPS_API_ENDPOINT": sink,
            "AGENTOPS_APP_URL": sink,
            "AGENTOPS_EXPORTER_ENDPOINT": sink + "/v1/traces",
            "AGENTOPS_AUTO_START_SESSION": "false",
            "AGENTOPS_ENV_DATA_OPT_OUT": "true",
            "AGENTOPS_LOG_SESSION_REPLAY_URL": "false",
            # Traceloop / OpenLLMetry
            "TRACELOOP_BASE_URL": sink,
            "TRACELOOP_TELEMETRY": "false",
            "TRACELOOP_METRICS_ENDPOINT": sink,
            "TRACELOOP_LOGGING_ENDPOINT": sink,
            # Logfire (configure() is also called with send_to_logfire=False)
            "LOGFIRE_SEND_TO_LOGFIRE": "false",
            "LOGFIRE_CONSOLE": "false",
            "LOGFIRE_BASE_URL": sink,
            # Langfuse
            "LANGFUSE_PUBLIC_KEY": "pk-lf-bench",
            "LANGFUSE_SECRET_KEY": "sk-lf-bench",
            "LANGFUSE_HOST": sink,
            "LANGFUSE_BASE_URL": sink,
        }
    )
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "PYTHONWARNINGS"):
        env.pop(name, None)
    return env


# ---------------------------------------------------------------------------------------------
# Environments


def cache_root() -> Path:
    configured = os.environ.get("SESSIONTRACE_BENCH_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "sessiontrace-bench"
    return base / "peers"


def _base_python() -> str:
    """An interpreter to make venvs from: this one's base (a venv made from a venv works too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(spec: PeerSpec, log: list[str]) -> Path:
    """The peer's venv, made and installed once (a marker file says the install finished)."""
    root = cache_root() / f"{spec.name}-{spec.version}"
    marker = root / ".sessiontrace-bench-ok"
    python = root / "bin" / "python"
    wanted = "requirements: " + " ".join(spec.requirements)
    if marker.exists() and python.exists() and marker.read_text(encoding="utf-8").split("\n", 1)[0] == wanted:
        return python
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    print(f"    installing {spec.requirement} into {root} ...", flush=True)
    subprocess.run([_base_python(), "-m", "venv", str(root)], check=True, capture_output=True, text=True)
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *spec.requirements,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        log.extend(errors[-3:] or proc.stderr.splitlines()[-3:])
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pip install {spec.requirement} failed: {'; '.join(errors[-2:])}")
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=False)
    marker.write_text(wanted + "\n" + freeze.stdout, encoding="utf-8")
    return python


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class PeerResult:
    spec: PeerSpec
    version: str = ""
    otel_sdk: str = ""
    import_peer: list[float] = field(default_factory=list)
    import_otel: list[float] = field(default_factory=list)
    worker: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def span_medians(self) -> tuple[float, float, float] | None:
        """(peer wall median, raw wall median, median of per-round ratios)."""
        samples = self.worker.get("per_span", {}).get("samples")
        if not samples or not samples.get("peer"):
            return None
        peer = [s[0] for s in samples["peer"]]
        raw = [s[0] for s in samples["raw"]]
        paired = statistics.median(a / b for a, b in zip(peer, raw, strict=False))
        return statistics.median(peer), statistics.median(raw), paired


def import_times(
    python: str, stmt: str, env: dict[str, str], rounds: int, cwd: Path
) -> tuple[list[float], list[float]]:
    """Fresh interpreters, `stmt` and the OpenTelemetry import interleaved; seconds, timed in the child."""
    scaffold = "import time; t0 = time.perf_counter(); {}; print(time.perf_counter() - t0)"
    out: dict[str, list[float]] = {"peer": [], "otel": []}
    for i in range(rounds + 1):  # the first round warms the bytecode cache and is dropped
        order = [("peer", stmt), ("otel", OTEL_IMPORT)]
        if i % 2:
            order.reverse()
        for name, s in order:
            proc = subprocess.run(
                [python, "-c", scaffold.format(s)],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"`{s}` failed: {proc.stderr.strip().splitlines()[-1:]}")
            if i:
                out[name].append(float(proc.stdout.strip().splitlines()[-1]))
    return out["peer"], out["otel"]


def measure(spec: PeerSpec, python: str, env: dict[str, str], sink: _Sink, settings: Settings) -> PeerResult:
    result = PeerResult(spec)
    workdir = Path(tempfile.mkdtemp(prefix=f"sessiontrace-bench-peer-{spec.name}-"))
    try:
        result.import_peer, result.import_otel = import_times(
            python, spec.import_stmt, env, 4 if settings.quick else 15, workdir
        )
        rounds, warmup, ops = (6, 1, 300) if settings.quick else (30, 3, 1000)
        sink.take()
        proc = subprocess.run(
            [
                python,
                str(WORKER),
                spec.name,
                sink.url,
                str(rounds),
                str(warmup),
                str(ops),
                str(THREADS),
                str(SPANS_PER_THREAD),
            ],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        result.requests = sink.take()
        lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = proc.stderr.strip().splitlines()[-3:]
            raise RuntimeError(f"worker exited {proc.returncode}: {' | '.join(tail)}")
        result.worker = json.loads(lines[-1][len("BENCH-RESULT ") :])
        result.version = str(result.worker.get("version", ""))
        result.otel_sdk = str(result.worker.get("opentelemetry_sdk", ""))
        stderr_lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if stderr_lines:
            result.notes.append(f"stderr: {len(stderr_lines)} lines, first: {stderr_lines[0][:160]}")
        for key in ("per_span_error", "attribution_error"):
            if key in result.worker:
                result.notes.append(f"{key}: {result.worker[key].strip().splitlines()[-1]}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------
# Report

COLUMNS = (
    "SDK",
    "version (OTel SDK)",
    "import",
    "vs OTel import",
    "per span",
    "raw OTel per span",
    "vs raw OTel",
    "misattributed (32 thr x 200)",
)


def _attribution_text(worker: dict[str, Any]) -> str:
    att = worker.get("attribution")
    if not att:
        return "—"
    wrong = max(att["wrong_trace"], att["wrong_session"])
    text = f"{wrong} of {att['recorded']:,}"
    if att["recorded"] != att["expected"] or att["roots"] != THREADS:
        text += f" (expected {att['expected']:,}; {att['roots']} roots)"
    if att.get("errors"):
        text += " (errors)"
    return text


def rows(results: list[PeerResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        if r.error and not r.worker:
            out.append((r.spec.name, r.spec.version, "—", "—", "—", "—", "—", f"failed: {r.error[:80]}"))
            continue
        imp = statistics.median(r.import_peer) if r.import_peer else None
        otel = statistics.median(r.import_otel) if r.import_otel else None
        spans = r.span_medians()
        out.append(
            (
                r.spec.name,
                f"{r.version} ({r.otel_sdk})",
                f"{imp * 1e3:.0f} ms" if imp else "—",
                f"{imp / otel:.2f}{TIMES}" if imp and otel else "—",
                f"{spans[0] * 1e6:.1f} µs" if spans else "—",
                f"{spans[1] * 1e6:.1f} µs" if spans else "—",
                f"{spans[0] / spans[1]:.2f}{TIMES} (paired {spans[2]:.2f}{TIMES})" if spans else "—",
                _attribution_text(r.worker),
            )
        )
    return out


def render_text(results: list[PeerResult]) -> str:
    table = [COLUMNS, *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(
    results: list[PeerResult], machine: dict[str, Any], argv: list[str], sink_note: str
) -> str:
    out = ["# Peers, side by side", "", f"Command: `python -m benchmarks {' '.join(argv)}`", ""]
    out += ["## Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()] + [""]
    out += ["## Results", "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows(results)]
    out += ["", "## Details", "", f"- {sink_note}"]
    for r in results:
        out += ["", f"### {r.spec.name}", ""]
        if r.error:
            out.append(f"- error: {r.error}")
        if r.import_peer:
            out.append(
                f"- import: `{r.spec.import_stmt}` {len(r.import_peer)} fresh interpreters, median "
                f"{statistics.median(r.import_peer) * 1e3:.1f} ms; `{OTEL_IMPORT}` median "
                f"{statistics.median(r.import_otel) * 1e3:.1f} ms"
            )
        if r.worker:
            out.append(
                f"- setup (init / configure) in the worker: {r.worker.get('setup_seconds', 0) * 1e3:.0f} ms"
            )
            samples = r.worker.get("per_span", {}).get("samples")
            if samples:
                cpu_peer = statistics.median(s[1] for s in samples["peer"])
                cpu_raw = statistics.median(s[1] for s in samples["raw"])
                out.append(
                    f"- per span: {len(samples['peer'])} interleaved samples per side; CPU (all threads) "
                    f"median {cpu_peer * 1e6:.1f} µs vs raw {cpu_raw * 1e6:.1f} µs ({cpu_peer / cpu_raw:.2f}{TIMES})"
                )
            att = r.worker.get("attribution")
            if att:
                out.append(
                    f"- attribution: {att['recorded']:,} of {att['expected']:,} spans recorded, {att['roots']} "
                    f"roots; in another thread's trace: {att['wrong_trace']}; wrong session attribute "
                    f"(`{att['session_attribute']}`): "
                    + (str(att["wrong_session"]) if att["session_attribute"] else "— (no session attribute)")
                )
                for err in att.get("errors") or []:
                    out.append(f"- attribution error: {err.strip().splitlines()[-1]}")
        if r.requests:
            shown = ", ".join(f"`{k}` {v}" for k, v in sorted(r.requests.items(), key=lambda kv: -kv[1]))
            out.append(f"- requests the loopback sink received from the worker: {shown}")
        out += [f"- {note}" for note in r.notes]
    return "\n".join(out) + "\n"


def run_peers(settings: Settings, argv: list[str], out_dir: Path) -> int:
    """Install (once) and measure every peer and sessiontrace; print and write the table."""
    machine = machine_info()
    print(f"peers ({'quick' if settings.quick else 'full'}); venvs under {cache_root()}", flush=True)
    sink = _Sink()
    threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    dead = f"http://127.0.0.1:{closed_port()}"
    env = peer_env(sink.url, dead)
    results: list[PeerResult] = []
    try:
        self_env = dict(env, PYTHONPATH=str(REPO_ROOT))
        for spec in (SELF, *PEERS):
            t0 = time.perf_counter()
            print(f"  {spec.name} ...", end="", flush=True)
            if spec is SELF:
                python, run_env = sys.executable, self_env
            else:
                log: list[str] = []
                try:
                    python, run_env = str(ensure_venv(spec, log)), env
                except Exception as exc:
                    results.append(PeerResult(spec, error=f"install: {exc}", notes=log))
                    print(f" install failed ({time.perf_counter() - t0:.0f} s)", flush=True)
                    continue
            results.append(measure(spec, python, run_env, sink, settings))
            print(f" {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        sink.shutdown()
        sink.server_close()
    print()
    print(render_text(results))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if settings.quick else "")
    note = (
        f"every endpoint: a loopback HTTP sink answering 200 ({sink.url}); proxies: {dead} (closed); "
        "each side exports OTLP/HTTP to the sink (raw OpenTelemetry: BatchSpanProcessor(OTLPSpanExporter))"
    )
    md = render_markdown(results, machine, argv, note)
    data = {
        "argv": argv,
        "machine": machine,
        "results": [
            {
                "name": r.spec.name,
                "pinned": r.spec.version,
                "version": r.version,
                "opentelemetry_sdk": r.otel_sdk,
                "import_peer": r.import_peer,
                "import_otel": r.import_otel,
                "worker": r.worker,
                "requests": r.requests,
                "error": r.error,
                "notes": r.notes,
            }
            for r in results
        ],
    }
    for name, text in ((f"peers-{stamp}.md", md), ("peers-latest.md", md)):
        (out_dir / name).write_text(text, encoding="utf-8")
    for name in (f"peers-{stamp}.json", "peers-latest.json"):
        (out_dir / name).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwritten: {out_dir / f'peers-{stamp}.md'}")
    return 0
