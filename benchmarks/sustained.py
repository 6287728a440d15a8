"""Sustained load: N threads of short sessions for a fixed time, the SDK beside raw OpenTelemetry.

Each case runs in a fresh child process (its own temporary working folder, so the SDK's data
folder, spool and SQLite session store start empty): `THREADS` threads (8 with ``--quick``) each
loop for `SECONDS` (3 with ``--quick``) over short sessions — a session (for raw OpenTelemetry: a
root span) with two child spans, three spans in all — as fast as they can, no pause between them:
a CPU-bound worst case for the export thread, which competes with every one of them for the GIL.

Destinations, the same for both sides:

- **file**: the SDK's default, OTLP-JSON lines under ``.sessiontrace/traces``; the reference is
  OpenTelemetry's ``BatchSpanProcessor`` feeding the SDK's own ``OTLPJsonFileExporter`` (the same
  work per span; OpenTelemetry has no OTLP-JSON file exporter);
- **fast**, **slow**, **hanging**: OTLP/HTTP to a loopback receiver in the parent process that
  answers at once, after 200 ms per request, or never (it reads each request and keeps the
  connection open); the reference is ``BatchSpanProcessor(OTLPSpanExporter(endpoint))``.

Both sides keep their defaults (queue 2,048, batches of 512, export every second (OpenTelemetry:
5 s), request timeout 10 s); the SDK runs with its default SQLite session store and its console
summary off (thousands of lines a second on stderr would measure the terminal).

Reported per case: sessions and spans ended per second during the load; spans dropped (SDK:
``sdk.stats().spans_dropped``, by reason; reference: spans ended minus spans its exporter reported
exported, after a final flush of up to 30 s — its drops are not counted anywhere else); spans the
SDK spilled to disk (``spans_spooled``) and how many the receiver got after the load ended
(delivered later); session records in the store against sessions started; the child's RSS at the
end of the load and its peak. For **slow** and **hanging**, the SDK child exits normally (its exit
handler keeps what it could not send in the spool) and a second SDK process started in the same
folder, the receiver now answering at once, delivers the spool: its count is reported too.
"""

from __future__ import annotations

import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.backend_down import _load_receiver_module, _receiver
from benchmarks.common import child_env
from benchmarks.harness import Result, Settings

NAME = "sustained"
THREADS = 64
SECONDS = 20.0
QUICK_THREADS = 8
QUICK_SECONDS = 3.0
CASES = ("file", "fast", "slow", "hanging")
SLOW_SECONDS = 0.2
SPANS_PER_SESSION = 3

CHILD = "from benchmarks.sustained import child_main; child_main()"


# ---------------------------------------------------------------------------------------------
# The child: one side, one destination, one load.


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def child_main() -> None:
    """argv: side (sdk|raw), case, endpoint, threads, seconds. Prints one JSON line."""
    side, case, endpoint, threads, seconds = sys.argv[1:6]
    n_threads, duration = int(threads), float(seconds)
    from opentelemetry import trace

    if side == "sdk":
        import sdk

        settings: dict[str, Any] = {"service_name": "bench-sustained", "console_summary": False}
        if case == "deliver":  # the second process of the slow and hanging cases: send the spool
            sdk.init(endpoint=endpoint, exporter="otlp", metrics=False, spool_retry_interval=0.2, **settings)
            deadline = time.monotonic() + 120
            spool = Path(".sessiontrace", "spool")
            while time.monotonic() < deadline and any(".otlp" in p.name for p in spool.glob("*/*")):
                time.sleep(0.2)
            print(json.dumps({"stats": sdk.stats()._asdict()}), flush=True)
            return
        if case != "file":
            settings.update(endpoint=endpoint, exporter="otlp", metrics=False)
        sdk.init(**settings)
        tracer = trace.get_tracer("benchmarks.sustained")

        def session(n: int) -> None:
            with sdk.session("load", user_id=f"u{n}"):
                with tracer.start_as_current_span("step-1"):
                    pass
                with tracer.start_as_current_span("step-2"):
                    pass

    else:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        if case == "file":
            from sdk.export.jsonl import OTLPJsonFileExporter

            inner: SpanExporter = OTLPJsonFileExporter(Path(".raw-otel"), 100 * 2**20)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            inner = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
        exported = [0]

        class Counting(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                result = inner.export(spans)
                if result is SpanExportResult.SUCCESS:
                    exported[0] += len(spans)
                return result

            def shutdown(self) -> None:
                inner.shutdown()

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return True

        provider = TracerProvider(resource=Resource({"service.name": "bench-sustained"}))
        processor = BatchSpanProcessor(Counting())
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("benchmarks.sustained")

        def session(n: int) -> None:
            with tracer.start_as_current_span("load"):
                with tracer.start_as_current_span("step-1"):
                    pass
                with tracer.start_as_current_span("step-2"):
                    pass

    counts = [0] * n_threads
    start = threading.Barrier(n_threads + 1)

    def user(n: int) -> None:
        start.wait()
        stop = time.monotonic() + duration
        made = 0
        while time.monotonic() < stop:
            session(n)
            made += 1
        counts[n] = made

    users = [threading.Thread(target=user, args=(n,)) for n in range(n_threads)]
    for t in users:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in users:
        t.join()
    elapsed = time.monotonic() - t0
    rss_end = _rss_mb()
    print("LOADED", flush=True)  # the parent notes what the backend has received so far
    sessions = sum(counts)
    out: dict[str, Any] = {"elapsed": elapsed, "sessions": sessions, "rss_end_mb": rss_end}
    if side == "sdk":
        import sdk

        flushed = sdk.flush(30.0 if case != "hanging" else 1.0)
        out.update(flushed=flushed, stats=sdk.stats()._asdict())
    else:
        flushed = processor.force_flush(30_000 if case != "hanging" else 1_000)
        out.update(flushed=flushed, ended=sessions * SPANS_PER_SESSION, exported=exported[0])
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)
    if side == "raw":
        import os

        os._exit(0)  # the reference's shutdown would wait for the hanging request: not measured here


