"""The default session store: one SQLite file, safe for several processes on one host.

Each record is one row (the record as JSON, plus the columns that `list()` filters on). Every
change is a read-modify-write inside ``BEGIN IMMEDIATE``, which SQLite serialises across
processes, so two processes resuming one session at once both land in one record. Transactions
are short (at most CHUNK records), so readers (the CLI) and other processes wait milliseconds.
"""

from __future__ import annotations

import functools
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sdk.datadir import ensure_data_dir, forget_ready, make_private_file
from sdk.state import STATE
from sdk.store import (
    SegmentUpdate,
    SessionRecord,
    SessionStore,
    StoreError,
    append_segment,
    apply_update,
    dumps,
    is_expired,
    loads,
    matches,
)

if TYPE_CHECKING:  # sqlite3 is imported on first use: init() does not pay for it
    import sqlite3

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    user_id TEXT,
    last_activity REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (last_activity);
"""

_UPSERT = "INSERT OR REPLACE INTO sessions (id, state, user_id, last_activity, record) VALUES (?, ?, ?, ?, ?)"

ROWS_PER_STATEMENT = 199
"""Rows one INSERT writes (5 values each: under SQLite's oldest limit of 999 variables). Each
statement step releases the GIL, and a thread that releases it waits up to the switch interval
(5 ms) to get it back from a busy thread: row by row, the writer could not keep up with a program
that starts sessions in a loop."""

BUSY_TIMEOUT_MS = 15_000  # eight busy processes on two loaded cores can keep one out for seconds
CHUNK = 1_000  # records per transaction


class SQLiteStore(SessionStore):
    """Records in a SQLite file (`path`); the folder is created on first use.

    `data_dir`: when the file lives in the SDK's data folder, that folder (it gets its
    ``.gitignore`` when created). The file is opened on first use, never by `init()`.
    """

    def __init__(
        self, path: Path, *, expiry: float | None = 24 * 3600.0, data_dir: Path | None = None
    ) -> None:
        self.path = Path(path)
        self.expiry = expiry
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._ready = False
        self._file_id: tuple[int, int] | None = None
        """(device, inode) of the file when it was last checked (`_ready`)."""
        # A fork waits for a transaction in progress (no SQLite state crosses a fork).
        STATE.at_fork(
            self,
            before=self._hold_for_fork,
            after_in_parent=self._release_after_fork,
            after_in_child=self.after_fork,
        )

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    # -- connection -------------------------------------------------------------------------------
    #
    # A connection is opened for each operation and closed after it, under `_lock`, which is also
    # held across fork(): a forked child inherits no open connection and no SQLite lock state
    # (SQLite forbids using either after a fork). Operations come in batches, so the cost is small
    # (measured with `python -m benchmarks.store_writer`: a connection kept between batches saved
    # no measurable CPU per record). A file deleted or replaced since it was checked (one stat()
    # per operation) is checked again: created private, given its schema, a symbolic link in the
    # data folder refused.
    # The file uses SQLite's default rollback journal: with connections that come and go, WAL mode
    # would rebuild its index at every first connection, and SQLite does not wait (busy handler)
    # for that recovery, so concurrent processes would see "database is locked".

    def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `operation` in a transaction (``BEGIN IMMEDIATE`` when it writes), retrying while another
        process holds the file, for up to BUSY_TIMEOUT_MS."""
        import sqlite3

        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.002
        while True:
            try:
                with self._lock:
                    return self._once(operation, write)
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + delay > deadline:
                    raise StoreError(f"{self.description}: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{self.description}: {exc}") from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.1)

    def _once(self, operation: Callable[[sqlite3.Connection], T], write: bool) -> T:
        import sqlite3

        if self._ready and self._file_id != _file_id(self.path):
            self._ready = False
            if self._data_dir is not None:
                forget_ready(self._data_dir)
        if not self._ready:
            if self._data_dir is not None:
                ensure_data_dir(self._data_dir)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._data_dir is not None and os.path.islink(self.path):
                raise StoreError(
                    f"{self.description}: the file is a symbolic link; refused (never one in the data folder)"
                )
            # Created 0600 before SQLite opens it: SQLite gives its -journal and -wal files the
            # database file's mode.
            make_private_file(self.path, follow_symlinks=self._data_dir is None)
        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._ready:
                conn.executescript(_SCHEMA)
                self._file_id = _file_id(self.path)
                self._ready = True
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = operation(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        finally:
            conn.close()

    @staticmethod
    def _write(conn: sqlite3.Connection, record: SessionRecord) -> None:
        conn.execute(_UPSERT, (record.id, record.state, record.user_id, record.last_activity, dumps(record)))

    @staticmethod
    def _load(conn: sqlite3.Connection, session_id: str) -> SessionRecord | None:
        row = conn.execute("SELECT record FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else loads(row[0])

    # -- SessionStore -----------------------------------------------------------------------------

    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord:
        def claim(conn: sqlite3.Connection) -> SessionRecord:
            existing = self._load(conn, record.id) if resume else None
            if existing is not None and not is_expired(existing, self.expiry, STATE.clock.time()):
                stored = append_segment(existing, record)
            else:
                stored = record
            self._write(conn, stored)
            return stored

        return self._run(claim, write=True)

    # Large batches go in several transactions, so that other processes (and a fork()) never wait
    # long for the file.

    def put(self, records: Sequence[SessionRecord]) -> None:
        for start in range(0, len(records), CHUNK):
            rows = [
                (r.id, r.state, r.user_id, r.last_activity, dumps(r)) for r in records[start : start + CHUNK]
            ]
            self._run(functools.partial(_insert_rows, rows), write=True)
            time.sleep(0)  # let a thread waiting for the lock (a fork()) take it between chunks

    def update(self, updates: Sequence[SegmentUpdate]) -> None:
        def apply(chunk: Sequence[SegmentUpdate], conn: sqlite3.Connection) -> None:
            records = _load_many(conn, {u.session_id for u in chunk})
            changed: dict[str, SessionRecord] = {}
            for update in chunk:
                record = records.get(update.session_id)
                if record is not None:
                    updated = apply_update(record, update)
                    if updated is not record:
                        records[update.session_id] = changed[update.session_id] = updated
            rows = [(r.id, r.state, r.user_id, r.last_activity, dumps(r)) for r in changed.values()]
            _insert_rows(rows, conn)

        for start in range(0, len(updates), CHUNK):
            self._run(functools.partial(apply, updates[start : start + CHUNK]), write=True)
            time.sleep(0)

    def modify(
        self, session_id: str, change: Callable[[SessionRecord], SessionRecord]
    ) -> SessionRecord | None:
        def apply(conn: sqlite3.Connection) -> SessionRecord | None:
            record = self._load(conn, session_id)
            if record is None or is_expired(record, self.expiry, STATE.clock.time()):
                return None
            changed = change(record)
            self._write(conn, changed)
            return changed

        return self._run(apply, write=True)

    def _fetch(self, session_id: str) -> SessionRecord | None:
        return self._run(lambda conn: self._load(conn, session_id), write=False)

    def list(
        self,
        *,
        state: str | None = None,
        user_id: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[SessionRecord]:
        now = STATE.clock.time()
        clauses = ["1 = 1"]
        params: list[object] = []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        floor = since
        if self.expiry is not None:
            floor = max(floor or 0.0, now - self.expiry)
        if floor is not None:
            clauses.append("last_activity >= ?")
            params.append(floor)
        sql = f"SELECT record FROM sessions WHERE {' AND '.join(clauses)} ORDER BY last_activity DESC"
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall(), write=False)
        found = []
        for (text,) in rows:
            record = loads(text)
            if matches(record, state=state, user_id=user_id, tag=tag, since=since):
                found.append(record)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def purge_expired(self, now: float | None = None) -> int:
        if self.expiry is None:
            return 0
        cutoff = (STATE.clock.time() if now is None else now) - self.expiry
        return int(
            self._run(
                lambda conn: conn.execute("DELETE FROM sessions WHERE last_activity < ?", (cutoff,)).rowcount,
                write=True,
            )
        )

    def delete(self, session_id: str) -> bool:
        deleted = self._run(
            lambda conn: conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount, write=True
        )
        return int(deleted) > 0

    def _hold_for_fork(self) -> None:
        self._lock.acquire()

    def _release_after_fork(self) -> None:
        self._lock.release()

    def after_fork(self) -> None:
        self._lock = threading.Lock()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _insert_rows(rows: list[tuple[str, str, str | None, float, str]], conn: sqlite3.Connection) -> None:
    """Write `rows` (id, state, user id, last activity, record) in a few multi-row statements."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        values = ",".join(("(?, ?, ?, ?, ?)",) * len(part))
        conn.execute(_UPSERT.removesuffix("(?, ?, ?, ?, ?)") + values, [v for row in part for v in row])


def _load_many(conn: sqlite3.Connection, ids: set[str]) -> dict[str, SessionRecord]:
    """The stored records of `ids` (those there are), read as one row (see ROWS_PER_STATEMENT)."""
    import sqlite3

    found: dict[str, SessionRecord] = {}
    wanted = list(ids)
    for start in range(0, len(wanted), ROWS_PER_STATEMENT * 5):
        part = wanted[start : start + ROWS_PER_STATEMENT * 5]
        marks = ",".join("?" * len(part))
        try:
            (texts,) = conn.execute(
                f"SELECT json_group_array(record) FROM sessions WHERE id IN ({marks})", part
            ).fetchone()
            rows = json.loads(texts)
        except sqlite3.OperationalError as exc:  # a SQLite built without JSON functions: row by row
            if "json_group_array" not in str(exc):
                raise
            rows = [
                text for (text,) in conn.execute(f"SELECT record FROM sessions WHERE id IN ({marks})", part)
            ]
        for text in rows:
            record = loads(text)
            found[record.id] = record
    return found
