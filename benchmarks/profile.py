"""Profile one in-process benchmark: where each side's time goes.

    python -m benchmarks.profile span_in_session            # pyinstrument, both sides
    python -m benchmarks.profile session_start_end --side sdk --ops 20000
    python -m benchmarks.profile decorated_call --tool cprofile
    python -m benchmarks.profile import_time                  # -X importtime: what only sdk imports

Uses pyinstrument (a sampling profiler: small overhead, so the proportions hold) when it is
installed, else cProfile (deterministic, but it inflates functions that are called often). For
``import_time`` it runs ``python -X importtime`` in fresh interpreters (bytecode cached, as the
benchmark does) and lists the modules ``import sdk`` loads that ``import opentelemetry.sdk.trace``
does not, with their median self time. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import re
import statistics
import subprocess
import sys
import time

from benchmarks.common import child_env, pipelines

IN_PROCESS = ("span_in_session", "decorated_call", "session_start_end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=(*IN_PROCESS, "import_time"))
    parser.add_argument("--side", choices=("sdk", "ref", "both"), default="both")
    parser.add_argument("--ops", type=int, default=20_000, help="operations profiled per side")
    parser.add_argument("--tool", choices=("pyinstrument", "cprofile"), default=None)
    parser.add_argument("--all-frames", action="store_true", help="pyinstrument: show library frames too")
    args = parser.parse_args(argv)

    tool = args.tool
    if tool is None:
        try:
            import pyinstrument  # noqa: F401

            tool = "pyinstrument"
        except ImportError:
            tool = "cprofile"

    if args.benchmark == "import_time":
        return profile_imports(runs=15)

    p = pipelines()
    workload = importlib.import_module(f"benchmarks.{args.benchmark}").workload(p)
    sides = ("sdk", "ref") if args.side == "both" else (args.side,)
    for side in sides:
        body = workload.sdk_body if side == "sdk" else workload.ref_body
        scope = workload.sdk_scope if side == "sdk" else workload.ref_scope
        with scope():  # warm up, then start from empty queues
            body(min(args.ops, 2000))
        p.flush()
        print(f"=== {args.benchmark}: {side} side, {args.ops} ops, {tool}")
        start = time.perf_counter()
        if tool == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            with scope():
                profiler.start()
                body(args.ops)
                profiler.stop()
            elapsed = time.perf_counter() - start
            print(profiler.output_text(unicode=False, color=False, show_all=args.all_frames))
        else:
            prof = cProfile.Profile()
            with scope():
                prof.enable()
                body(args.ops)
                prof.disable()
            elapsed = time.perf_counter() - start
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue())
        print(f"({elapsed / args.ops * 1e6:.2f} µs per op under the profiler)\n")
        p.flush()
    return 0


_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| *(\S+)")


def importtime(module: str) -> dict[str, tuple[int, int]]:
    """{module: (self us, cumulative us)} from one fresh `python -X importtime -c "import module"`."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for line in proc.stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            found[match.group(3)] = (int(match.group(1)), int(match.group(2)))
    return found


def profile_imports(runs: int) -> int:
    for _ in range(2):  # fill the bytecode cache
        importtime("sdk")
        importtime("opentelemetry.sdk.trace")
    sdk_runs = [importtime("sdk") for _ in range(runs)]
    ref_runs = [importtime("opentelemetry.sdk.trace") for _ in range(runs)]

    def median_of(all_runs: list[dict[str, tuple[int, int]]], name: str, i: int) -> float:
        return statistics.median(r[name][i] for r in all_runs if name in r) / 1e3

    ref_names = set().union(*ref_runs)
    extra = sorted(
        {name for r in sdk_runs for name in r} - ref_names, key=lambda n: -median_of(sdk_runs, n, 0)
    )
    print(
        f"cumulative (median of {runs}, -X importtime adds its own overhead): import sdk "
        f"{median_of(sdk_runs, 'sdk', 1):.1f} ms, import opentelemetry.sdk.trace "
        f"{median_of(ref_runs, 'opentelemetry.sdk.trace', 1):.1f} ms"
    )
    total = sum(median_of(sdk_runs, n, 0) for n in extra)
    print(f"{len(extra)} modules only `import sdk` loads, {total:.1f} ms of self time:")
    for name in extra:
        print(f"  {name:60s} {median_of(sdk_runs, name, 0):6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
