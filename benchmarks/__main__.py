"""``python -m benchmarks [--quick] [--only NAME ...] [--sdk-setting KEY=VALUE ...] [--out DIR] [--peers]``:
run, print one table, write results."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.harness import (
    Result,
    Settings,
    describe_settings,
    load_average,
    machine_info,
    render_text,
    write_results,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time sessiontrace against raw OpenTelemetry, interleaved in the same process.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and ops: well under a minute")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this benchmark (repeatable, or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the Markdown and JSON (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--gc",
        action="store_true",
        help="leave the garbage collector on during samples (default: collect before, off during)",
    )
    parser.add_argument(
        "--sdk-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sdk.init() setting for the SDK side of the in-process benchmarks (repeatable), to "
        "measure what it costs: e.g. session_store=none, live_sessions=false; benchmarks with "
        "interpreters or pipelines of their own (import_time, init_time, memory, sustained, "
        "backend_down, scrub, span_in_session_fallback) ignore it",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="instead of the benchmarks: AgentOps, traceloop-sdk, Logfire and Langfuse side by side, each "
        "in its own cached virtual environment (installs them once; loopback only; not run by CI)",
    )
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        args.only = names
    settings: dict[str, str] = {}
    for item in args.sdk_setting:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--sdk-setting wants KEY=VALUE, got {item!r}")
        settings[key.strip()] = value
    args.sdk_setting = settings
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = Settings.make(quick=args.quick, gc_during_samples=args.gc)
    if args.peers and args.sdk_setting:
        print(
            "python -m benchmarks: --sdk-setting applies to the benchmarks, not to --peers", file=sys.stderr
        )
        return 2
    if args.peers:
        from benchmarks.peers import run_peers

        return run_peers(settings, argv, args.out)
    machine = machine_info()
    if args.sdk_setting:  # shown with the results: an ablation is not a run of the defaults
        from benchmarks.common import use_sdk_settings

        use_sdk_settings(args.sdk_setting)
        machine["SDK settings (--sdk-setting)"] = ", ".join(f"{k}={v}" for k, v in args.sdk_setting.items())
    names = args.only or list(BENCHMARKS)
    print(f"sessiontrace benchmarks ({'quick' if args.quick else 'full'}): {describe_settings(settings)}")
    print("; ".join(f"{k}: {v}" for k, v in machine.items() if k != "OS"), flush=True)
    results: list[Result] = []
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        print(f"  {name} ...", end="", flush=True)
        results.extend(module.run(settings))
        print(f" {time.perf_counter() - t0:.1f} s", flush=True)
    machine["load average at end (1/5/15 min)"] = load_average()
    machine["total run time"] = f"{time.perf_counter() - started:.1f} s"
    print()
    print(render_text(results))
    md_path, json_path = write_results(results, machine, settings, argv, args.out)
    print(f"\nwritten: {md_path}\n         {json_path}")
    failed_checks = [r.name for r in results if not r.checks_ok]
    if failed_checks:
        print(f"fairness checks failed (see the Markdown): {', '.join(failed_checks)}", file=sys.stderr)
        return 2
    missed = [r.name for r in results if r.met is False]
    if missed:
        print(f"budgets missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