# ---------------------------------------------------------------------------------------------
# The parent


def _run_child(
    side: str, case: str, endpoint: str, threads: int, seconds: float, cwd: Path, receiver: Any = None
) -> dict[str, Any]:
    """Run one child; `receiver`'s span count is noted when the child's load ends (``received_at_end``)."""
    stderr = (cwd.parent / f"{cwd.name}.stderr").open("w+", encoding="utf-8")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, side, case, endpoint, str(threads), str(seconds)],
            cwd=cwd,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,  # a file: a chatty child never blocks on a full pipe
            text=True,
        )
        assert proc.stdout is not None
        at_end = None
        lines = []
        for line in proc.stdout:
            if line.startswith("LOADED"):
                at_end = receiver.span_count if receiver is not None else None
            elif line.startswith("{"):
                lines.append(line)
        proc.wait(timeout=seconds + 300)
        stderr.seek(0)
        errors = [line for line in stderr.read().splitlines() if line.strip()]
    finally:
        stderr.close()
        Path(stderr.name).unlink(missing_ok=True)
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sustained child ({side} {case}) failed:\n" + "\n".join(errors[-40:]))
    data: dict[str, Any] = json.loads(lines[-1])
    data["stderr"] = errors
    data["received_at_end"] = at_end
    return data


def _stored_sessions(folder: Path) -> int | None:
    path = folder / ".sessiontrace" / "sessions.db"
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])


def run(settings: Settings) -> list[Result]:
    threads = QUICK_THREADS if settings.quick else THREADS
    seconds = QUICK_SECONDS if settings.quick else SECONDS
    module = _load_receiver_module()
    receivers = {case: _receiver(module) for case in ("fast", "slow", "hanging")}
    for receiver in receivers.values():
        receiver.start()
    receivers["slow"].slow(SLOW_SECONDS)
    receivers["hanging"].hang()
    results = []
    try:
        for case in CASES:
            rows: dict[str, dict[str, Any]] = {}
            for side in ("sdk", "raw"):
                receiver = receivers.get(case)
                folder = Path(tempfile.mkdtemp(prefix=f"sessiontrace-bench-sustained-{side}-{case}-"))
                try:
                    before = receiver.span_count if receiver is not None else 0
                    url = receiver.url if receiver is not None else "-"
                    data = _run_child(side, case, url, threads, seconds, folder, receiver)
                    if receiver is not None:
                        data["received"] = receiver.span_count - before
                        data["received_later"] = receiver.span_count - data["received_at_end"]
                    else:
                        data["received"] = data["received_later"] = None
                    if side == "sdk":
                        data["stored"] = _stored_sessions(folder)
                        if case in ("slow", "hanging"):  # the backend answers at once; a next process
                            assert receiver is not None
                            receiver.release()
                            receiver.slow(0)
                            got = receiver.span_count
                            after = _run_child("sdk", "deliver", receiver.url, 0, 0, folder)
                            data["delivered_by_next"] = receiver.span_count - got
                            data["next_stats"] = after["stats"]
                            if case == "hanging":
                                receiver.hang()
                            else:
                                receiver.slow(SLOW_SECONDS)
                    rows[side] = data
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            results.append(_result(case, rows, threads, seconds))
    finally:
        for receiver in receivers.values():
            receiver.stop()
    return results


