"""The ``sessiontrace`` command line (also ``python -m sdk``): ``doctor``, ``run`` and ``sessions``.

``doctor`` shows the resolved configuration (secrets masked, each value with where it came from),
the versions that matter, the exporter actually used, and checks that spans can get out: the
OTLP endpoint answers, or the local traces folder is writable.

``run`` runs a Python program as ``python SCRIPT ARGS...`` or ``python -m MODULE ARGS...`` would,
with the SDK started and an auto session open, so everything the program does lands in one
session. Its output, exit code and uncaught-exception traceback are the program's own.

``sessions list|show|end`` reads the session store (the ``session_store`` setting, or
``--store``): a table of sessions, one session with its segments and its span tree from the
local traces, or ending sessions whose process is gone. Session ids may be shortened to a unique
prefix, as git commit ids are.

``export --to URL`` sends the local OTLP-JSON traces (recorded offline) to an OTLP backend, each
span once (see sdk/upload.py).

See docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import builtins
import importlib.machinery
import importlib.util
import io
import json
import os
import platform
import runpy
import socket
import sys
import traceback
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from sdk.display import mask_url, printable
from sdk.settings import Config, ConfigError, load_config
from sdk.version import __version__, in_range, installed_version

if TYPE_CHECKING:
    from sdk.foreign import ExportPlan
    from sdk.store import Segment, SessionRecord, SessionStore

CHECK_TIMEOUT = 2.0
"""Seconds `doctor` waits for the OTLP endpoint to answer."""

VERSIONED_DISTRIBUTIONS = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-proto",
    "requests",
    "grpcio",
)
"""OpenTelemetry, and what the exporters use: the OTLP encoding (proto-common, proto) and the
transports of the SDK's own OTLP senders (requests for HTTP, grpcio for gRPC, the `grpc` extra)."""
SUPPORTED_RANGES = (
    ("opentelemetry-api", ">=1.30,<2"),
    ("opentelemetry-sdk", ">=1.30,<2"),
    ("opentelemetry-exporter-otlp-proto-http", ">=1.30,<2"),
    ("opentelemetry-exporter-otlp-proto-grpc", ">=1.30,<2"),
    ("protobuf", ">=5,<8"),
    ("wrapt", ">=1.16"),
    ("ipython", ">=8"),
    ("ipykernel", ">=6.29"),
    ("redis", ">=5"),
    ("pandas", ">=2"),
    ("agency-swarm", ">=1.11,<2"),
    ("langchain-core", ">=1.4.7,<2"),
)
"""The packages the SDK integrates with besides the instrumented libraries (whose instrumentors
declare theirs), and the versions it supports: pyproject.toml's ranges (protobuf: what
OpenTelemetry's exporters allow, 5 to 7). docs/compatibility.md shows what was tested."""

_DESCRIPTION = """\
sessiontrace: sessions for LLM and agent programs, recorded as OpenTelemetry traces.

Settings come from the environment (SESSIONTRACE_*, OTEL_*) and the config file
([tool.sessiontrace] in pyproject.toml, or sessiontrace.toml); see docs/configuration.md."""

_EPILOG = """\
examples:
  %(prog)s doctor                 show the config, versions and whether spans can get out
  %(prog)s doctor --json          the same, as JSON
  %(prog)s run app.py --port 80   run app.py (with its arguments) inside an auto session
  %(prog)s run -m mypkg.worker    run a module, as python -m does
  %(prog)s sessions list          the stored sessions, most recently active first
  %(prog)s sessions show ID       one session: its segments and its span tree
  %(prog)s sessions end --stale   end the sessions whose process is gone
  %(prog)s export --to http://localhost:4318   send the local traces to an OTLP backend

Run '%(prog)s COMMAND --help' for a command's options."""

_DOCTOR_DESCRIPTION = """\
Show the resolved configuration (each setting's value, secrets masked, and where it came from:
default, config file, environment variable), the versions of sessiontrace, Python and
OpenTelemetry, and the exporter actually used. With OTLP, check that the endpoint answers (an
empty export request, 2 s timeout, with the configured headers); with the local file exporter,
check that the traces folder is writable. Nothing is written and no span is sent.

exit status: 0 when all is well, 1 when a check failed, 2 when the configuration is invalid."""

_RUN_USAGE = """\
%(prog)s [-h] SCRIPT [ARGS ...]
       %(prog)s [-h] -m MODULE [ARGS ...]"""

_RUN_DESCRIPTION = """\
Run a Python program with sessiontrace started (sdk.init(auto_start_session=True); every other
setting from the environment and the config file), so all its work lands in one auto session,
which ends when the program exits: 'success', or 'fail' on an uncaught exception.

The program runs as `python SCRIPT ARGS...` (or `python -m MODULE ARGS...`) would run it: as
__main__, with sys.argv = [SCRIPT, ARGS...] and sys.path[0] = the script's folder. Its output,
exit status and uncaught-exception traceback are its own. SESSIONTRACE_AUTO_START_SESSION=true
is set in its environment, so an sdk.init() call in the program keeps the auto session (and
Python child processes that call sdk.init() get one each)."""

_RUN_EPILOG = """\
examples:
  %(prog)s app.py --verbose
  %(prog)s -m http.server 8000
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 %(prog)s app.py"""


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None, *, prog: str = "sessiontrace") -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser, run_parser = build_parser(prog)
    if args and args[0] == "run":
        # Parsed by hand: everything after SCRIPT or -m MODULE belongs to the program, options
        # included, which argparse cannot express.
        return run_command(parse_run_args(args[1:], run_parser), prog=run_parser.prog)
    options = parser.parse_args(args)
    if options.command == "doctor":
        return doctor_command(as_json=options.json, prog=prog)
    if options.command == "sessions":
        return sessions_command(options, prog=f"{prog} sessions")
    if options.command == "export":
        return export_command(options, prog=f"{prog} export")
    parser.print_help(sys.stderr)
    return 2


