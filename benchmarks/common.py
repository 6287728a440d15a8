"""What the in-process benchmarks share: null exporters, the SDK's pipeline and the reference one.

The SDK side goes through the SDK's global provider, set up by ``sdk.init(exporter=NullExporter())``
(the SDK's BatchExportProcessor exports to it from its worker thread). The reference side is a
separate, local (not global) ``opentelemetry.sdk.trace.TracerProvider`` with a
``BatchSpanProcessor(NullExporter())``. Both keep their default queue and batch sizes (2048 / 512);
both pipelines are flushed before every sample, so a sample of at most 2,000 spans never fills
either queue, and both workers export during the samples (each wakes at 512 queued spans).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.harness import Settings, Timing, interleave, time_loop

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKER_NAME = "session.start"  # sdk.export.batch.MARKER_NAME, without importing the SDK here


class NullExporter(SpanExporter):
    """Accepts every batch and counts its spans (so a run can prove both pipelines exported)."""

    def __init__(self) -> None:
        self.exported = 0
        self.batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # A live-session marker (a session still running 1 s after it started, see docs/export.md)
        # is the SDK's own extra span, not one the benchmark made: it is not counted.
        self.exported += sum(1 for s in spans if s.name != MARKER_NAME)
        self.batches += 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Pipelines:
    """The SDK's pipeline and the reference one, set up once per benchmark process.

    The SDK's data folder (its session store) is a new temporary folder of this run, removed at
    exit: a store that earlier runs filled (in the current directory's ``.sessiontrace``) would
    make each run slower than the last, and the results depend on where the benchmarks ran.
    `base`: settings every `init()` of the run gets (``--sdk-setting``), under a benchmark's own.
    """

    sdk_exporter: NullExporter
    ref_exporter: NullExporter
    ref_provider: TracerProvider
    data_dir: str
    base: dict[str, str]

    def reinit(self, **settings: Any) -> None:
        """`sdk.init()` on the same null exporter, with `settings` (none: as `pipelines()` sets it up)."""
        import sdk

        merged = {"data_dir": self.data_dir, **self.base, **settings}
        sdk.init(exporter=self.sdk_exporter, service_name="sessiontrace-benchmarks", **merged)

    def flush(self) -> None:
        """Export everything both pipelines hold (untimed, before every sample)."""
        import sdk

        if not sdk.flush(10.0):
            raise RuntimeError("sdk.flush() timed out")
        if not self.ref_provider.force_flush(10_000):
            raise RuntimeError("reference force_flush() timed out")


_pipelines: list[Pipelines] = []
_base_settings: dict[str, str] = {}


def use_sdk_settings(settings: dict[str, str]) -> None:
    """Settings for every `sdk.init()` of the in-process benchmarks (``--sdk-setting KEY=VALUE``: to
    measure what a setting costs, e.g. ``session_store=none``); call before `pipelines()`."""
    if _pipelines:
        raise RuntimeError("use_sdk_settings() after pipelines() were set up")
    _base_settings.update(settings)


def pipelines() -> Pipelines:
    """`sdk.init(exporter=NullExporter())` and a local reference provider (once per process)."""
    if _pipelines:
        return _pipelines[0]
    # Settings from the environment would change either side (samplers, limits, queue sizes).
    for name in [n for n in os.environ if n.startswith(("SESSIONTRACE_", "OTEL_"))]:
        del os.environ[name]
    ref_exporter = NullExporter()
    ref_provider = TracerProvider(shutdown_on_exit=False)
    ref_provider.add_span_processor(BatchSpanProcessor(ref_exporter))
    data_dir = tempfile.mkdtemp(prefix="sessiontrace-bench-data-")
    atexit.register(shutil.rmtree, data_dir, True)
    made = Pipelines(NullExporter(), ref_exporter, ref_provider, data_dir, dict(_base_settings))
    made.reinit()
    _pipelines.append(made)
    return made


@dataclass
class Counts:
    """SDK stats and exporter counts at one moment, to check a benchmark's fairness afterwards."""

    sdk_exported: int
    ref_exported: int
    sdk_batches: int
    ref_batches: int
    spans_dropped: int
    internal_errors: int
    export_errors: int
    spans_started: int


def counts(p: Pipelines) -> Counts:
    import sdk

    stats = sdk.stats()
    return Counts(
        sdk_exported=p.sdk_exporter.exported,
        ref_exported=p.ref_exporter.exported,
        sdk_batches=p.sdk_exporter.batches,
        ref_batches=p.ref_exporter.batches,
        spans_dropped=stats.spans_dropped,
        internal_errors=stats.internal_errors,
        export_errors=stats.export_errors,
        spans_started=stats.spans_started,
    )


def fairness_checks(
    p: Pipelines, before: Counts, sdk_spans: int, ref_spans: int
) -> tuple[dict[str, Any], bool]:
    """After a final flush: every span each side made was exported, none dropped, no internal error."""
    p.flush()
    after = counts(p)
    sdk_exported = after.sdk_exported - before.sdk_exported
    ref_exported = after.ref_exported - before.ref_exported
    checks = {
        "sdk spans exported / made": f"{sdk_exported} / {sdk_spans}",
        "reference spans exported / made": f"{ref_exported} / {ref_spans}",
        "export batches (sdk / reference)": (
            f"{after.sdk_batches - before.sdk_batches} / {after.ref_batches - before.ref_batches}"
        ),
        "sdk.stats().spans_dropped (delta)": after.spans_dropped - before.spans_dropped,
        "sdk.stats().internal_errors (delta)": after.internal_errors - before.internal_errors,
        "sdk.stats().export_errors (delta)": after.export_errors - before.export_errors,
    }
    ok = (
        sdk_exported == sdk_spans
        and ref_exported == ref_spans
        and after.spans_dropped == before.spans_dropped
        and after.internal_errors == before.internal_errors
        and after.export_errors == before.export_errors
    )
    return checks, ok


# ---------------------------------------------------------------------------------------------
# Fresh interpreters


_pycache: list[str] = []


def pycache_dir() -> str:
    """A bytecode cache folder shared by this run's child interpreters (removed at exit).

    Children use it through PYTHONPYCACHEPREFIX, so ``import sdk`` reads compiled bytecode as an
    installed package does, without writing ``__pycache__`` folders into the source tree, and even
    where PYTHONDONTWRITEBYTECODE is set (it is in some development environments: there, without
    this, every child would compile the SDK from source while OpenTelemetry's wheels came with
    their .pyc files). The warm-up children fill the cache.
    """
    if not _pycache:
        path = tempfile.mkdtemp(prefix="sessiontrace-bench-pycache-")
        atexit.register(shutil.rmtree, path, True)
        _pycache.append(path)
    return _pycache[0]


def child_env() -> dict[str, str]:
    """The environment for child interpreters: the repo importable, bytecode cached, no SDK settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONPYCACHEPREFIX"] = pycache_dir()
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "PYTHONWARNINGS"):
        env.pop(name, None)
    return env


def run_child(
    code: str, cwd: Path | None = None, timeout: float = 60.0, env: dict[str, str] | None = None
) -> tuple[float, str]:
    """Run `python -c code` in a fresh interpreter (`env`: more variables); (wall seconds, stdout).
    Raises on failure."""
    with tempfile.TemporaryDirectory(prefix="sessiontrace-bench-") as tmp:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd or tmp,
            env={**child_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {code!r}\n{proc.stderr}")
    return wall, proc.stdout


# ---------------------------------------------------------------------------------------------
# In-process A/B workloads


@dataclass
class Workload:
    """One in-process comparison: a loop body per side, each run inside its side's untimed scope.

    `sdk_scope()` / `ref_scope()` return a context manager entered around the timed loop (e.g. the
    session the spans belong to, or the reference's parent span); `*_spans(ops)` says how many spans
    one sample makes, counted against what the null exporters received.
    """

    sdk_body: Callable[[int], None]
    ref_body: Callable[[int], None]
    sdk_scope: Callable[[], AbstractContextManager[Any]]
    ref_scope: Callable[[], AbstractContextManager[Any]]
    sdk_spans_per_op: int = 1
    ref_spans_per_op: int = 1
    sdk_spans_per_sample: int = 0  # spans the scope itself makes (the session's own span)
    ref_spans_per_sample: int = 0


def run_workload(
    workload: Workload, p: Pipelines, settings: Settings, ops: int
) -> tuple[list[Timing], list[Timing], dict[str, Any], bool]:
    """Interleaved samples of both sides (per-op timings), plus the fairness checks."""

    during = {"sdk": 0, "ref": 0}  # spans the null exporters received while a sample was being timed

    def sample(
        side: str, scope: Callable[[], AbstractContextManager[Any]], body: Callable[[int], None]
    ) -> Timing:
        exporter = p.sdk_exporter if side == "sdk" else p.ref_exporter
        with scope():
            before_sample = exporter.exported
            timing = time_loop(settings, body, ops)
            during[side] += exporter.exported - before_sample
        return timing

    before = counts(p)
    sdk_samples, ref_samples = interleave(
        lambda: sample("sdk", workload.sdk_scope, workload.sdk_body),
        lambda: sample("ref", workload.ref_scope, workload.ref_body),
        rounds=settings.rounds,
        warmup=settings.warmup,
        between=p.flush,
    )
    n = settings.rounds + settings.warmup
    checks, ok = fairness_checks(
        p,
        before,
        sdk_spans=n * (ops * workload.sdk_spans_per_op + workload.sdk_spans_per_sample),
        ref_spans=n * (ops * workload.ref_spans_per_op + workload.ref_spans_per_sample),
    )
    checks["spans exported while samples were timed (sdk / reference)"] = f"{during['sdk']} / {during['ref']}"
    ok = ok and during["sdk"] > 0 and during["ref"] > 0
    return sdk_samples, ref_samples, checks, ok
