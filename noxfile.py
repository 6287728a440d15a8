"""The version matrix (issue 16): the test suite against the ranges pyproject.toml declares.

Each session makes its own virtual environment with uv, installs the SDK with one dependency
pinned, and runs the part of the suite that dependency touches. Results: docs/compatibility.md.

    pip install nox uv
    nox -s ci                # the subset .ci/run runs (the default session)
    nox -s compat            # every session, one after another
    nox -l                   # the sessions; `nox -s "openai(1.66.0)"` runs one

Sessions run one after another: the suite's timing-sensitive tests (exit and flush deadlines,
spool caps) are meant for a machine that is not running another suite beside them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

# The interpreters are on the machine (pyenv here): uv finds them, and fetches none.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
_PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
if "PYENV_VERSION" not in os.environ and _PYENV.is_dir():
    # Without it pyenv's shims for python3.10/3.12/3.13 refuse to run, and uv would look elsewhere.
    # The running interpreter's version comes first: it stays the shims' `python3`.
    _OURS = f"{sys.version_info.major}.{sys.version_info.minor}."
    os.environ["PYENV_VERSION"] = ":".join(
        sorted((p.name for p in _PYENV.iterdir() if p.name[:1] == "3"), key=lambda v: not v.startswith(_OURS))
    )

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["ci"]

PYTEST = ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider")
"""pyproject.toml's default run: two workers, without the phoenix/browser/frameworks markers."""
WITH_FRAMEWORKS = ("-m", "not phoenix and not mlflow and not browser and not foreign")
"""The default run plus the heavy framework tests (-m frameworks) of the files given."""

OTEL = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-otlp-proto-grpc",
)
CONTRIB = (
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-instrumentation-asgi",
    "opentelemetry-instrumentation-wsgi",
    "opentelemetry-instrumentation-aiohttp-server",
)


def versions(*values: str) -> tuple[object, ...]:
    """Parameters named by the version alone: sessions are called ``openai(1.66.0)``."""
    return tuple(nox.param(v, id=v) for v in values)


OTEL_FLOOR = "1.30.0"
OTEL_VERSIONS = versions(OTEL_FLOOR, "1.40.0")
"""The floor, and the first release with the `_on_ending` hook and the tracer configurator (the
newest is the default environment's: .ci/run's own test run)."""
PYTHONS = ("3.10", "3.12", "3.13")
"""3.11, with the newest of everything, is .ci/run's own test run."""
NOTEBOOKS = (
    nox.param("6.29.5", "8.39.0", id="ipykernel-6.29.5-ipython-8.39.0"),
    nox.param("7.0.0", "9.19.1", id="ipykernel-7.0.0-ipython-9.19.1"),
    nox.param("7.0.0", "8.39.0", id="ipykernel-7.0.0-ipython-8.39.0"),
    nox.param("latest", "9.7.0", id="ipykernel-latest-ipython-9.7.0"),
    nox.param("latest", "8.39.0", id="ipykernel-latest-ipython-8.39.0"),
)
"""(ipykernel, IPython): the floor; 7.0.0 (ContextVars lost between cells, ipykernel #1457); IPython 8
and 9.0-9.7, which count a cell after pre_run_cell (9.8+ before it). The newest of both is the
default environment's."""
OPENAI = versions("1.66.0", "1.109.1", "2.54.0", "latest")
ANTHROPIC = versions("1.0.0", "1.14.0", "latest")
OUTSIDE = (
    nox.param("openai", "1.62.0", id="openai-1.62.0"),
    nox.param("anthropic", "0.40.0", id="anthropic-0.40.0"),
)
"""Releases below the floors: a tested "not supported" (one warning naming them, nothing patched)."""
PROTOBUF = versions("6.33.6", "7.36.2")
"""protobuf 5 is the default environment's (autogen-core pins 5.29); 4 does not resolve with
OpenTelemetry >= 1.28, so not with the floor either."""
REDIS = versions("5.0.0", "6.4.0", "latest")
WRAPT = versions("1.16.0")
AUTOGEN = versions("0.4.9", "latest")
AGENTS = versions("0.18.1", "latest")
LANGGRAPH = (
    nox.param(
        (
            "langgraph==1.0.0",
            "langgraph-prebuilt==1.0.0",
            "langchain-core==1.4.7",
            "langchain-openai",
            "langgraph-checkpoint-sqlite<3",
        ),
        id="floor",
    ),
    nox.param((), id="latest"),
)
"""Over the test dependencies: langgraph 1.0.0 wants langgraph-checkpoint 2 (the SQLite saver 2.x),
langchain-core 1.4.7 an older langchain-openai than [dev] names, and langgraph-prebuilt 1.0.13 (which
langgraph 1.0.0 allows) imports what only later langgraph releases have, so 1.0.0 goes with it."""