def build_parser(prog: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and the `run` subparser (used for its help text and errors)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sessiontrace {_sessiontrace_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    doctor = commands.add_parser(
        "doctor",
        help="show the resolved config, versions and exporter, and check that spans can get out",
        description=_DOCTOR_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("--json", action="store_true", help="print the report as one JSON object")
    run = commands.add_parser(
        "run",
        help="run a Python script or module inside an auto session",
        usage=_RUN_USAGE,
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("script", metavar="SCRIPT", nargs="?", help="path of the Python script to run")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module (as python -m does)")
    run.add_argument("args", metavar="ARGS", nargs="*", help="arguments passed to the program (sys.argv[1:])")
    add_sessions_parser(commands)
    add_export_parser(commands)
    return parser, run


# ---------------------------------------------------------------------------------------------
# doctor


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check, as one line of text."""

    ok: bool
    message: str


@dataclass
class DoctorReport:
    """Everything `doctor` shows; rendered as text or JSON."""

    versions: dict[str, str]
    config_file: str | None
    settings: list[tuple[str, str, str]]
    exporter: str
    exporter_note: str
    details: dict[str, str] = field(default_factory=dict)
    check: CheckResult | None = None
    session_from: list[tuple[str, str, str, str]] = field(default_factory=list)
    """Framework id -> session mappings: (source, framework, where the id comes from, on/off)."""
    export_plan: ExportPlan | None = None
    """What init() would export beside an OpenTelemetry pipeline already set up in this process."""
    integrations: list[tuple[str, str | None, str]] = field(default_factory=list)
    """Every package the SDK integrates with: (package, installed version or None, supported range)."""
    otel_internals: list[tuple[str, str, bool, str, str]] = field(default_factory=list)
    """OpenTelemetry's private names the SDK uses: (key, names, in use, the fallback otherwise, the
    first release that has them when the installed one is older, else "")."""

    @property
    def ok(self) -> bool:
        """True unless a check failed."""
        return self.check is None or self.check.ok

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "versions": self.versions,
            "integrations": [
                {
                    "package": package,
                    "version": version,
                    "supported": supported,
                    "in_range": None if version is None else in_range(version, supported),
                }
                for package, version, supported in self.integrations
            ],
            "opentelemetry_internals": [
                {"key": key, "names": names, "used": used, "fallback": fallback, "added_in": since or None}
                for key, names, used, fallback, since in self.otel_internals
            ],
            "config_file": self.config_file,
            "settings": {name: {"value": value, "source": source} for name, value, source in self.settings},
            "exporter": {
                "kind": self.exporter,
                "note": self.exporter_note,
                **self.details,
                "check": None if self.check is None else {"ok": self.check.ok, "message": self.check.message},
            },
            "session_from": [
                {"source": source, "framework": framework, "id": where, "state": state}
                for source, framework, where, state in self.session_from
            ],
            "beside_application": None if self.export_plan is None else self.export_plan.to_json(),
            "ok": self.ok,
        }

    def to_text(self) -> str:
        """The report as aligned, human-readable text."""
        lines = ["sessiontrace doctor", "", "versions:"]
        lines += _aligned([(name, version) for name, version in self.versions.items() if name in _OWN])
        if self.integrations:
            lines += ["", "integrations (installed version; the range sessiontrace supports):"]
            lines += _aligned(
                [
                    ("PACKAGE", "VERSION", "SUPPORTED", "STATUS"),
                    *(
                        (package, version or "-", supported, _range_status(version, supported))
                        for package, version, supported in self.integrations
                    ),
                ]
            )
        fallbacks = [row for row in self.otel_internals if not row[2]]
        if self.otel_internals and not fallbacks:
            lines += ["", "opentelemetry internals: every private name the SDK uses is there (the fast path)"]
        elif fallbacks:
            lines += [
                "",
                "opentelemetry internals missing here; the SDK uses their fallback (docs/compatibility.md):",
            ]
            lines += _aligned(
                [
                    ("INTERNAL", "WHY", "FALLBACK"),
                    *(
                        (key, f"added in {since}" if since else "not there or hidden", fallback)
                        for key, _, _, fallback, since in fallbacks
                    ),
                ]
            )
        file_note = self.config_file or "none found"
        lines += ["", f"config (config file: {file_note}):"]
        lines += _aligned([("SETTING", "VALUE", "SOURCE"), *self.settings])
        lines += ["", f"exporter: {self.exporter} ({self.exporter_note})"]
        rows = [(label.replace("_", " "), value) for label, value in self.details.items()]
        if self.check is not None:
            rows.append(("check", self.check.message))
        lines += _aligned(rows)
        if self.session_from:
            lines += ["", "framework conversation ids -> sessions (session_from):"]
            lines += _aligned(
                [
                    ("SOURCE", "FRAMEWORK", "STATE", "ID"),
                    *((s, f, st, w) for s, f, w, st in self.session_from),
                ]
            )
        if self.export_plan is not None:
            lines += ["", f"beside the application's OpenTelemetry (export_mode={self.export_plan.mode}):"]
            lines += _aligned(self.export_plan.rows())
        lines += ["", "result: ok" if self.ok else "result: a check failed (exit status 1)"]
        return "\n".join(lines)


_OWN = ("sessiontrace", "python")


def _range_status(version: str | None, supported: str) -> str:
    if version is None:
        return "not installed"
    return "ok" if in_range(version, supported) else "OUTSIDE the supported range"


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    ]


def doctor_command(*, as_json: bool, prog: str = "sessiontrace") -> int:
    """`doctor`: print the report; 0 when all is well, 1 when a check failed, 2 on a config error."""
    try:
        config = load_config()
    except ConfigError as exc:
        _print_error(str(exc))
        return 2
    report = build_report(config)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return 0 if report.ok else 1


def build_report(config: Config, *, timeout: float = CHECK_TIMEOUT) -> DoctorReport:
    """The doctor report for `config`, running the exporter's check (network or disk)."""
    from sdk.instrumentation import frameworks

    report = DoctorReport(
        versions=versions(),
        integrations=integrations(),
        otel_internals=otel_internals_rows(),
        config_file=str(config.config_file) if config.config_file is not None else None,
        settings=config.explain(),
        exporter=config.exporter_kind,
        exporter_note="",
        session_from=frameworks.describe(config),
        export_plan=_export_plan(config) if config.enabled else None,
    )
    if not config.enabled:
        source = config.sources.get("enabled", "default")
        report.exporter = "none"
        report.exporter_note = f"the SDK is disabled (enabled from {source}): nothing is recorded"
        return report
    notes: list[str] = []
    checks: list[tuple[str, CheckResult]] = []
    for kind in config.destination_kinds:
        if kind == "otlp":
            notes.append(config.protocol)
            report.details["endpoint"] = mask_url(config.traces_endpoint)
            report.details["headers"] = config.masked("headers")
            metrics_on = config.metrics if config.metrics is not None else True
            if metrics_on:
                from sdk.export.otlp import metrics_endpoint

                metrics = metrics_endpoint(config)
                report.details["metrics_endpoint"] = f"{mask_url(metrics.url)} ({metrics.protocol})"
            else:
                report.details["metrics_endpoint"] = "none (metrics off)"
            if config.protocol == "grpc":
                checks.append((kind, check_otlp_grpc(config, timeout)))
            else:
                checks.append((kind, check_otlp_http(config.traces_endpoint, config.headers, timeout)))
        elif kind == "file":
            data_dir = Path(os.path.abspath(config.data_dir))
            notes.append("OTLP-JSON lines on disk, the embedded default")
            report.details["data_dir"] = str(data_dir)
            report.details["traces_folder"] = str(data_dir / "traces")
            checks.append((kind, check_writable(data_dir / "traces")))
        elif kind == "console":
            notes.append("spans printed to stdout")
        elif kind == "none":
            notes.append("spans are not exported")
        else:
            notes.append("a SpanExporter given to init()")
    report.exporter_note = "; ".join(notes)
    if len(checks) == 1:
        report.check = checks[0][1]
    elif checks:
        report.check = CheckResult(
            all(check.ok for _, check in checks),
            "; ".join(f"{kind}: {check.message}" for kind, check in checks),
        )
    return report


def otel_internals_rows() -> list[tuple[str, str, bool, str, str]]:
    """Each OpenTelemetry internal the SDK uses: (key, names, in use, fallback, the release that
    added it when the installed one predates it)."""
    from sdk import otel_internals

    return [
        (
            internal.key,
            internal.names,
            used,
            internal.fallback,
            internal.since if otel_internals.expected_missing(internal) else "",
        )
        for internal, used in otel_internals.status()
    ]


def _export_plan(config: Config) -> ExportPlan:
    """The plan init() would make beside the provider set up in this process (run doctor under the
    program's launcher, ``opentelemetry-instrument python -m sdk doctor``, to see it for that setup)."""
    from opentelemetry import trace

    from sdk import foreign, tracing

    shown = trace.get_tracer_provider()
    joined = foreign.sdk_provider_of(shown)
    pipeline = None if joined is None else tracing.application_pipeline(joined)
    return foreign.plan_beside(config, pipeline, shown)


def versions() -> dict[str, str]:
    """Versions of sessiontrace, Python and every package it integrates with ("not installed")."""
    found = {
        "sessiontrace": _sessiontrace_version(),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
    }
    for package, version, _ in integrations():
        found[package] = version or "not installed"
    for name in VERSIONED_DISTRIBUTIONS:
        found.setdefault(name, installed_version(name) or "not installed")
    return found


def integrations() -> list[tuple[str, str | None, str]]:
    """(package, installed version or None, supported range) for every package the SDK integrates with."""
    from sdk.instrumentation import LIBRARIES, instrumentor

    ranges = list(SUPPORTED_RANGES)
    ranges[4:4] = [(instrumentor(name).package, instrumentor(name).supported) for name in LIBRARIES]
    return [(package, installed_version(package), supported) for package, supported in ranges]


def _sessiontrace_version() -> str:
    try:
        return metadata.version("sessiontrace")
    except metadata.PackageNotFoundError:
        return __version__


def check_otlp_http(endpoint: str, headers: Mapping[str, str], timeout: float = CHECK_TIMEOUT) -> CheckResult:
    """POST an empty ExportTraceServiceRequest to `endpoint`, as the exporter would; report the answer."""
    import http.client
    import urllib.error
    import urllib.request

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    parts = urllib.parse.urlsplit(endpoint)
    request_headers = dict(headers)
    if parts.username is not None or parts.password is not None:
        # As the OTLP exporter (requests) does: user info in the URL becomes basic auth.
        userinfo = (
            f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        )
        request_headers.setdefault("authorization", "Basic " + base64.b64encode(userinfo.encode()).decode())
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request_headers["content-type"] = "application/x-protobuf"
    request_headers["user-agent"] = f"sessiontrace-doctor/{__version__}"
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts),
        data=ExportTraceServiceRequest().SerializeToString(),
        headers=request_headers,
        method="POST",
    )
    secrets = [value for value in request_headers.values() if len(value) >= 3]
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
            reason = str(response.reason)
    except urllib.error.HTTPError as exc:
        exc.close()
        return CheckResult(False, _scrub(f"failed: HTTP {exc.code} {exc.reason}", secrets))
    except urllib.error.URLError as exc:
        return CheckResult(False, _scrub(_network_failure(parts.netloc, exc.reason, timeout), secrets))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return CheckResult(False, _scrub(_network_failure(parts.netloc, exc, timeout), secrets))
    if 200 <= status < 300:
        return CheckResult(True, f"ok (HTTP {status})")
    return CheckResult(False, f"failed: HTTP {status} {reason}")


def check_otlp_grpc(config: Config, timeout: float = CHECK_TIMEOUT) -> CheckResult:
    """One gRPC Export call with an empty request, as the exporter would make it (its channel, TLS
    settings and headers); the answer's status is reported."""
    if importlib.util.find_spec("grpc") is None:
        return CheckResult(False, "failed: gRPC needs the grpc extra (pip install 'sessiontrace[grpc]')")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from sdk.export.otlp import GrpcSender, traces_endpoint

    endpoint = traces_endpoint(config)
    secrets = [value for _, value in endpoint.headers if len(value) >= 3]
    try:
        sender = GrpcSender(endpoint)
    except Exception as exc:  # a TLS file that cannot be read, a malformed target
        return CheckResult(False, _scrub(f"failed: {type(exc).__name__}: {exc}", secrets))
    try:
        result = sender.send(ExportTraceServiceRequest().SerializeToString(), timeout)
    finally:
        sender.close()
    if result.ok:
        return CheckResult(True, "ok (gRPC Export answered)")
    return CheckResult(False, _scrub(f"failed: {result.error}", secrets))


def _network_failure(where: str, reason: object, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"failed: no answer from {where} within {timeout:g}s"
    if isinstance(reason, OSError):
        return f"failed: cannot connect to {where} ({reason.strerror or reason})"
    return f"failed: cannot connect to {where} ({reason})"


def _scrub(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return " ".join(message.split())


def check_writable(folder: Path) -> CheckResult:
    """Whether the SDK could create and write `folder` (nothing is written to find out)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return CheckResult(False, f"not writable: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        return CheckResult(False, f"not writable: no permission to write in {probe}")
    if probe == folder:
        return CheckResult(True, "writable")
    return CheckResult(True, f"writable (created on the first export, in {probe})")


def _print_error(message: str) -> None:
    print(" ".join(message.split()), file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# run


@dataclass(frozen=True)
class RunTarget:
    """What `run` runs: a script path (or a folder or zip file with __main__.py), or a module name."""

    kind: Literal["script", "module"]
    name: str
    args: tuple[str, ...] = ()


def parse_run_args(argv: Sequence[str], parser: argparse.ArgumentParser) -> RunTarget:
    """``SCRIPT [ARGS]``, ``-m MODULE [ARGS]`` (or ``-mMODULE``), ``-- SCRIPT [ARGS]``, ``-h``."""
    rest = list(argv)
    first = rest.pop(0) if rest else None
    if first in ("-h", "--help"):
        parser.print_help()
        parser.exit(0)
    if first == "--":
        first = rest.pop(0) if rest else None
    elif first == "-m":
        if not rest:
            _usage_error(parser, "argument -m: expected a module name")
        return RunTarget("module", rest[0], tuple(rest[1:]))
    elif first is not None and first.startswith("-m"):
        return RunTarget("module", first[2:], tuple(rest))
    elif first is not None and first.startswith("-"):
        _usage_error(parser, f"unknown option {first} (the program's own options go after its name)")
    if first is None:
        _usage_error(parser, "expected a script to run, or -m MODULE")
    return RunTarget("script", first, tuple(rest))


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def run_command(target: RunTarget, *, prog: str = "sessiontrace run") -> int:
    """Run the program inside an auto session; return its exit status (SystemExit propagates as is)."""
    execute: Callable[[], None]
    if target.kind == "module":
        _set_path0(os.getcwd())
        if not _module_exists(target.name):
            _print_error(f"{prog}: No module named {target.name}")
            return 1
        sys.argv = ["-m", *target.args]  # runpy puts the module's path in sys.argv[0], as python -m does

        def execute() -> None:
            _run_module_as_main(target.name, alter_argv=True)

    elif os.path.isdir(target.name) or zipfile.is_zipfile(target.name):
        # A folder or zip file with a __main__.py: what python does for `python PATH`.
        _set_path0(os.path.abspath(target.name))
        sys.argv = [target.name, *target.args]

        def execute() -> None:
            _run_module_as_main("__main__", alter_argv=False)

    else:
        path = os.path.abspath(target.name)
        try:
            with io.open_code(path) as f:
                source = f.read()
        except OSError as exc:
            _print_error(f"{prog}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}")
            return 2
        _set_path0(os.path.dirname(os.path.realpath(path)))
        sys.argv = [target.name, *target.args]

        def execute() -> None:
            _run_source(source, path)

    try:
        _start_sdk()
    except ConfigError as exc:
        _print_error(str(exc))
        return 2
    try:
        execute()
    except SystemExit as exc:
        from sdk.lifecycle import note_exit_status

        note_exit_status(exc.code)
        raise  # its code becomes the exit status (a message is printed), as python does
    except BaseException as exc:
        _report_uncaught(exc)
        if isinstance(exc, KeyboardInterrupt):
            # Python ends the process by SIGINT after an uncaught KeyboardInterrupt (and after the
            # exit handlers): let it, without reporting the exception a second time.
            _skip_report_of(exc)
            raise
        return 1
    return 0


def _start_sdk() -> None:
    from sdk.lifecycle import init

    # In the environment too, so that an sdk.init() call in the program keeps the auto session.
    os.environ["SESSIONTRACE_AUTO_START_SESSION"] = "true"
    init(auto_start_session=True)


def _set_path0(entry: str) -> None:
    """Put the program's folder first on sys.path, where python puts it (not with python -P)."""
    if getattr(sys.flags, "safe_path", False):
        return
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.append(entry)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
    except Exception:
        return True  # a parent package failed in another way: runpy reports it as python -m does


def _fresh_main_module() -> types.ModuleType:
    """A new ``__main__`` module in sys.modules, as the interpreter has before running a program."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __annotations__={})
    sys.modules["__main__"] = main
    return main


def _run_source(source: bytes, path: str) -> None:
    """Run a script's source as `python path` does: in a fresh ``__main__``, with an absolute __file__.

    Not runpy.run_path(): it sets sys.argv[0] to the path it runs (python keeps it as typed) and
    compiles with the path as given (python uses the absolute path, in __file__ and tracebacks).
    """
    main = _fresh_main_module()
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
    )
    code = compile(source, path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _run_module_as_main(name: str, *, alter_argv: bool) -> None:
    """Run a module (or a folder's or zip file's __main__) exactly as ``python -m`` / ``python PATH`` do.

    runpy._run_module_as_main is the function CPython's own ``-m`` switch calls, by this name: the
    module runs in the real ``__main__`` (which stays in sys.modules, for pickling and exit
    handlers), missing modules get python's message and exit status, and the traceback has
    python's frames.
    """
    _fresh_main_module()
    run: Callable[[str, bool], object] = runpy._run_module_as_main  # type: ignore[attr-defined]
    run(name, alter_argv)


def _report_uncaught(exc: BaseException) -> None:
    """Report an exception that escaped the program as the interpreter does: through sys.excepthook.

    The traceback starts where the program's own starts (this module's frames are dropped), so
    the hook prints what ``python SCRIPT`` prints, and the SDK's hook marks the auto session failed.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    exc = exc.with_traceback(tb)
    exc_type = type(exc)
    sys.last_type, sys.last_value, sys.last_traceback = exc_type, exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    hook = getattr(sys, "excepthook", None) or sys.__excepthook__
    try:
        hook(exc_type, exc, tb)
    except BaseException as hook_error:  # what the interpreter prints when the hook itself fails
        print("Error in sys.excepthook:", file=sys.stderr)
        traceback.print_exception(type(hook_error), hook_error, hook_error.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(exc_type, exc, tb)


def _skip_report_of(exc: BaseException) -> None:
    """Have sys.excepthook skip `exc` once (it was reported already), then restore it."""
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], value: BaseException, tb: types.TracebackType | None) -> None:
        sys.excepthook = previous
        if value is not exc:
            previous(exc_type, value, tb)

    sys.excepthook = hook


# ---------------------------------------------------------------------------------------------
# sessions

_SESSIONS_DESCRIPTION = """\
List, show and end the sessions in the session store: the store the session_store setting
names (SESSIONTRACE_SESSION_STORE, the config file; the default is the SQLite file in the data
folder), or the one given with --store. Every action takes --json for scripts.

exit status: 0 ok, 1 unknown session id (or the store failed), 2 usage or configuration error."""

_SESSIONS_EPILOG = """\
examples:
  %(prog)s list                              the 50 most recently active sessions
  %(prog)s list --state running --since 2h   running, active in the last two hours
  %(prog)s list --user u-42 --tag prod --json
  %(prog)s list --stale                      running, but their process is gone or silent
  %(prog)s show chat-7f3a                    its segments and its span tree
  %(prog)s end chat-7f3a --state fail --reason "worker lost"
  %(prog)s end --stale                       end every stale session (indeterminate)
  %(prog)s list --store redis://localhost:6379/0"""

_LIST_DESCRIPTION = """\
A table of stored sessions, most recently active first: id, name, user, state, started, duration
(start to end; for a running session, start to its last recorded activity), spans, tokens and
cost, each summed over the session's segments. Filters combine."""

_SHOW_DESCRIPTION = """\
One session: its identity, state and counters, each segment (one per process run: the first
start and every resume), and, when the local OTLP-JSON traces are in the data folder, the
session's span tree with durations."""

_END_DESCRIPTION = """\
Mark a session's latest segment ended in the store (for a session whose process died or hung
without ending it). A session that has ended already is left as it is. If the owning process
is in fact still running, its own end, when it comes, replaces this one."""

END_STATES = ("success", "fail", "indeterminate")
STATES = ("running", *END_STATES)
DEFAULT_LIMIT = 50


def parse_since(text: str, now: float | None = None) -> float:
    """``30s``, ``15m``, ``1h``, ``2d``, ``1w`` ago, or an ISO date or date-time (local time unless it says), as epoch seconds."""
    from sdk.records import parse_time

    try:
        return parse_time(text, time_now() if now is None else now)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_now() -> float:
    """The current time in epoch seconds (one place, so the commands agree on 'now')."""
    import time

    return time.time()


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0: no limit), not {text!r}")
    return value


