"""``python -m benchmarks.store_writer [--sessions N] [--prefill ROWS]``: the session store writer's CPU.

Not an A/B benchmark (raw OpenTelemetry has no store): a measurement of what the default SQLite
store's background writer spends per session, in its own thread's CPU time
(``time.thread_time()``), split into building the records (`StoreWriter._drain`), the whole write
(`StoreWriter._write`: encoding, the transaction) and, inside it, SQLite's insert. The program's
thread runs ``with sdk.session("s"): pass`` flat out meanwhile, as `session_start_end` does (both
threads share the GIL, so each part costs more than it would alone). `--prefill` first fills the
store with that many rows, as a day of sessions would (the store keeps 24 hours by default).
"""

from __future__ import annotations

import argparse
import collections
import functools
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import pipelines


def timed(counter: collections.Counter[str], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, adding the calling thread's CPU seconds in it to `counter[key]`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            counter[key] += time.thread_time() - start

    return wrapper


def prefill(path: Path, rows: int) -> None:
    """Add `rows` ended sessions' records to the SQLite store at `path` (untimed)."""
    from sdk.store import Segment, SessionRecord
    from sdk.store.sqlite import SQLiteStore

    store = SQLiteStore(path, expiry=None)
    now = time.time()
    for start in range(0, rows, 10_000):
        store.put(
            [
                SessionRecord(
                    secrets.token_hex(16),
                    "prefilled",
                    secrets.token_hex(16),
                    segments=(Segment(secrets.token_hex(8), 1, "host:1", now, now, "success", None, now),),
                )
                for _ in range(min(10_000, rows - start))
            ]
        )
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_writer", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions to run (default 10,000)")
    parser.add_argument("--prefill", type=int, default=0, help="rows put in the store first (default 0)")
    args = parser.parse_args(argv)

    from sdk.store import sqlite, writer

    p = pipelines()
    if args.prefill:
        prefill(Path(p.data_dir) / "sessions.db", args.prefill)
    parts = ("build the records", "write (encode + transaction)", "  of which SQLite's insert")
    spent: collections.Counter[str] = collections.Counter(dict.fromkeys(parts, 0.0))
    writer.StoreWriter._drain = timed(spent, parts[0], writer.StoreWriter._drain)  # type: ignore[method-assign]
    writer.StoreWriter._write = timed(spent, parts[1], writer.StoreWriter._write)  # type: ignore[method-assign]
    sqlite._insert_rows = timed(spent, parts[2], sqlite._insert_rows)  # type: ignore[assignment]
    import sdk

    session = sdk.session
    for left in range(args.sessions, 0, -2000):
        for _ in range(min(left, 2000)):
            with session("s"):
                pass
        p.flush()
    print(
        f"store writer CPU per session, {args.sessions:,} sessions, store prefilled with {args.prefill:,} rows:"
    )
    for key in parts:
        seconds = spent[key]
        print(f"  {key:<32} {seconds / args.sessions * 1e6:6.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
