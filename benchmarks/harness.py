"""Interleaved A/B timing, medians and ratios, the machine description, and result rendering.

Every comparison runs the SDK (A) and its reference (B) in the same process, one sample of each
per round, for many rounds. The order inside a round alternates (A B, B A, A B, ...) so that
neither side always runs right after the other's export work or always first after a flush.
Reported numbers are medians of the samples; the ratio is median(A) / median(B). The median of
the per-round ratios A_i / B_i is reported as well: it cancels slow drifts of a noisy machine.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Run settings


@dataclass(frozen=True)
class Settings:
    """How hard to measure. `quick` trades precision for a run well under a minute."""

    quick: bool = False
    gc_during_samples: bool = False  # False: gc.collect() before and gc.disable() during each sample
    rounds: int = 80  # in-process A/B rounds (one sample per side per round)
    warmup: int = 3  # discarded rounds before those
    ops: int = 2000  # operations per in-process sample (e.g. spans)
    process_rounds: int = 60  # rounds of fresh-interpreter import measurements
    process_warmup: int = 2
    init_rounds: int = 20  # rounds of fresh-interpreter init() measurements

    @classmethod
    def make(cls, quick: bool, gc_during_samples: bool = False) -> Settings:
        if quick:
            return cls(
                quick=True,
                gc_during_samples=gc_during_samples,
                rounds=12,
                warmup=2,
                ops=1000,
                process_rounds=8,
                process_warmup=1,
                init_rounds=5,
            )
        return cls(quick=False, gc_during_samples=gc_during_samples)


# ---------------------------------------------------------------------------------------------
# Timing


@contextmanager
def gc_policy(settings: Settings) -> Iterator[None]:
    """The same garbage-collector policy for every sample of both sides."""
    if settings.gc_during_samples:
        yield
        return
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Timing:
    """One sample: wall seconds (perf_counter) and CPU seconds of the whole process (process_time,
    every thread: the export workers' CPU counts too), per operation. CPU time is what a busy
    machine disturbs least; wall time is what a user waits for."""

    wall: float
    cpu: float | None = None


def time_loop(settings: Settings, body: Callable[[int], None], ops: int) -> Timing:
    """Per-op wall and CPU seconds of `body(ops)`, under the GC policy (the loop lives in `body`)."""
    with gc_policy(settings):
        cpu0 = time.process_time()
        start = time.perf_counter()
        body(ops)
        end = time.perf_counter()
        cpu1 = time.process_time()
    return Timing((end - start) / ops, (cpu1 - cpu0) / ops)


Sample = Callable[[], Timing]
"""Runs one sample and returns its timed part (setup and flushing untimed)."""


def interleave(
    a: Sample, b: Sample, rounds: int, warmup: int = 0, between: Callable[[], None] | None = None
) -> tuple[list[Timing], list[Timing]]:
    """Run a and b alternately (A B, B A, A B, ...), `warmup` rounds discarded then `rounds` kept."""
    a_samples: list[Timing] = []
    b_samples: list[Timing] = []
    for i in range(warmup + rounds):
        order = ((a, a_samples), (b, b_samples)) if i % 2 == 0 else ((b, b_samples), (a, a_samples))
        for sample, out in order:
            if between is not None:
                between()
            value = sample()
            if i >= warmup:
                out.append(value)
    return a_samples, b_samples


def interleave_many(samples: dict[str, Sample], rounds: int, warmup: int = 0) -> dict[str, list[Timing]]:
    """Like `interleave` for several sides, rotating which one goes first each round."""
    names = list(samples)
    out: dict[str, list[Timing]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            value = samples[name]()
            if i >= warmup:
                out[name].append(value)
    return out


def walls(timings: list[Timing]) -> list[float]:
    return [t.wall for t in timings]


def cpus(timings: list[Timing]) -> list[float] | None:
    values = [t.cpu for t in timings]
    return None if any(v is None for v in values) else [v for v in values if v is not None]


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    """One row of the table: the SDK's samples, the reference's (if any), and the budget.

    Samples are seconds per operation. A comparison has `ref` samples and a ratio budget
    (`budget_ratio`); an absolute measurement has none and a budget in seconds (`budget_seconds`).
    """

    name: str
    title: str
    sdk_label: str
    sdk: list[float]
    ref_label: str | None = None
    ref: list[float] | None = None
    sdk_cpu: list[float] | None = None
    ref_cpu: list[float] | None = None
    budget_ratio: float | None = None
    budget_seconds: float | None = None
    budget_growth: float | None = None  # most that median(sdk) may exceed median(ref), in the row's unit
    unit: str = "us"  # "us", "ms" (samples in seconds) or "MB" (samples in bytes): how the table shows them
    ops_per_sample: int = 1
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)  # facts that must hold for a fair run
    checks_ok: bool = True
    informational: bool = False  # shown in the table, no budget

    @property
    def sdk_median(self) -> float:
        return statistics.median(self.sdk)

    @property
    def ref_median(self) -> float | None:
        return statistics.median(self.ref) if self.ref else None

    @property
    def ratio(self) -> float | None:
        ref = self.ref_median
        return self.sdk_median / ref if ref else None

    @property
    def cpu_ratio(self) -> float | None:
        if not self.sdk_cpu or not self.ref_cpu:
            return None
        ref = statistics.median(self.ref_cpu)
        return statistics.median(self.sdk_cpu) / ref if ref else None

    @property
    def paired_ratio(self) -> float | None:
        if not self.ref:
            return None
        return statistics.median(a / b for a, b in zip(self.sdk, self.ref, strict=False) if b > 0)

    @property
    def ratio_ci(self) -> tuple[float, float] | None:
        """A 95% bootstrap interval for the ratio of medians (how much the noise allows it to move)."""
        if not self.ref:
            return None
        return bootstrap_ratio_ci(self.sdk, self.ref)

    @property
    def met(self) -> bool | None:
        if self.budget_ratio is not None:
            ratio = self.ratio
            return ratio is not None and ratio <= self.budget_ratio
        if self.budget_seconds is not None:
            return self.sdk_median <= self.budget_seconds
        if self.budget_growth is not None:
            ref = self.ref_median
            return ref is not None and self.sdk_median - ref <= self.budget_growth
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            sdk_median=self.sdk_median,
            ref_median=self.ref_median,
            ratio=self.ratio,
            paired_ratio=self.paired_ratio,
            cpu_ratio=self.cpu_ratio,
            ratio_ci95=self.ratio_ci,
            sdk_cpu_median=statistics.median(self.sdk_cpu) if self.sdk_cpu else None,
            ref_cpu_median=statistics.median(self.ref_cpu) if self.ref_cpu else None,
            sdk_iqr=iqr(self.sdk),
            ref_iqr=iqr(self.ref) if self.ref else None,
            met=self.met,
        )
        return data


def bootstrap_ratio_ci(
    a: list[float], b: list[float], resamples: int = 2000, seed: int = 12345
) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of median(a*)/median(b*) over resamples of each side."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def iqr(values: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles."""
    if len(values) < 4:
        return (min(values), max(values))
    q = statistics.quantiles(values, n=4)
    return (q[0], q[2])


def fmt_time(seconds: float | None, unit: str) -> str:
    if seconds is None:
        return "—"
    if unit == "MB":  # bytes, despite the parameter's name
        return f"{seconds / 2**20:.1f} MB"
    if unit == "ms":
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} µs"