def add_sessions_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``sessions list|show|end`` to the top-level subparsers; return the `sessions` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="SPEC",
        help="the session store to read: sqlite, sqlite:PATH or a redis:// / rediss:// URL "
        "(default: the session_store setting)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    sessions = commands.add_parser(
        "sessions",
        help="list, show and end the sessions in the session store",
        description=_SESSIONS_DESCRIPTION,
        epilog=_SESSIONS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = sessions.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    _add_list_parser(actions, common)
    _add_show_parser(actions, common)
    _add_end_parser(actions, common)
    parser: argparse.ArgumentParser = sessions
    return parser


def _add_list_parser(actions: Any, common: argparse.ArgumentParser) -> None:
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="a table of sessions, most recently active first",
        description=_LIST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--state", choices=STATES, help="only sessions in this state")
    listing.add_argument("--user", metavar="USER_ID", help="only sessions of this user id")
    listing.add_argument(
        "--tag",
        metavar="TAG",
        action="append",
        default=[],
        help="only sessions with this tag (repeat: all of them)",
    )
    listing.add_argument(
        "--since",
        metavar="WHEN",
        type=parse_since,
        help="only sessions active since WHEN: 30m, 1h, 2d, 1w ago, or an ISO date / date-time",
    )
    listing.add_argument(
        "--stale",
        action="store_true",
        help="only stale sessions: running, but their process on this host is gone, or silent "
        "for longer than session_stale_after",
    )
    listing.add_argument(
        "--limit",
        metavar="N",
        type=_limit,
        default=DEFAULT_LIMIT,
        help=f"show at most N sessions (default {DEFAULT_LIMIT}; 0: all)",
    )


