"""Beside the OpenTelemetry an application already has, with the real packages (issue 21): every span exactly once, in its session.

Each setup runs tests/foreign_app.py in a child process of a venv cached under
~/.cache/sessiontrace-test/ (tests/backends.py) holding the real package — opentelemetry-distro
with ``opentelemetry-instrument``, Logfire, Traceloop (OpenLLMetry), OpenInference's and
OpenTelemetry-contrib's openai instrumentations — with this checkout's `sdk` on PYTHONPATH. The
application and sessiontrace both read the same OTEL_EXPORTER_OTLP_* variables, pointing at one
loopback receiver that decodes every request; the test counts span ids. Marker `foreign`: left
out of the default run, run by .ci/run with ``-m foreign -n 0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from backends import cached_venv
from llm_server import LLMServer
from otlp_receiver import OTLPReceiver, ReceivedSpan
from test_multi_tenant import child_env

pytestmark = [pytest.mark.foreign, pytest.mark.subprocess]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
APP = TESTS / "foreign_app.py"
SDK_DEPENDENCIES = (
    "opentelemetry-sdk>=1.45,<2",
    "opentelemetry-exporter-otlp-proto-http>=1.45,<2",
    "wrapt>=1.16",
)
VENVS = {
    "otel": (
        "opentelemetry-distro==0.66b1",
        "opentelemetry-exporter-otlp-proto-grpc>=1.45,<2",
        "opentelemetry-instrumentation-requests==0.66b1",
        "opentelemetry-instrumentation-httpx==0.66b1",
        "openinference-instrumentation-openai==0.1.66",
        "opentelemetry-instrumentation-genai-openai==1.3b0",
        "openai>=1.68,<4",
        "requests>=2.31",
        "httpx>=0.27",
    ),
    "logfire": ("logfire==5.4.0",),
    "traceloop": ("traceloop-sdk==0.62.4", "openai>=1.68,<4", "httpx>=0.27"),
}


def venv_python(kind: str) -> Path:
    """The cached venv's bin folder for one kind of setup (built on first use)."""
    packages = (*VENVS[kind], *SDK_DEPENDENCIES)
    key = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:10]
    return cached_venv(f"foreign-{kind}-{key}", *packages) / "bin"


@pytest.fixture(scope="module")
def otel_bin() -> Path:
    return venv_python("otel")


@pytest.fixture(scope="module")
def logfire_bin() -> Path:
    return venv_python("logfire")


@pytest.fixture(scope="module")
def traceloop_bin() -> Path:
    return venv_python("traceloop")


