"""How long ``sdk.init()`` takes, in a fresh interpreter (``import sdk`` done and not counted).

Two cases, interleaved, each child in a fresh temporary working folder with no SESSIONTRACE_* /
OTEL_* variables:

- ``sdk.init()`` with the embedded default (no endpoint: the local OTLP-JSON file exporter), and
- ``sdk.init(endpoint="http://127.0.0.1:<closed port>")`` (OTLP/HTTP to a port nothing listens on).

init() includes what it imports lazily (the exporter's modules): that is what a user waits for.
"""

from __future__ import annotations

import functools
import json
import socket
import statistics
import time

from benchmarks.common import run_child
from benchmarks.harness import Result, Settings, Timing, cpus, interleave_many, walls

NAME = "init_time"
BUDGET_SECONDS = 0.025

CHILD = """\
import json, os, sys, time
import sdk
c0 = time.process_time()
t0 = time.perf_counter()
config = sdk.init({kwargs})
t1 = time.perf_counter()
c1 = time.process_time()
print(json.dumps({{"init": t1 - t0, "cpu": c1 - c0, "exporter": config.exporter_kind}}), flush=True)
os._exit(0)  # the timed rounds stop here: exit behaviour is measured once, separately
"""

EXIT_CHILD = """\
import json, time
import sdk
sdk.init({kwargs})
t0 = time.perf_counter()
with sdk.session("probe"):
    pass
t1 = time.perf_counter()
print(json.dumps({{"first_session": t1 - t0, "done_at": time.time()}}), flush=True)
"""
"""Init, one session, a normal exit (the exit handler ends sessions and flushes, bounded by flush_timeout)."""


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_probe(kwargs: str) -> tuple[float, float]:
    """(first session start + end, seconds from the end of the script to the process being gone)."""
    _, out = run_child(EXIT_CHILD.format(kwargs=kwargs))
    gone = time.time()
    data = json.loads(out.strip().splitlines()[-1])
    return float(data["first_session"]), gone - float(data["done_at"])


def run(settings: Settings) -> list[Result]:
    port = closed_port()
    cases = {
        "default": "",
        "unreachable": f'endpoint="http://127.0.0.1:{port}"',
    }
    exporters: dict[str, set[str]] = {name: set() for name in cases}

    def child(name: str) -> Timing:
        _, out = run_child(CHILD.format(kwargs=cases[name]))
        data = json.loads(out.strip().splitlines()[-1])
        exporters[name].add(str(data["exporter"]))
        return Timing(float(data["init"]), float(data["cpu"]))

    samples = interleave_many(
        {name: functools.partial(child, name) for name in cases},
        rounds=settings.init_rounds,
        warmup=settings.process_warmup,
    )
    titles = {
        "default": "init(), embedded default",
        "unreachable": "init(), unreachable endpoint",
    }
    labels = {
        "default": "`sdk.init()` with no settings (exporter: local OTLP-JSON file), fresh interpreter",
        "unreachable": f"`sdk.init(endpoint='http://127.0.0.1:{port}')`, a closed port, fresh interpreter",
    }
    results = []
    for name in cases:
        probes = [exit_probe(cases[name]) for _ in range(1 if settings.quick else 3)]
        first = statistics.median(p[0] for p in probes)
        exits = ", ".join(f"{p[1] * 1e3:.0f}" for p in probes)
        results.append(
            Result(
                name=f"{NAME}_{name}",
                title=titles[name],
                sdk_label=labels[name],
                sdk=walls(samples[name]),
                sdk_cpu=cpus(samples[name]),
                budget_seconds=BUDGET_SECONDS,
                unit="ms",
                checks={"exporter chosen": sorted(exporters[name])},
                notes=[
                    "timed: the `sdk.init(...)` call only (`import sdk` before it is not counted; the "
                    "exporter modules init() imports lazily are)",
                    f"separately, {len(probes)} child(ren) doing init, one session and a normal exit: "
                    f"first session start + end {first * 1e3:.2f} ms; exit (atexit flush) took {exits} ms",
                ],
            )
        )
    return results