OPENAI_TESTS = (
    "tests/test_instrument_openai.py",
    "tests/test_instrumentors.py",
    "tests/test_budgets.py",
    "tests/test_redaction.py",
    "tests/test_autoinstrument.py",
)
ANTHROPIC_TESTS = (
    "tests/test_instrument_anthropic.py",
    "tests/test_instrumentors.py",
    "tests/test_budgets.py",
    "tests/test_redaction.py",
)
EXPORT_TESTS = (
    "tests/test_export_otlp.py",
    "tests/test_export_protocols.py",
    "tests/test_export_file.py",
    "tests/test_export_metrics.py",
    "tests/test_export_faults.py",
    "tests/test_encode.py",
    "tests/test_logging.py",
    "tests/test_attributes.py",
    "tests/test_cli.py",
    "tests/test_otel_internals.py",
)
STORE_TESTS = ("tests/test_store_contract.py", "tests/test_store_down.py", "tests/test_resume.py")
WRAPPER_TESTS = (
    "tests/test_instrument_openai.py",
    "tests/test_instrument_anthropic.py",
    "tests/test_autogen.py",
    "tests/test_redaction.py",
    "tests/test_instrumentors.py",
)
AGENTS_TESTS = ("tests/test_openai_agents.py", "tests/test_framework_sessions.py")
LANGGRAPH_TESTS = ("tests/test_langgraph.py", "tests/test_framework_sessions.py")


def otel_pins(version: str) -> list[str]:
    """OpenTelemetry `version` with the contrib release of the same month (1.N goes with 0.(N+21)b0)."""
    minor = int(version.split(".")[1])
    return [f"{p}=={version}" for p in OTEL] + [f"{p}==0.{minor + 21}b0" for p in CONTRIB]


def pin(package: str, version: str) -> str:
    """``package==version``, or the newest the rest allows (``latest``)."""
    return package if version == "latest" else f"{package}=={version}"


def install_dev(session: nox.Session, *pins: str) -> None:
    """The SDK with its test dependencies, `pins` resolved together with them."""
    session.install("-e", ".[dev]", *pins)


def install_over_dev(session: nox.Session, requirement: str) -> None:
    """The SDK with its test dependencies, then `requirement` over them.

    For a release that the other test dependencies exclude (an agent framework needs a newer
    openai): the tests the session runs do not use those.
    """
    install_dev(session)
    if "==" in requirement:
        session.install(requirement)


def run_tests(session: nox.Session, *args: str, **env: str) -> None:
    session.run(*PYTEST, *args, *session.posargs, env=env)


@nox.session(python=PYTHONS)
def py(session: nox.Session) -> None:
    """The whole default suite on Python 3.10, 3.12 and 3.13 with the newest dependencies they get."""
    install_dev(session)
    run_tests(session)


@nox.session(python="3.11")
@nox.parametrize("otel", OTEL_VERSIONS)
def otel(session: nox.Session, otel: str) -> None:
    """The whole default suite on an older OpenTelemetry (the floor runs the session contract on it)."""
    install_dev(session, *otel_pins(otel))
    run_tests(session)


@nox.session(python="3.11")
def fallback(session: nox.Session) -> None:
    """The whole default suite with every private OpenTelemetry name hidden (the public-API fallbacks)."""
    install_dev(session)
    run_tests(session, SESSIONTRACE_HIDE_OTEL_INTERNALS="all")


@nox.session(python="3.11")
@nox.parametrize(("ipykernel", "ipython"), NOTEBOOKS)
def notebook(session: nox.Session, ipykernel: str, ipython: str) -> None:
    """The notebook tests (real kernels: %%session, the auto session, cell spans) on an ipykernel and IPython pair."""
    install_dev(session, pin("ipykernel", ipykernel), pin("ipython", ipython))
    run_tests(session, "tests/test_notebook.py")


@nox.session(python="3.11")
@nox.parametrize("openai", OPENAI)
def openai(session: nox.Session, openai: str) -> None:
    """The openai instrumentation's tests on one openai release."""
    install_over_dev(session, pin("openai", openai))
    run_tests(session, *OPENAI_TESTS)


@nox.session(python="3.11")
@nox.parametrize("anthropic", ANTHROPIC)
def anthropic(session: nox.Session, anthropic: str) -> None:
    """The anthropic instrumentation's tests on one anthropic release."""
    install_dev(session, pin("anthropic", anthropic))
    run_tests(session, *ANTHROPIC_TESTS)


@nox.session(python="3.11")
@nox.parametrize(("package", "version"), OUTSIDE)
def outside(session: nox.Session, package: str, version: str) -> None:
    """A client release below the floor: one warning naming it, nothing patched, the client working."""
    install_over_dev(session, f"{package}=={version}")
    run_tests(session, "tests/test_outside_range.py", "-k", package)


@nox.session(python="3.11")
@nox.parametrize("protobuf", PROTOBUF)
def protobuf(session: nox.Session, protobuf: str) -> None:
    """Export, logs and metrics on protobuf 6 and 7, without autogen-core (which pins protobuf 5.29)."""
    session.install(
        "-e",
        ".[grpc,redis]",
        f"protobuf=={protobuf}",
        "pytest>=8",
        "pytest-asyncio>=0.24",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.6",
        "hypothesis>=6.100",
        "trustme>=1.1",
        "requests>=2.31",
        "aiohttp>=3.9",
    )
    run_tests(session, *EXPORT_TESTS)


