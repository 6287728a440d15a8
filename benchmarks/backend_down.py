"""Per-span cost on the application thread while the OTLP backend refuses connections or hangs.

Three child processes, one per case, each ``sdk.init(endpoint=..., exporter="otlp")`` once in its
own fresh temporary working folder (the SDK's data folder, ``./.sessiontrace``, with anything the
export pipeline keeps on disk, lands there and is removed afterwards):

- **up** (the reference): a loopback OTLP/HTTP receiver (``tests/otlp_receiver.py``) that answers
  200 at once;
- **refusing**: a loopback port nothing listens on (every connection refused);
- **hanging**: a second receiver in ``hang()`` mode: it reads each request and never answers.

The parent drives them in interleaved rounds (``interleave_many``: the order rotates every round).
One sample, in the child: ``with sdk.session(...)`` (untimed), then ``ops`` raw
``tracer.start_as_current_span("x")`` spans, timed (wall and the process's CPU time); nothing is
flushed between samples — a pipeline whose backend is down cannot be flushed — so every case runs
in its own steady state: the up case exports while the application works, the down cases fill
their queue and then drop (or whatever the export pipeline does with a failed batch), which is
exactly what the application thread feels. Only one child works at a time; the receivers run in
the parent, which is idle while a child samples.

The receivers count spans without building Python objects for them (`_CountingReceiver`): the test
helper's full decoding costs more CPU per span than making the span, and a real backend does not
run on the application's cores.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from benchmarks.common import REPO_ROOT, child_env
from benchmarks.harness import Result, Settings, Timing, cpus, interleave_many, walls

NAME = "backend_down"
BUDGET = 1.05
CASES = ("up", "refusing", "hanging")

CHILD = "from benchmarks.backend_down import child_main; child_main()"


# ---------------------------------------------------------------------------------------------
# The child: one SDK pipeline, driven over stdin/stdout (one JSON object a line).


def child_main() -> None:
    """Init the SDK against argv[1], then answer the parent's commands until `exit`."""
    import os

    from opentelemetry import trace

    import sdk
    from benchmarks.harness import gc_policy, time_loop

    endpoint, quick, gc_on = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
    settings = Settings.make(quick=quick, gc_during_samples=gc_on)
    sdk.init(endpoint=endpoint, exporter="otlp", service_name="sessiontrace-benchmarks")
    tracer = trace.get_tracer("benchmarks.backend_down")

    def body(n: int) -> None:
        start = tracer.start_as_current_span
        for _ in range(n):
            with start("x"):
                pass

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "sample":
            with sdk.session("bench-backend"):
                timing = time_loop(settings, body, int(command["ops"]))
            reply({"wall": timing.wall, "cpu": timing.cpu})
        elif op == "stats":
            reply(sdk.stats()._asdict())
        elif op == "flush":
            t0 = time.perf_counter()
            with gc_policy(settings):
                done = sdk.flush(float(command["timeout"]))
            reply({"flushed": done, "seconds": time.perf_counter() - t0, "stats": sdk.stats()._asdict()})
        elif op == "exit":
            reply({"exiting": time.time()})
            return  # a normal interpreter exit: the SDK's exit handler ends and flushes (bounded)


# ---------------------------------------------------------------------------------------------
# The parent


