"""`import sdk` against `import opentelemetry.sdk.trace`, each in a fresh interpreter.

Three child commands run interleaved (their order rotates every round), many rounds:

- ``import sdk`` and ``import opentelemetry.sdk.trace``, each timed inside the child with
  ``time.perf_counter()`` around the import statement (the import alone), and
- a child with the same timer scaffolding and no import, the interpreter-startup baseline.

Two rows: the import timed in the child, and the parent's wall time of the whole child (startup,
import, interpreter exit) minus the baseline's, which also counts what the import costs at exit.
"""

from __future__ import annotations

import functools
import statistics

from benchmarks.common import run_child
from benchmarks.harness import Result, Settings, Timing, cpus, interleave_many, walls

NAME = "import_time"
BUDGET = 1.15

SCAFFOLD = (
    "import time; c0 = time.process_time(); t0 = time.perf_counter(); {stmt}; "
    "t1 = time.perf_counter(); c1 = time.process_time(); print(t1 - t0, c1 - c0)"
)
COMMANDS = {
    "sdk": SCAFFOLD.format(stmt="import sdk"),
    "ref": SCAFFOLD.format(stmt="import opentelemetry.sdk.trace"),
    "base": SCAFFOLD.format(stmt="pass"),
}


def run(settings: Settings) -> list[Result]:
    inner: dict[str, list[Timing]] = {name: [] for name in COMMANDS}

    def child(name: str) -> Timing:
        wall, out = run_child(COMMANDS[name])
        inner_wall, inner_cpu = (float(x) for x in out.split())
        inner[name].append(Timing(inner_wall, inner_cpu))
        return Timing(wall)

    outer = interleave_many(
        {name: functools.partial(child, name) for name in COMMANDS},
        rounds=settings.process_rounds,
        warmup=settings.process_warmup,
    )
    for name in inner:  # drop the warm-up children's inner timings too
        inner[name] = inner[name][settings.process_warmup :]
    base = statistics.median(walls(outer["base"]))
    base_inner = statistics.median(walls(inner["base"]))
    base_cpu = statistics.median(cpus(inner["base"]) or [0.0])
    notes = [
        f"interpreter startup + exit baseline (child with no import): median {base * 1e3:.1f} ms wall",
        "children run with PYTHONPATH=<repo>, cwd=a fresh temporary folder, no SESSIONTRACE_*/OTEL_* "
        "variables, and a warm bytecode cache shared through PYTHONPYCACHEPREFIX (filled by the "
        "discarded warm-up children), as an installed package has",
        "profile: `python -X importtime -c 'import sdk'` (see docs/performance.md)",
    ]

    def minus(values: list[float] | None, b: float) -> list[float] | None:
        return None if values is None else [v - b for v in values]

    return [
        Result(
            name=NAME,
            title="import (timed in the child)",
            sdk_label="`import sdk`, perf_counter around the import statement in a fresh interpreter",
            sdk=minus(walls(inner["sdk"]), base_inner) or [],
            sdk_cpu=minus(cpus(inner["sdk"]), base_cpu),
            ref_label="`import opentelemetry.sdk.trace`, the same way",
            ref=minus(walls(inner["ref"]), base_inner),
            ref_cpu=minus(cpus(inner["ref"]), base_cpu),
            budget_ratio=BUDGET,
            unit="ms",
            notes=notes,
        ),
        Result(
            name=NAME + "_wall",
            title="import (child wall minus baseline)",
            sdk_label="wall time of `python -c 'import sdk'` (startup, import, exit) minus the baseline's",
            sdk=[w - base for w in walls(outer["sdk"])],
            ref_label="the same for `import opentelemetry.sdk.trace`",
            ref=[w - base for w in walls(outer["ref"])],
            budget_ratio=BUDGET,
            unit="ms",
            notes=[f"per-round samples minus the median baseline ({base * 1e3:.1f} ms)"],
        ),
    ]