def _result(case: str, rows: dict[str, dict[str, Any]], threads: int, seconds: float) -> Result:
    sdk_row, raw_row = rows["sdk"], rows["raw"]
    stats = dict.fromkeys(("spans_dropped_queue_full", "store_spilled", "store_dropped"), 0)
    stats.update(sdk_row["stats"])  # (an SDK older than these counters reports them as 0)
    sdk_spans = stats["spans_ended"]
    raw_spans = raw_row["ended"]
    raw_dropped = raw_spans - raw_row["exported"]
    titles = {
        "file": "sustained load, local OTLP-JSON file",
        "fast": "sustained load, OTLP backend fast",
        "slow": "sustained load, OTLP backend 200 ms per request",
        "hanging": "sustained load, OTLP backend hanging",
    }
    later = sdk_row["received_later"]  # after the load ended, by the process that made them
    notes = [
        f"SDK: {sdk_row['sessions'] / sdk_row['elapsed']:,.0f} sessions/s, "
        f"{sdk_spans / sdk_row['elapsed']:,.0f} spans/s ended; dropped {stats['spans_dropped']:,} "
        f"(queue full {stats['spans_dropped_queue_full']:,}, spool full {stats['spool_dropped']:,}); "
        f"spilled to disk {stats['spans_spooled']:,}; exported {stats['spans_exported']:,}"
        + (f"; the receiver got {sdk_row['received']:,}" if sdk_row["received"] is not None else ""),
        f"raw OpenTelemetry: {raw_row['sessions'] / raw_row['elapsed']:,.0f} sessions/s, "
        f"{raw_spans / raw_row['elapsed']:,.0f} spans/s ended; dropped {raw_dropped:,} "
        f"({100 * raw_dropped / max(raw_spans, 1):.1f}%); exported {raw_row['exported']:,}",
        f"SDK session records in the store: {sdk_row.get('stored')} of {sdk_row['sessions']:,} sessions "
        f"started (store_spilled {stats['store_spilled']:,}, store_dropped {stats['store_dropped']:,})",
        f"RSS at the end of the load / peak: SDK {sdk_row['rss_end_mb']:.0f} / {sdk_row['rss_peak_mb']:.0f} MB, "
        f"raw {raw_row['rss_end_mb']:.0f} / {raw_row['rss_peak_mb']:.0f} MB",
    ]
    if later is not None:
        notes.append(f"spans the backend got after the load ended, from the same process: {later:,}")
    next_process = sdk_row.get("delivered_by_next")
    if next_process is not None:
        left = sdk_spans - stats["spans_exported"] - stats["spans_dropped"]
        notes.append(
            f"the SDK process exited with about {left:,} spans not yet sent; a next process started in the "
            f"same folder, the backend answering at once, delivered {next_process:,}"
        )
    notes.append(f"{threads} threads x {seconds:g} s of short sessions (a session and 2 child spans)")
    for side in ("sdk", "raw"):
        errors = rows[side]["stderr"]
        if errors:
            notes.append(f"{side} stderr ({len(errors)} lines): " + "; ".join(e[:160] for e in errors[:2]))
    return Result(
        name=f"{NAME}_{case}",
        title=titles[case],
        sdk_label="sdk.init() defaults (SQLite store on, console summary off), per span ended under load",
        sdk=[sdk_row["elapsed"] / max(sdk_spans, 1)],
        ref_label="raw OpenTelemetry TracerProvider + BatchSpanProcessor, per span ended under load",
        ref=[raw_row["elapsed"] / max(raw_spans, 1)],
        informational=True,
        notes=notes,
        checks={
            "sdk spans ended = exported + dropped + still spooled": (
                f"{sdk_spans:,} = {stats['spans_exported']:,} + {stats['spans_dropped']:,} + "
                f"{sdk_spans - stats['spans_exported'] - stats['spans_dropped']:,}"
            ),
            "sdk internal_errors": stats["internal_errors"],
        },
        checks_ok=stats["internal_errors"] == 0,
    )