def _add_show_parser(actions: Any, common: argparse.ArgumentParser) -> None:
    show = actions.add_parser(
        "show",
        parents=[common],
        help="one session: its segments and its span tree",
        description=_SHOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("session_id", metavar="ID", help="the session id, or a prefix of exactly one")


def _add_end_parser(actions: Any, common: argparse.ArgumentParser) -> None:
    end = actions.add_parser(
        "end",
        parents=[common],
        help="mark a session (or every stale session) ended in the store",
        description=_END_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    end.add_argument("session_id", metavar="ID", nargs="?", help="the session id, or a prefix of exactly one")
    end.add_argument("--stale", action="store_true", help="end every stale session instead of one id")
    end.add_argument(
        "--state",
        choices=END_STATES,
        default="indeterminate",
        help="the state to end with (default: indeterminate)",
    )
    end.add_argument("--reason", default="ended by CLI", help="the end reason (default: 'ended by CLI')")


class _SessionsError(Exception):
    """A sessions command failed in a way reported in one line (and `details`), with an exit status."""

    def __init__(self, message: str, status: int, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


@dataclass
class _Sessions:
    """The store a sessions command reads (None: the SQLite file does not exist yet) and its settings."""

    store: SessionStore | None
    description: str
    stale_after: float | None
    traces: Path

    def find(self, **filters: Any) -> list[SessionRecord]:
        return [] if self.store is None else self.store.list(**filters)

    def get(self, session_id: str) -> SessionRecord:
        """The record of `session_id`, or of the one session whose id starts with it."""
        from sdk.records import AmbiguousSessionId, SessionNotFound, resolve_session_id

        record = None if self.store is None else self.store.get(session_id)
        if record is not None:
            return record
        candidates = {r.id: r for r in self.find() if r.id.startswith(session_id)}
        try:
            record = candidates[resolve_session_id(session_id, candidates)]
        except SessionNotFound:
            raise _SessionsError(
                f"no session {session_id!r} (nor one whose id starts with it) in the session store "
                f"({self.description})",
                1,
            ) from None
        except AmbiguousSessionId as exc:
            matching = sorted(candidates.values(), key=lambda r: r.id)
            rows = [
                (r.id, _short(r.name), r.user_id or "-", r.state, format_time(r.started)) for r in matching
            ]
            raise _SessionsError(
                f"session id prefix {session_id!r} is ambiguous: {len(exc.candidates)} sessions match; "
                "give more characters:",
                1,
                _table(("ID", "NAME", "USER", "STATE", "STARTED"), rows),
            ) from None
        return record

    def stale(self, now: float) -> list[SessionRecord]:
        from sdk.store import RUNNING, is_stale

        return [r for r in self.find(state=RUNNING) if is_stale(r, self.stale_after, now)]


def sessions_command(options: argparse.Namespace, *, prog: str = "sessiontrace sessions") -> int:
    """`sessions list|show|end`: run the action on the configured (or ``--store``) session store."""
    from sdk.store import StoreError

    if options.action == "end" and (options.session_id is None) == (not options.stale):
        _print_error(f"{prog} end: give a session ID or --stale (one of them)")
        return 2
    try:
        sessions = _open_sessions(options.store)
    except ConfigError as exc:
        _print_error(str(exc))
        return 2
    except _SessionsError as exc:
        _print_error(f"{prog}: {exc}")
        return exc.status
    try:
        if options.action == "list":
            return _sessions_list(options, sessions)
        if options.action == "show":
            return _sessions_show(options, sessions)
        return _sessions_end(options, sessions)
    except StoreError as exc:
        _print_error(f"{prog}: the session store failed: {exc}")
        return 1
    except _SessionsError as exc:
        _print_error(f"{prog}: {exc}")
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        if sessions.store is not None:
            sessions.store.close()


def _open_sessions(spec_text: str | None) -> _Sessions:
    from sdk.settings import SETTINGS
    from sdk.store import open_store
    from sdk.store.sqlite import SQLiteStore

    config = load_config()
    spec: Any = config.session_store
    if spec_text is not None:
        try:
            spec = SETTINGS["session_store"].parse(spec_text)
        except Exception as exc:
            raise _SessionsError(f"--store {spec_text!r}: {exc}", 2) from None
    if spec == "none":
        raise _SessionsError(
            "no session store is configured (session_store is none): set SESSIONTRACE_SESSION_STORE or give --store",
            2,
        )
    if spec == "memory":
        raise _SessionsError(
            "session_store is memory: its records live inside the program's own process, out of this "
            "command's reach; give --store with a SQLite file or a Redis URL",
            2,
        )
    data_dir = Path(config.data_dir)
    store = open_store(spec, data_dir, config.session_expiry)
    assert store is not None
    description = store.description
    if isinstance(store, SQLiteStore) and not store.path.exists():
        store = None  # nothing stored yet: read as empty, without creating the file or the data folder
    return _Sessions(store, description, config.session_stale_after, data_dir / "traces")


# -- formatting ---------------------------------------------------------------------------------


def format_time(ts: float | None) -> str:
    """Epoch seconds as local ``YYYY-MM-DD HH:MM:SS`` ('-' for None)."""
    import time

    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_duration(seconds: float | None) -> str:
    """``<1ms``, ``52ms``, ``1.25s``, ``12s``, ``3m 05s``, ``2h 03m``, ``3d 04h`` ('-' for None)."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 0.0005:
        return "<1ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_cost(cost: float) -> str:
    """US dollars with four decimals: ``$0.0123``."""
    return f"${cost:.4f}"


def session_duration(record: SessionRecord) -> float:
    """Start to end; for a running session, start to its last recorded activity."""
    end = record.ended if record.ended is not None else record.last_activity
    return max(end - record.started, 0.0)


def segment_duration(segment: Segment) -> float:
    """A segment's start to its end (or, running, to its last recorded activity)."""
    end = segment.ended if segment.ended is not None else segment.last_activity
    return max(end - segment.started, 0.0)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> list[str]:
    """Rows aligned under a header, two spaces apart; columns in `right` right-aligned (cells are
    escaped for the terminal: they hold text from users)."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def session_json(record: SessionRecord, *, stale: bool | None = None) -> dict[str, Any]:
    """A record as the ``--json`` output shows it: the stored form plus the totals the table shows."""
    usage = record.usage
    data = record.to_json()
    data.update(
        state=record.state,
        reason=record.reason,
        started=record.started,
        last_activity=record.last_activity,
        ended=record.ended,
        duration=session_duration(record),
        usage=usage._asdict(),
        tokens=usage.input_tokens + usage.output_tokens,
    )
    if stale is not None:
        data["stale"] = stale
    return data


# -- list ---------------------------------------------------------------------------------------


def _sessions_list(options: argparse.Namespace, sessions: _Sessions) -> int:
    from sdk.store import RUNNING, is_stale, scores_text

    now = time_now()
    tags: list[str] = options.tag
    state = options.state
    if options.stale:
        if state not in (None, RUNNING):
            raise _SessionsError(
                "--stale lists running sessions only: it cannot be combined with --state " + state, 2
            )
        state = RUNNING
    limit = options.limit or None
    filtered = bool(options.stale or tags[1:])  # filters the store does not apply: fetch all, filter here
    records = sessions.find(
        state=state,
        user_id=options.user,
        tag=tags[0] if tags else None,
        since=options.since,
        limit=None if filtered or limit is None else limit + 1,
    )
    records = [r for r in records if all(t in r.tags for t in tags[1:])]
    stale = {r.id for r in records if is_stale(r, sessions.stale_after, now)}
    if options.stale:
        records = [r for r in records if r.id in stale]
    more = limit is not None and len(records) > limit
    records = records[:limit] if limit is not None else records
    if options.json:
        print(json.dumps([session_json(r, stale=r.id in stale) for r in records], indent=2))
    elif not records:
        print(f"no sessions found (store: {sessions.description})")
    else:
        rows = [
            (
                r.id,
                _short(r.name),
                _short(r.user_id or "-", 20),
                f"{r.state} (stale)" if r.id in stale else r.state,
                format_time(r.started),
                format_duration(session_duration(r)),
                str(r.usage.spans),
                f"{r.usage.input_tokens + r.usage.output_tokens:,}",
                format_cost(r.usage.cost_usd),
                _short(scores_text(r.scores), 30),
            )
            for r in records
        ]
        header = ("ID", "NAME", "USER", "STATE", "STARTED", "DURATION", "SPANS", "TOKENS", "COST", "SCORES")
        print("\n".join(_table(header, rows, right=frozenset({5, 6, 7, 8}))))
    if more:
        print(
            f"(the {limit} most recently active shown; more match: --limit N, or --limit 0 for all)",
            file=sys.stderr,
        )
    return 0


# -- show ---------------------------------------------------------------------------------------


def _sessions_show(options: argparse.Namespace, sessions: _Sessions) -> int:
    from sdk.store import is_stale

    record = sessions.get(options.session_id)
    stale = is_stale(record, sessions.stale_after, time_now())
    tree = span_tree(sessions.traces, record.trace_id) if sessions.traces.is_dir() else None
    if options.json:
        print(json.dumps({"session": session_json(record, stale=stale), "spans": tree}, indent=2))
        return 0
    lines = [f"session {printable(record.id)}", ""]
    lines += _aligned(_show_fields(record, stale, sessions.description))
    lines += ["", f"segments ({len(record.segments)}):"]
    lines += _segment_lines(record)
    if record.scores:
        lines += ["", f"scores ({len(record.scores)}):"]
        lines += _score_lines(record)
    lines.append("")
    lines += _span_tree_lines(tree, record, sessions.traces)
    print("\n".join(lines))
    return 0


def _show_fields(record: SessionRecord, stale: bool, store: str) -> list[tuple[str, str]]:
    usage = record.usage
    state = record.state + (" (stale)" if stale else "")
    if record.reason:
        state += f": {record.reason}"
    tokens = usage.input_tokens + usage.output_tokens
    return [
        ("name", record.name),
        ("state", state),
        ("user", record.user_id or "-"),
        ("tags", ", ".join(record.tags) or "-"),
        ("trace id", record.trace_id),
        ("started", format_time(record.started)),
        ("last active", format_time(record.last_activity)),
        ("ended", format_time(record.ended)),
        ("duration", format_duration(session_duration(record))),
        ("spans", str(usage.spans)),
        ("llm calls", str(usage.llm_calls)),
        ("tokens", f"{tokens:,} (input {usage.input_tokens:,}, output {usage.output_tokens:,})"),
        ("cost", format_cost(usage.cost_usd)),
        ("errors", str(usage.errors)),
        ("store", store),
    ]


def _segment_lines(record: SessionRecord) -> list[str]:
    header = ("#", "SPAN ID", "OWNER", "STATE", "STARTED", "DURATION", "SPANS", "TOKENS", "COST", "REASON")
    rows = [
        (
            str(s.number),
            s.span_id,
            s.owner,
            s.state,
            format_time(s.started),
            format_duration(segment_duration(s)),
            str(s.usage.spans),
            f"{s.usage.input_tokens + s.usage.output_tokens:,}",
            format_cost(s.usage.cost_usd),
            s.reason or "",
        )
        for s in record.segments
    ]
    return ["  " + line for line in _table(header, rows, right=frozenset({0, 5, 6, 7, 8}))]


def _score_lines(record: SessionRecord) -> list[str]:
    header = ("NAME", "VALUE", "SOURCE", "GIVEN", "COMMENT")
    rows = [
        (
            printable(s.name),
            printable(str(s.value)),
            printable(s.source),
            format_time(s.at),
            printable(s.comment or ""),
        )
        for s in record.scores
    ]
    return ["  " + line for line in _table(header, rows, right=frozenset({1}))]


def _span_tree_lines(tree: list[dict[str, Any]] | None, record: SessionRecord, traces: Path) -> list[str]:
    if tree is None:
        return [f"spans: no local traces ({traces} does not exist)"]
    if not tree:
        return [f"spans: none of this session's spans are in {traces}"]
    lines = [f"spans (from {traces}):"]
    numbers = {s.span_id: s.number for s in record.segments}
    flat = list(_walk(tree, 0))
    width = max(len("  " * depth + printable(node["name"])) for node, depth in flat)
    for node, depth in flat:
        label = ("  " * depth + printable(node["name"])).ljust(width)
        notes = ""
        if node["status"] == "error":
            notes += "  ERROR"
        if depth == 0 and node["span_id"] in numbers:
            notes += f"  (segment {numbers[node['span_id']]})"
        lines.append(f"  {label}  {format_duration(node['duration']):>8}{notes}")
    return lines


def span_tree(folder: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of `trace_id` in the OTLP-JSON files of `folder`, as a tree (roots first by start time).

    Each node: name, span_id, parent_span_id, start and end (epoch seconds), duration, status
    (``unset``, ``ok``, ``error``), session.id and children. A span written more than once (a
    start marker, then the span itself) appears once, as last ended.
    """
    from sdk.records import local_span_rows

    latest: dict[str, Any] = {}
    for span in local_span_rows(folder):
        if span.trace_id != trace_id:
            continue
        known = latest.get(span.span_id)
        if known is None or span.end >= known.end:
            latest[span.span_id] = span
    nodes: dict[str, dict[str, Any]] = {}
    for span_id, span in latest.items():
        nodes[span_id] = {
            "name": span.name,
            "span_id": span_id,
            "parent_span_id": span.parent_span_id,
            "start": span.start,
            "end": span.end,
            "duration": span.duration,
            "status": span.status,
            "children": [],
        }
    roots: list[dict[str, Any]] = []
    for node in sorted(nodes.values(), key=lambda n: (n["start"], n["name"])):
        parent = nodes.get(node["parent_span_id"] or "")
        (parent["children"] if parent is not None else roots).append(node)
    return roots


def _walk(nodes: list[dict[str, Any]], depth: int) -> Iterator[tuple[dict[str, Any], int]]:
    for node in nodes:
        yield node, depth
        yield from _walk(node["children"], depth + 1)


# -- end ----------------------------------------------------------------------------------------


def _sessions_end(options: argparse.Namespace, sessions: _Sessions) -> int:
    from sdk.store import end_latest_segment

    targets = sessions.stale(time_now()) if options.stale else [sessions.get(options.session_id)]
    results = []
    for record in targets:
        changed = sessions.store is not None and end_latest_segment(
            sessions.store, record, options.state, options.reason
        )
        after = sessions.store.get(record.id) if sessions.store is not None else None
        final = after if after is not None else record
        results.append((final, changed))
    if options.json:
        print(
            json.dumps(
                [
                    {"id": r.id, "state": r.state, "reason": r.reason, "ended": r.ended, "changed": changed}
                    for r, changed in results
                ],
                indent=2,
            )
        )
    elif not results:
        print("no stale sessions")
    else:
        for r, changed in results:
            verb = "ended" if changed else "already ended"
            reason = f" ({r.reason})" if r.reason else ""
            print(printable(f"{verb}: {r.id} {r.state}{reason}"))
    return 0


# ---------------------------------------------------------------------------------------------
# export

_EXPORT_DESCRIPTION = """\
Send the local traces (the OTLP-JSON files the default exporter writes under <data_dir>/traces,
e.g. recorded offline) to an OTLP backend: OTLP/HTTP (protobuf) or OTLP/gRPC, with the headers,
TLS and compression settings of the config (OTEL_EXPORTER_OTLP_HEADERS, ...) plus any --header.

Each span is sent once: what was delivered to a destination (protocol and URL) is remembered in
<data_dir>/export-state.json (readable by you only), so running the command again sends only
spans written since. A run stopped half-way (the backend down, Ctrl-C) goes on from the last
delivered request. Progress goes to stderr: a bar on a terminal, else a line every 10%.

exit status: 0 ok (also when there was nothing new), 1 the backend refused a request or stayed
unreachable, 2 usage or configuration error."""

_EXPORT_EPILOG = """\
examples:
  %(prog)s --to http://localhost:4318                      OTLP/HTTP (/v1/traces is added)
  %(prog)s --to http://localhost:4317 --protocol grpc      OTLP/gRPC
  %(prog)s --to https://otlp.example.com --header "authorization=Bearer $TOKEN"
  %(prog)s --to http://localhost:4318 --data-dir ~/runs/.sessiontrace"""


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected a header as KEY=VALUE, not {text!r}")
    return key.strip(), value.strip()


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``export --to URL`` to the top-level subparsers; return its parser."""
    export: argparse.ArgumentParser = commands.add_parser(
        "export",
        help="send the local traces (recorded offline) to an OTLP backend, each span once",
        description=_EXPORT_DESCRIPTION,
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "--to",
        metavar="URL",
        required=True,
        help="the OTLP endpoint: for HTTP a base URL gets /v1/traces appended; for gRPC host and port",
    )
    export.add_argument(
        "--protocol",
        choices=("http/protobuf", "grpc"),
        help="the OTLP protocol (default: the protocol setting, http/protobuf unless configured)",
    )
    export.add_argument(
        "--header",
        metavar="KEY=VALUE",
        type=_header,
        action="append",
        default=[],
        help="a header (gRPC: metadata) to send, beside the configured headers (repeat for several)",
    )
    export.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data folder whose traces to send (default: the data_dir setting, ./.sessiontrace)",
    )
    return export


def export_command(options: argparse.Namespace, *, prog: str = "sessiontrace export") -> int:
    """`export --to URL`: send the local traces the destination has not received yet."""
    from sdk.export.otlp import traces_endpoint
    from sdk.upload import UploadError, upload

    try:
        base = load_config()
        settings: dict[str, Any] = {
            "endpoint": options.to,
            "headers": {**base.headers, **dict(options.header)},
            "exporter": "otlp",
        }
        if options.protocol is not None:
            settings["protocol"] = options.protocol
        if options.data_dir is not None:
            settings["data_dir"] = options.data_dir
        config = load_config(settings)
    except ConfigError as exc:
        _print_error(f"{prog}: {exc}")
        return 2
    endpoint = traces_endpoint(config)
    data_dir = Path(config.data_dir)
    folder = data_dir / "traces"
    if not folder.is_dir():
        print(f"nothing to export: {folder} does not exist (no local traces were written there)")
        return 0
    if endpoint.protocol == "grpc" and importlib.util.find_spec("grpc") is None:
        _print_error(f"{prog}: OTLP/gRPC needs grpcio: pip install 'sessiontrace[grpc]'")
        return 2
    try:
        result = upload(folder, endpoint, state_dir=data_dir, progress=sys.stderr)
    except UploadError as exc:
        _print_error(f"{prog}: {exc}")
        return 1
    except KeyboardInterrupt:
        _print_error(f"{prog}: interrupted; what was delivered is remembered: run it again to go on")
        return 130
    where = endpoint.describe()
    if result.spans_sent:
        plural = "" if result.requests == 1 else "s"
        print(f"exported {result.spans_sent:,} spans in {result.requests} request{plural} to {where}")
    else:
        print(f"nothing new to export to {where}: every local span was sent already")
    if result.skipped_lines:
        print(
            f"{result.skipped_lines} line(s) in {folder} were not OTLP-JSON and were left out",
            file=sys.stderr,
        )
    if result.rejected:
        print(f"the backend rejected {result.rejected} span(s) (an OTLP partial success)", file=sys.stderr)
    return 0