@nox.session(python="3.11")
@nox.parametrize("redis", REDIS)
def redis(session: nox.Session, redis: str) -> None:
    """The Redis session store's contract, outage and resume tests (a real redis-server) on one redis-py."""
    install_dev(session, pin("redis", redis))
    run_tests(session, *STORE_TESTS)


@nox.session(python="3.11")
@nox.parametrize("wrapt", WRAPT)
def wrapt(session: nox.Session, wrapt: str) -> None:
    """The client wrappers (wrapt proxies and patches) on the oldest wrapt the SDK allows, with the
    OpenTelemetry floor (whose contrib instrumentations want wrapt < 2)."""
    install_dev(session, f"wrapt=={wrapt}", *otel_pins(OTEL_FLOOR))
    run_tests(session, *WRAPPER_TESTS)


@nox.session(python="3.11")
@nox.parametrize("autogen", AUTOGEN)
def autogen(session: nox.Session, autogen: str) -> None:
    """autogen-core's runtime (topic sessions) on one autogen-core release."""
    install_dev(session, pin("autogen-core", autogen))
    run_tests(session, "tests/test_autogen.py")


@nox.session(python="3.11")
@nox.parametrize("agents", AGENTS)
def agents(session: nox.Session, agents: str) -> None:
    """The OpenAI Agents SDK bridge (and the framework id -> session mapping) on one openai-agents release."""
    install_dev(session, pin("openai-agents", agents))
    run_tests(session, *AGENTS_TESTS, *WITH_FRAMEWORKS)


@nox.session(python="3.11")
@nox.parametrize("pins", LANGGRAPH)
def langgraph(session: nox.Session, pins: tuple[str, ...]) -> None:
    """LangGraph threads as sessions (checkpoint resume in a second process included): the floor, and the newest."""
    install_dev(session)
    quiet: tuple[str, ...] = ()
    if pins:
        session.install(*pins)
        # langgraph 1.0.0's own import of langgraph.prebuilt warns about its own move (not the SDK's).
        quiet = ("-W", "ignore:AgentStatePydantic has been moved")
    run_tests(session, *LANGGRAPH_TESTS, *WITH_FRAMEWORKS, *quiet)


@nox.session(python="3.11")
def agency_swarm(session: nox.Session) -> None:
    """Agency Swarm 1.11.0, the floor and newest release (its own cached Python 3.12 venv; .ci/run's -m frameworks run has it too)."""
    install_dev(session)
    session.run(*PYTEST, "-n", "0", "-m", "frameworks", "tests/test_agency_swarm.py", *session.posargs)


def named(session: str, params: tuple[object, ...]) -> list[str]:
    """The sessions one parametrized function makes (``openai(1.66.0)``, ...)."""
    return [f"{session}({param.id})" for param in params]


COMPAT_SESSIONS = (
    *(f"py-{python}" for python in PYTHONS),
    *named("otel", OTEL_VERSIONS),
    "fallback",
    *named("notebook", NOTEBOOKS),
    *named("openai", OPENAI),
    *named("anthropic", ANTHROPIC),
    *named("outside", OUTSIDE),
    *named("protobuf", PROTOBUF),
    *named("redis", REDIS),
    *named("wrapt", WRAPT),
    *named("autogen", AUTOGEN),
    *named("agents", AGENTS),
    *named("langgraph", LANGGRAPH),
    "agency_swarm",
)
"""Every session (nox's notify runs a name exactly: a parametrized group's name runs only its first)."""
CI_SESSIONS = (
    "py-3.10",
    f"otel({OTEL_FLOOR})",
    "notebook(ipykernel-6.29.5-ipython-8.39.0)",
    "notebook(ipykernel-7.0.0-ipython-9.19.1)",
    "openai(1.66.0)",
    "anthropic(1.0.0)",
    *named("outside", OUTSIDE),
    "protobuf(7.36.2)",
    "redis(5.0.0)",
    *named("wrapt", WRAPT),
    "autogen(0.4.9)",
    "agents(0.18.1)",
    "langgraph(floor)",
)
"""What .ci/run runs (about 30 minutes of CI's 90, measured: docs/compatibility.md): Python 3.10 (the
only version with IPython 8) and the OpenTelemetry floor with the whole suite, every other floor
with its part, ipykernel 7.0.0 and the releases below the floors. `compat` adds Python 3.12 and 3.13,
OpenTelemetry 1.40.0, the whole suite on the fallbacks (the default run has the session contract on
them), and the releases between the floors and the newest."""


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """The subset of the matrix .ci/run runs."""
    for name in CI_SESSIONS:
        session.notify(name)


@nox.session(python=False)
def compat(session: nox.Session) -> None:
    """Every session of the matrix, one after another."""
    for name in COMPAT_SESSIONS:
        session.notify(name)