def run_app(
    bin_dir: Path,
    tmp_path: Path,
    setup: str,
    order: str,
    *args: str,
    instrument: bool = False,
    **env: str,
) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    """Run foreign_app.py (under opentelemetry-instrument when `instrument`); its JSON report and the process."""
    network_log = tmp_path / "network.log"
    child = child_env(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
        OTEL_SERVICE_NAME="app",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        TRACELOOP_TELEMETRY="false",
        LOOPBACK_GUARD_LOG=str(network_log),
        **env,
    )
    command = [str(bin_dir / "python"), str(APP), setup, order, *args]
    if instrument:
        command = [str(bin_dir / "opentelemetry-instrument"), *command]
    proc = subprocess.run(command, cwd=tmp_path, env=child, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert network_log.read_text() == ""  # loopback only (the log is written at exit)
    report = json.loads(
        next(line for line in reversed(proc.stdout.splitlines()) if line.startswith('{"auto"'))
    )
    assert report["stats"] == {"internal_errors": 0}
    return report, proc


def once(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    """The finished spans (live markers left out) by name, after checking that each arrived exactly once."""
    finished = [s for s in spans if s.attributes.get("session.state") != "running"]
    counts = Counter((s.trace_id, s.span_id) for s in finished)
    doubled = [
        (s.name, counts[(s.trace_id, s.span_id)]) for s in finished if counts[(s.trace_id, s.span_id)] > 1
    ]
    assert not doubled, f"spans arrived more than once: {doubled}"
    names = Counter(s.name for s in finished)
    assert all(n == 1 for n in names.values()), names
    return {s.name: s for s in finished}


def check_sessions(spans: dict[str, ReceivedSpan], report: dict[str, object], *names: str) -> None:
    """The session contract in the received spans: states, ids, and each work span in its session's trace."""
    auto, explicit, failing = spans["auto"], spans["explicit"], spans["failing"]
    assert auto.attributes["session.id"] == report["auto"]
    assert auto.attributes["session.state"] == "success"  # ended at exit (or by sdk.shutdown())
    assert explicit.attributes["session.id"] == report["explicit"]
    assert explicit.attributes["session.state"] == "success"
    assert failing.attributes["session.id"] == report["failing"]
    assert failing.attributes["session.state"] == "fail"
    # On the application's provider a root span outside any session carries the auto session's id
    # but starts its own trace (adopting it into the auto session's trace needs sessiontrace's tracer).
    assert spans["in-auto"].attributes["session.id"] == report["auto"]
    for name in ("in-session", *names):
        assert spans[name].attributes["session.id"] == report["explicit"], name
        assert spans[name].trace_id == explicit.trace_id, name


def wait_for(receiver: OTLPReceiver, *names: str) -> dict[str, ReceivedSpan]:
    """The received spans once every named one arrived (the child flushed at exit already)."""
    for name in names:
        assert _eventually(lambda n=name: receiver.spans_named(n)), name
    return once(receiver.spans)


def _eventually(check: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


NAMES = ("auto", "explicit", "failing", "in-auto", "in-session")


# ---------------------------------------------------------------------------------------------
# opentelemetry-instrument (opentelemetry-distro)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_opentelemetry_instrument_otlp_three_inits_and_shutdown_every_span_once(otel_bin, tmp_path, protocol):
    """Under opentelemetry-instrument (OTEL_TRACES_EXPORTER=otlp; grpc is the distro's default protocol), init() three times: every span once, in its session; after shutdown() the app's spans still arrive."""
    with OTLPReceiver(grpc=True) as receiver:
        endpoint = receiver.grpc_url if protocol == "grpc" else receiver.url
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_EXPORTER": "otlp"}
        if protocol != "grpc":  # else the distro sets grpc, and sessiontrace reads it as the app does
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
        report, proc = run_app(
            otel_bin,
            tmp_path,
            "instrument",
            "before",
            "--inits",
            "3",
            "--shutdown",
            "--http",
            receiver.url + "/ping",
            instrument=True,
            **env,
        )
        spans = wait_for(receiver, *NAMES, "GET", "after-shutdown")
    check_sessions(spans, report, "GET")
    assert "session.id" not in spans["after-shutdown"].attributes  # the app's span, exported by the app
    assert proc.stderr.count("sessiontrace adds sessions to its spans and exports to nothing of its own") == 1


@pytest.mark.parametrize("sessiontrace_exporter", [None, "otlp"])
def test_opentelemetry_instrument_console_each_span_printed_once(otel_bin, tmp_path, sessiontrace_exporter):
    """OTEL_TRACES_EXPORTER=console: the app prints every span once, sessiontrace prints none again; with SESSIONTRACE_EXPORTER=otlp it also sends each span once to the receiver."""
    with OTLPReceiver() as receiver:
        env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        if sessiontrace_exporter:
            env["SESSIONTRACE_EXPORTER"] = sessiontrace_exporter
        report, proc = run_app(otel_bin, tmp_path, "instrument", "before", instrument=True, **env)
        if sessiontrace_exporter:
            received = wait_for(receiver, *NAMES)
            check_sessions(received, report)
        else:
            assert not _eventually(lambda: receiver.spans, timeout=1.0)
    printed = console_spans(proc.stdout)
    ids = Counter(span["context"]["span_id"] for span in printed)
    assert ids
    assert all(n == 1 for n in ids.values()), ids
    by_name = {span["name"]: span for span in printed}
    assert set(NAMES) <= set(by_name)
    assert by_name["in-session"]["attributes"]["session.id"] == report["explicit"]
    assert by_name["failing"]["attributes"]["session.state"] == "fail"


def console_spans(stdout: str) -> list[dict[str, object]]:
    """The JSON objects OpenTelemetry's ConsoleSpanExporter printed (the app's report line left out)."""
    decoder = json.JSONDecoder()
    spans, at = [], 0
    while (start := stdout.find("{", at)) != -1:
        value, at = decoder.raw_decode(stdout, start)
        if isinstance(value, dict) and "context" in value:
            spans.append(value)
    return spans


def test_doctor_under_opentelemetry_instrument_shows_what_the_export_test_observes(otel_bin, tmp_path):
    """`opentelemetry-instrument python -m sdk doctor` says the OTLP endpoint is left to the app: what the export test sees."""
    env = child_env(
        PYTHONPATH=str(ROOT),
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    command = [str(otel_bin / "opentelemetry-instrument"), str(otel_bin / "python"), "-m", "sdk", "doctor"]
    text = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    as_json = subprocess.run(
        [*command, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    plan = json.loads(as_json.stdout)["beside_application"]
    assert plan["exported"] == []
    assert plan["application"][0]["url"] == "http://127.0.0.1:4318/v1/traces"
    assert plan["skipped"][0]["destination"] == "otlp"
    assert "the application exports to it already" in plan["skipped"][0]["why"]
    assert "sessiontrace exports to  nothing (stamp only)" in text.stdout
    plain = subprocess.run(
        [str(otel_bin / "python"), "-m", "sdk", "doctor", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(plain.stdout)["beside_application"]["exported"] == ["otlp"]  # no app pipeline there


# ---------------------------------------------------------------------------------------------
# A provider set up by hand


@pytest.mark.parametrize("order", ["before", "after"])
def test_provider_by_hand_every_span_once(otel_bin, tmp_path, order):
    """A TracerProvider with an OTLP exporter set by hand before init() (or, after it, a processor added to the global provider): every span once, in its session, three inits, shutdown."""
    with OTLPReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "APP_OTLP_ENDPOINT": receiver.url}
        report, proc = run_app(otel_bin, tmp_path, "by-hand", order, "--inits", "3", "--shutdown", **env)
        spans = wait_for(receiver, *NAMES, "after-shutdown")
    check_sessions(spans, report)
    assert "exports to nothing of its own" in proc.stderr


@pytest.mark.parametrize(("mode", "copies"), [("auto", 1), ("stamp", 0), ("own", 1)])
def test_export_mode_with_another_destination(otel_bin, tmp_path, mode, copies):
    """The app exports to one receiver and sessiontrace's endpoint is another: auto and own export there too, stamp does not; the app's receiver gets each span once."""
    with OTLPReceiver() as app, OTLPReceiver() as ours:
        env = {
            "APP_OTLP_ENDPOINT": app.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": ours.url,
            "SESSIONTRACE_EXPORT_MODE": mode,
        }
        report, _ = run_app(otel_bin, tmp_path, "by-hand", "before", **env)
        check_sessions(wait_for(app, *NAMES), report)
        if copies:
            check_sessions(wait_for(ours, *NAMES), report)
        else:
            assert not _eventually(lambda: ours.spans, timeout=1.0)


def test_export_mode_own_exports_twice_as_asked(otel_bin, tmp_path):
    """export_mode=own beside an app exporting to the same endpoint sends each span twice: the setting means it."""
    with OTLPReceiver() as receiver:
        env = {
            "APP_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "SESSIONTRACE_EXPORT_MODE": "own",
        }
        run_app(otel_bin, tmp_path, "by-hand", "before", **env)
        assert _eventually(lambda: len(receiver.spans_named("explicit")) == 2)


# ---------------------------------------------------------------------------------------------
# Logfire and Traceloop (OpenLLMetry)


def test_logfire_configured_before_init_every_span_once(logfire_bin, tmp_path):
    """logfire.configure(send_to_logfire=False) before init(): Logfire's own and raw spans once each, in their sessions (with the documented scrubbing callback)."""
    with OTLPReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        report, proc = run_app(
            logfire_bin, tmp_path, "logfire", "before", "--inits", "3", "--shutdown", **env
        )
        spans = wait_for(receiver, *NAMES, "logfire-span", "after-shutdown")
    check_sessions(spans, report, "logfire-span")
    assert "Logfire scrubs attributes" in proc.stderr


def test_logfire_configured_after_init_keeps_its_own_provider(logfire_bin, tmp_path):
    """logfire.configure() after init() cannot replace the global provider: raw spans are in their sessions, Logfire's own spans are exported by Logfire, outside them; each once."""
    with OTLPReceiver() as receiver:
        report, _ = run_app(
            logfire_bin, tmp_path, "logfire", "after", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url
        )
        spans = wait_for(receiver, *NAMES, "logfire-span")
    check_sessions(spans, report)
    assert "session.id" not in spans["logfire-span"].attributes


@pytest.mark.parametrize("order", ["before", "after"])
def test_traceloop_every_span_once(traceloop_bin, tmp_path, order):
    """Traceloop.init() before or after init(), exporting to the same endpoint: every span once, in its session, three inits, shutdown."""
    with OTLPReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "APP_OTLP_ENDPOINT": receiver.url}
        report, _ = run_app(traceloop_bin, tmp_path, "traceloop", order, "--inits", "3", "--shutdown", **env)
        spans = wait_for(receiver, *NAMES, "after-shutdown")
    check_sessions(spans, report)


def test_traceloop_openai_call_is_one_span_in_its_session(traceloop_bin, tmp_path):
    """Traceloop instruments openai too: with sessiontrace's instrumentation on, the call is one span, sessiontrace's."""
    with OTLPReceiver() as receiver, LLMServer() as llm:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "APP_OTLP_ENDPOINT": receiver.url}
        report, proc = run_app(
            traceloop_bin, tmp_path, "traceloop", "before", "--openai", llm.openai_url, **env
        )
        spans = wait_for(receiver, *NAMES, "chat gpt-4o-mini")
    check_sessions(spans, report, "chat gpt-4o-mini")
    assert spans["chat gpt-4o-mini"].scope == "sessiontrace"
    assert proc.stderr.count("openai is also instrumented by OpenLLMetry") == 1


# ---------------------------------------------------------------------------------------------
# Instrumentations from others


@pytest.mark.parametrize("instrumentor", ["openinference", "contrib"])
@pytest.mark.parametrize("ours", ["all", "none"])
def test_other_openai_instrumentation_in_sessions_and_never_doubled(otel_bin, tmp_path, instrumentor, ours):
    """OpenInference's or contrib's openai instrumentor beside sessiontrace's: one LLM span per call (sessiontrace's when its own is on, theirs when off), in its session."""
    with OTLPReceiver() as receiver, LLMServer() as llm:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "APP_OTLP_ENDPOINT": receiver.url,
            "SESSIONTRACE_INSTRUMENT": ours,
        }
        args = ("--openai", llm.openai_url, "--instrumentor", instrumentor)
        report, _ = run_app(otel_bin, tmp_path, "by-hand", "before", *args, **env)
        assert _eventually(lambda: receiver.spans_named("explicit"))
        spans = once(receiver.spans)
    llm_spans = [
        s
        for s in spans.values()
        if "gen_ai.request.model" in s.attributes or "llm.model_name" in s.attributes
    ]
    assert len(llm_spans) == 1, [(s.name, s.scope) for s in llm_spans]
    (call,) = llm_spans
    expected = (
        "sessiontrace"
        if ours == "all"
        else {"openinference": "openinference.instrumentation.openai"}.get(
            instrumentor, "opentelemetry.instrumentation.genai.openai"
        )
    )
    assert call.scope == expected
    check_sessions(spans, report, call.name)


def test_opentelemetry_instrument_requests_httpx_and_openai_in_sessions(otel_bin, tmp_path):
    """Zero-code instrumentation of requests, httpx (under openai) and openai (OpenInference and contrib both loaded) with sessiontrace's openai off: their spans in the session, once."""
    with OTLPReceiver() as receiver, LLMServer() as llm:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "SESSIONTRACE_INSTRUMENT": "none",
        }
        args = ("--openai", llm.openai_url, "--http", receiver.url + "/ping")
        report, _ = run_app(otel_bin, tmp_path, "instrument", "before", *args, instrument=True, **env)
        spans = wait_for(receiver, *NAMES, "GET", "POST")
    check_sessions(spans, report, "GET", "POST")
    assert any(
        s.scope.startswith(("openinference", "opentelemetry.instrumentation.genai")) for s in spans.values()
    )