def _load_receiver_module() -> ModuleType:
    """tests/otlp_receiver.py, imported by path (tests/ is not a package)."""
    name = "otlp_receiver"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests" / "otlp_receiver.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/otlp_receiver.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _receiver(module: ModuleType) -> Any:
    """An OTLPReceiver that counts spans (protobuf parse only) instead of keeping decoded copies."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class _CountingReceiver(module.OTLPReceiver):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.span_count = 0

        def _record(self, request: Any) -> None:
            self.span_count += len(request.spans)
            request.spans = []
            super()._record(request)

    def count_only(body: bytes) -> list[None]:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return [None] * n

    # The helper decodes every span into a dataclass: ~20-60 µs of the machine's CPU per span.
    module.decode_request = count_only  # type: ignore[attr-defined]
    return _CountingReceiver()


class _Child:
    """One case's SDK process and its line protocol."""

    def __init__(self, case: str, endpoint: str, settings: Settings) -> None:
        self.case = case
        self.endpoint = endpoint
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sessiontrace-bench-{case}-"))
        # stderr to a file, not a pipe: a chatty exporter must never block the child on a full pipe.
        self._stderr = (self.workdir.parent / f"{self.workdir.name}.stderr").open("w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                endpoint,
                "1" if settings.quick else "0",
                "1" if settings.gc_during_samples else "0",
            ],
            cwd=self.workdir,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.stderr_lines: list[str] = []

    def _read_stderr(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def read(self) -> dict[str, Any]:
        _, out = self._pipes()
        line = out.readline()
        if not line:
            self.proc.wait(10)
            err = self._read_stderr()
            raise RuntimeError(f"backend_down child ({self.case}) died:\n{err}")
        data: dict[str, Any] = json.loads(line)
        return data

    def ask(self, **command: Any) -> dict[str, Any]:
        inp, _ = self._pipes()
        inp.write(json.dumps(command) + "\n")
        inp.flush()
        return self.read()

    def sample(self, ops: int) -> Timing:
        data = self.ask(op="sample", ops=ops)
        return Timing(float(data["wall"]), float(data["cpu"]))

    def begin_exit(self) -> float:
        """Ask for a normal exit; the child's clock when its script ended."""
        return float(self.ask(op="exit")["exiting"])

    def wait_exit(self, exiting: float) -> float:
        """Seconds from the script's end (`exiting`) to the process being gone; keeps its stderr."""
        self.proc.communicate(timeout=60)
        gone = time.time()
        self.stderr_lines = self._read_stderr().splitlines()
        return gone - exiting

    def kill(self, keep_stderr: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._stderr.closed:
            return
        if keep_stderr:
            self.stderr_lines = self._read_stderr().splitlines()
        self._stderr.close()
        Path(self._stderr.name).unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def _children(settings: Settings, endpoints: dict[str, str]) -> Iterator[dict[str, _Child]]:
    made: dict[str, _Child] = {}
    try:
        for n, (case, url) in enumerate(endpoints.items()):
            made[case] = _Child(case, url, settings)
            if n == 0:  # the first fills the shared bytecode cache (PYTHONPYCACHEPREFIX) for the others
                made[case].read()
        for child in list(made.values())[1:]:
            child.read()  # "ready": init() done
        yield made
    finally:
        for child in made.values():
            child.kill()


def run(settings: Settings) -> list[Result]:
    module = _load_receiver_module()
    up, hanging = _receiver(module), _receiver(module)
    up.start()
    hanging.start()
    hanging.hang()
    endpoints = {"up": up.url, "refusing": module.closed_port_url(), "hanging": hanging.url}
    ops = settings.ops
    rounds = min(settings.rounds, 6) if settings.quick else settings.rounds
    try:
        with _children(settings, endpoints) as children:
            samples = interleave_many(
                {case: functools.partial(children[case].sample, ops) for case in CASES},
                rounds=rounds,
                warmup=settings.warmup,
            )
            made = (rounds + settings.warmup) * (ops + 1)
            # Stats first (nothing flushed yet), then the up case flushed: it must have kept up.
            stats = {case: children[case].ask(op="stats") for case in CASES}
            flushed_up = children["up"].ask(op="flush", timeout=10.0)
            up_received = up.span_count
            hang_requests = len(hanging.requests)
            exits: dict[str, float] = {}
            if not settings.quick:  # all three exit at once (each timed from its own end)
                exiting = {case: children[case].begin_exit() for case in CASES}
                exits = {case: children[case].wait_exit(exiting[case]) for case in CASES}
            else:  # --quick: no exit probe (a down backend makes it take the whole flush_timeout)
                for child in children.values():
                    child.kill(keep_stderr=True)
            stderr = {case: children[case].stderr_lines for case in CASES}
    finally:
        hanging.stop()
        up.stop()

    up_stats = flushed_up["stats"]
    checks: dict[str, Any] = {
        "up: spans the receiver got / made (after a flush)": f"{up_received} / {made}",
        "up: sdk.stats() spans_dropped / export_errors": (
            f"{up_stats['spans_dropped']} / {up_stats['export_errors']}"
        ),
        "hanging: export requests the receiver read (and never answered)": hang_requests,
    }
    for case in ("refusing", "hanging"):
        s = stats[case]
        checks[f"{case}: sdk.stats() before exit"] = ", ".join(
            f"{k} {v}" for k, v in s.items() if isinstance(v, int) and v and not k.startswith("llm")
        )
    ok = (
        up_received == made
        and up_stats["spans_dropped"] == 0
        and up_stats["export_errors"] == 0
        and hang_requests > 0
        and stats["refusing"]["spans_exported"] == 0
        and stats["hanging"]["spans_exported"] == 0
    )
    common_notes = [
        f"each case in its own child process (fresh temporary working folder, `sdk.init(endpoint=..., "
        f'exporter="otlp")`, default queue and timeouts); {ops} spans per sample inside '
        "`with sdk.session(...)`, nothing flushed between samples, the cases interleaved (order rotating)",
        "normal interpreter exit after the run (exit handler: end sessions, flush within flush_timeout): "
        + (
            ", ".join(f"{case} {exits[case] * 1e3:.0f} ms" for case in CASES)
            if exits
            else "not measured (--quick)"
        ),
    ]
    for case in CASES:
        if stderr[case]:
            shown = "; ".join(line.strip() for line in stderr[case][:3])
            more = f" (+{len(stderr[case]) - 3} more lines)" if len(stderr[case]) > 3 else ""
            common_notes.append(f"{case}: stderr had {len(stderr[case])} lines: {shown}{more}")
        else:
            common_notes.append(f"{case}: stderr empty")
    titles = {
        "refusing": "span, backend refusing connections",
        "hanging": "span, backend hanging",
    }
    labels = {
        "refusing": f"OTLP/HTTP to `{endpoints['refusing']}`, a loopback port nothing listens on",
        "hanging": "OTLP/HTTP to a loopback receiver that reads each request and never answers",
    }
    results = []
    for case in ("refusing", "hanging"):
        results.append(
            Result(
                name=f"{NAME}_{case}",
                title=titles[case],
                sdk_label=labels[case] + '; `tracer.start_as_current_span("x")` inside a session',
                sdk=walls(samples[case]),
                sdk_cpu=cpus(samples[case]),
                ref_label="the same, the backend up: a loopback OTLP/HTTP receiver answering 200 at once",
                ref=walls(samples["up"]),
                ref_cpu=cpus(samples["up"]),
                budget_ratio=BUDGET,
                ops_per_sample=ops,
                notes=common_notes,
                checks=checks,
                checks_ok=ok,
            )
        )
    return results