def fmt_budget(result: Result) -> str:
    if result.budget_ratio is not None:
        return f"≤ {result.budget_ratio:.2f}{TIMES}"
    if result.budget_seconds is not None:
        return f"≤ {result.budget_seconds * 1e3:.0f} ms"
    if result.budget_growth is not None:
        return f"growth ≤ {fmt_time(result.budget_growth, result.unit)}"
    return "—"


def fmt_met(result: Result) -> str:
    met = result.met
    text = "—" if met is None else ("yes" if met else "**NO**")
    if not result.checks_ok:
        text += " (checks failed)"
    return text


TIMES = "\N{MULTIPLICATION SIGN}"

COLUMNS = ("benchmark", "SDK median", "reference median", "ratio [95% CI]", "CPU ratio", "budget", "met?")


def fmt_ratio(result: Result) -> str:
    ratio, ci = result.ratio, result.ratio_ci
    if ratio is None:
        return "—"
    text = f"{ratio:.2f}{TIMES}"
    return text if ci is None else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"


def table_rows(results: list[Result]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in results:
        cpu = r.cpu_ratio
        rows.append(
            (
                r.title,
                fmt_time(r.sdk_median, r.unit),
                fmt_time(r.ref_median, r.unit),
                fmt_ratio(r),
                "—" if cpu is None else f"{cpu:.2f}{TIMES}",
                fmt_budget(r),
                fmt_met(r).replace("**", ""),
            )
        )
    return rows


def render_text(results: list[Result]) -> str:
    """The one table printed at the end of a run."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(
    results: list[Result], machine: dict[str, Any], settings: Settings, argv: list[str]
) -> str:
    out = ["# sessiontrace benchmarks", ""]
    out.append(f"Command: `python -m benchmarks {' '.join(argv)}`".rstrip() + "  ")
    out.append(f"Mode: {'quick' if settings.quick else 'full'}; " + describe_settings(settings))
    out += ["", "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Results", ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r, row in zip(results, table_rows(results), strict=True):
        cells = list(row)
        cells[-1] = fmt_met(r)
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Details", ""]
    for r in results:
        out.append(f"### {r.title} (`{r.name}`)")
        out.append("")
        out.append(f"- SDK side: {r.sdk_label}")
        if r.ref_label:
            out.append(f"- reference side: {r.ref_label}")
        lo, hi = iqr(r.sdk)
        out.append(
            f"- SDK: median {fmt_time(r.sdk_median, r.unit)}, IQR {fmt_time(lo, r.unit)} to "
            f"{fmt_time(hi, r.unit)}, {len(r.sdk)} samples {TIMES} {r.ops_per_sample} ops"
        )
        if r.ref:
            lo, hi = iqr(r.ref)
            out.append(
                f"- reference: median {fmt_time(r.ref_median, r.unit)}, IQR {fmt_time(lo, r.unit)} to "
                f"{fmt_time(hi, r.unit)}, {len(r.ref)} samples {TIMES} {r.ops_per_sample} ops"
            )
        if r.sdk_cpu:
            line = f"- CPU (process_time, all threads): SDK median {fmt_time(statistics.median(r.sdk_cpu), r.unit)}"
            if r.ref_cpu:
                line += f", reference median {fmt_time(statistics.median(r.ref_cpu), r.unit)}"
            out.append(line)
        ci = r.ratio_ci
        if r.ratio is not None and ci is not None:
            out.append(
                f"- ratio of medians {r.ratio:.3f} (95% bootstrap interval {ci[0]:.3f} to "
                f"{ci[1]:.3f}); median of per-round ratios {r.paired_ratio:.3f}"
                + (f"; CPU ratio {r.cpu_ratio:.3f}" if r.cpu_ratio is not None else "")
            )
        for key, value in r.checks.items():
            out.append(f"- check `{key}`: {value}")
        out += [f"- {note}" for note in r.notes]
        out.append("")
    return "\n".join(out)


def describe_settings(settings: Settings) -> str:
    return (
        f"{settings.rounds} interleaved rounds (+{settings.warmup} warm-up) {TIMES} {settings.ops} ops per "
        f"in-process sample; {settings.process_rounds} rounds (+{settings.process_warmup} warm-up) of "
        f"fresh interpreters for import, {settings.init_rounds} for init(); GC "
        + (
            "left on during samples"
            if settings.gc_during_samples
            else "collected before and off during samples"
        )
    )


def write_results(
    results: list[Result], machine: dict[str, Any], settings: Settings, argv: list[str], out_dir: Path
) -> tuple[Path, Path]:
    """Write `<stamp>.md` and `<stamp>.json` (and `latest.*` copies) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if settings.quick else "")
    markdown = render_markdown(results, machine, settings, argv)
    data = {
        "argv": argv,
        "settings": asdict(settings),
        "machine": machine,
        "results": [r.to_json() for r in results],
    }
    text = json.dumps(data, indent=2, default=str)
    md_path, json_path = out_dir / f"{stamp}.md", out_dir / f"{stamp}.json"
    md_path.write_text(markdown + "\n", encoding="utf-8")
    json_path.write_text(text + "\n", encoding="utf-8")
    (out_dir / "latest.md").write_text(markdown + "\n", encoding="utf-8")
    (out_dir / "latest.json").write_text(text + "\n", encoding="utf-8")
    return md_path, json_path


# ---------------------------------------------------------------------------------------------
# The machine


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def source_revision() -> str:
    """The commit measured, and whether the SDK's files differed from it (others may be editing)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sdk"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in sdk/" if dirty else "")


def machine_info() -> dict[str, Any]:
    """CPU count, Python, OpenTelemetry versions: what a reader needs to compare runs."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "CPU": _cpu_model(),
        "CPU count": f"{os.cpu_count()} ({usable} usable by this process)",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "opentelemetry-api": _version("opentelemetry-api"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "opentelemetry-exporter-otlp-proto-http": _version("opentelemetry-exporter-otlp-proto-http"),
        "sessiontrace": f"{_version('sessiontrace')} at {source_revision()}",
        "load average at start (1/5/15 min)": load_average(),
    }
