"""The ``sessiontrace`` command line (also ``python -m sdk``): ``doctor`` and ``run``.

``doctor`` shows the resolved configuration (secrets masked, each value with where it came from),
the versions that matter, the exporter actually used, and checks that spans can get out: the
OTLP endpoint answers, or the local traces folder is writable.

``run`` runs a Python program as ``python SCRIPT ARGS...`` or ``python -m MODULE ARGS...`` would,
with the SDK started and an auto session open, so everything the program does lands in one
session. Its output, exit code and uncaught-exception traceback are the program's own.

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
import urllib.parse
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn

from sdk.config import Config, ConfigError, load_config, mask_url
from sdk.version import __version__

CHECK_TIMEOUT = 2.0
"""Seconds `doctor` waits for the OTLP endpoint to answer."""

VERSIONED_DISTRIBUTIONS = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
)

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

    @property
    def ok(self) -> bool:
        """True unless a check failed."""
        return self.check is None or self.check.ok

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "versions": self.versions,
            "config_file": self.config_file,
            "settings": {name: {"value": value, "source": source} for name, value, source in self.settings},
            "exporter": {
                "kind": self.exporter,
                "note": self.exporter_note,
                **self.details,
                "check": None if self.check is None else {"ok": self.check.ok, "message": self.check.message},
            },
            "ok": self.ok,
        }

    def to_text(self) -> str:
        """The report as aligned, human-readable text."""
        lines = ["sessiontrace doctor", "", "versions:"]
        lines += _aligned([(name, version) for name, version in self.versions.items()])
        file_note = self.config_file or "none found"
        lines += ["", f"config (config file: {file_note}):"]
        lines += _aligned([("SETTING", "VALUE", "SOURCE"), *self.settings])
        lines += ["", f"exporter: {self.exporter} ({self.exporter_note})"]
        rows = [(label.replace("_", " "), value) for label, value in self.details.items()]
        if self.check is not None:
            rows.append(("check", self.check.message))
        lines += _aligned(rows)
        lines += ["", "result: ok" if self.ok else "result: a check failed (exit status 1)"]
        return "\n".join(lines)


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
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
    report = DoctorReport(
        versions=versions(),
        config_file=str(config.config_file) if config.config_file is not None else None,
        settings=config.explain(),
        exporter=config.exporter_kind,
        exporter_note="",
    )
    kind = config.exporter_kind
    if not config.enabled:
        source = config.sources.get("enabled", "default")
        report.exporter = "none"
        report.exporter_note = f"the SDK is disabled (enabled from {source}): nothing is recorded"
    elif kind == "otlp":
        report.exporter_note = config.protocol
        report.details["endpoint"] = mask_url(config.traces_endpoint)
        report.details["headers"] = config.masked("headers")
        if config.protocol == "grpc":
            report.check = check_tcp(config.traces_endpoint, timeout)
        else:
            report.check = check_otlp_http(config.traces_endpoint, config.headers, timeout)
    elif kind == "file":
        data_dir = Path(os.path.abspath(config.data_dir))
        report.exporter_note = "OTLP-JSON lines on disk, the embedded default"
        report.details["data_dir"] = str(data_dir)
        report.details["traces_folder"] = str(data_dir / "traces")
        report.check = check_writable(data_dir / "traces")
    elif kind == "console":
        report.exporter_note = "spans printed to stdout"
    elif kind == "none":
        report.exporter_note = "spans are not exported"
    else:
        report.exporter_note = "a SpanExporter given to init()"
    return report


def versions() -> dict[str, str]:
    """Versions of sessiontrace, Python and the OpenTelemetry packages it uses."""
    found = {
        "sessiontrace": _sessiontrace_version(),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
    }
    for name in VERSIONED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


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


def check_tcp(endpoint: str, timeout: float = CHECK_TIMEOUT) -> CheckResult:
    """Connect to the endpoint's host and port (for gRPC, where an HTTP POST would prove nothing)."""
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return CheckResult(False, _network_failure(f"{host}:{port}", exc, timeout))
    return CheckResult(True, f"ok (TCP connection to {host}:{port}; gRPC itself not probed)")


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
