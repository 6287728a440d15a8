"""Writes session records in the background, so the session path never waits for the store.

Starts and ends are queued (a deque append and, when the writer sleeps, one wake-up) and written
within moments; a running session's activity and counters are written at most every
`interval` seconds. A store that fails is warned about once, counted in `sdk.stats()`, and
retried with what is pending (the latest state of each segment, bounded); sessions keep working.

**Overload.** The queue holds each session until the writer takes it (measured: ~2.5 KB per queued
start or end; 64 threads of short sessions put the writer 80,000 behind, 250 MB). So past
`MAX_QUEUED` the session's own thread writes its start or end as one line to an overflow file
(``<data_dir>/store-overflow/``, one ``write`` of a few hundred bytes, no fsync) instead of queueing
it, until the writer has caught up with the file; the writer replays the file in order, in bounded
chunks, then deletes it. Memory stays bounded and every session reaches the store
(`sdk.stats().store_spilled`). A file left by a killed process is replayed by the next writer of
the same store. Only past `MAX_OVERFLOW_BYTES` is a record dropped (`store_dropped`, warned about
once a minute with the figure).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sdk.datadir import O_NOFOLLOW, O_NONBLOCK, ensure_data_dir, open_private
from sdk.guard import internal_error, warn_every, warn_once
from sdk.state import STATE
from sdk.store import SegmentUpdate, SessionRecord, SessionStore, Usage, apply_update, dumps, loads

fcntl: Any
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: files of dead processes are not replayed
    fcntl = None

MAX_PENDING = 10_000
MAX_QUEUED = 5_000  # starts and ends not yet taken by the writer thread (each holds its session: ~2.5 KB)
MAX_OVERFLOW_BYTES = 64 * 1024 * 1024
REPLAY_CHUNK = 1_000  # overflow lines the writer applies per write
BATCH_DELAY = 0.05
FINISH_BYTES = 1024 * 1024
"""An overflow file with at most this much left unread is read to its end under its lock."""
RETRY_AFTER = 5.0
OWN_WRITES_TIMEOUT = 2.0
"""Seconds a read of the store waits for this process's queued writes (see `StoreWriter.catch_up`)."""


class Stored(Protocol):
    """What the writer needs of a session (`sdk.session_core.Session` provides it)."""

    id: str
    last_active_ns: int

    def store_record(self) -> SessionRecord: ...

    def store_update(self) -> SegmentUpdate: ...


class StoreWriter:
    """One background thread per store: queued starts and ends, periodic activity."""

    def __init__(self, store: SessionStore, interval: float, overflow_dir: Path | None = None) -> None:
        """`overflow_dir`: the data folder, for the overflow file (None: no overflow, drops past the queue)."""
        self.store = store
        self.interval = interval
        self._overflow = Overflow(overflow_dir, store) if overflow_dir is not None else None
        self._ops: collections.deque[tuple[str, Stored]] = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._closed = False
        self._running: dict[int, tuple[Stored, int]] = {}  # id(session) -> (session, last written activity)
        self._pending_starts: dict[str, SessionRecord] = {}
        self._pending: dict[tuple[str, str], SegmentUpdate] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    # -- called on the session path: cheap ------------------------------------------------------

    def on_session_start(self, session: Stored, *, stored: bool) -> None:
        """A session started (`stored`: its record is in the store already, as after a resume)."""
        overflow = self._overflow
        if overflow is not None and (overflow.active or len(self._ops) >= MAX_QUEUED):
            self._running[id(session)] = (session, session.last_active_ns)
            if not stored:
                self._spill("s", session.store_record())
            return
        if len(self._ops) >= MAX_QUEUED:
            self._drop()
            return
        self._ops.append(("resumed" if stored else "start", session))
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start_thread()

    def on_session_end(self, session: Stored) -> None:
        """A session ended."""
        overflow = self._overflow
        if overflow is not None and (overflow.active or len(self._ops) >= MAX_QUEUED):
            self._running.pop(id(session), None)
            self._spill("e", session.store_update())
            return
        if len(self._ops) >= MAX_QUEUED:
            self._drop()
            return
        self._ops.append(("end", session))
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start_thread()

    def _spill(self, kind: str, item: SessionRecord | SegmentUpdate) -> None:
        """Write one start or end to the overflow file (the session's thread, under overload only)."""
        overflow = self._overflow
        assert overflow is not None
        try:
            written = overflow.append(kind, item)
        except Exception as exc:
            internal_error("session store overflow", exc)
            written = False
        if written:
            STATE.counters.store_spilled.add()
            warn_once(
                "session-store-behind",
                "sessiontrace: the session store (%s) is more than %d session starts/ends behind; "
                "further ones go to an overflow file and reach the store as it catches up (counted "
                "in sdk.stats().store_spilled)",
                self.store.description,
                MAX_QUEUED,
            )
        else:
            self._drop()
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start_thread()

    def _drop(self) -> None:
        STATE.counters.store_errors.add()
        STATE.counters.store_dropped.add()
        warn_every(
            "session-store-dropped",
            60.0,
            1,
            "sessiontrace: the session store (%s) is too far behind and its overflow file is full or "
            "cannot be written; %d session starts/ends were not stored since the last warning "
            "(counted in sdk.stats().store_dropped)",
            self.store.description,
        )

    def call(self, operation: Callable[[], T]) -> T | None:
        """Run a synchronous store operation (a resume's claim, a lookup) for the application.

        On failure: warned once, counted, None. After a failure, calls return None at once for
        RETRY_AFTER seconds instead of waiting on a store that is down each time (the
        background writer keeps retrying)."""
        if STATE.clock.monotonic() < self._down_until:
            STATE.counters.store_errors.add()
            return None
        try:
            result = operation()
        except Exception as exc:
            self._down_until = STATE.clock.monotonic() + RETRY_AFTER
            store_failed(self.store, exc)
            return None
        self._down_until = 0.0
        return result

    # -- control --------------------------------------------------------------------------------

    def catch_up(self) -> bool:
        """Before reading the store: write what this process queued (the sessions it just ended),
        waiting at most OWN_WRITES_TIMEOUT seconds."""
        return self.flush(OWN_WRITES_TIMEOUT)

    def flush(self, timeout: float) -> bool:
        """Write everything queued now; False if that took longer than `timeout`.

        A store that fails is not waited for: what it refused stays pending (retried later)."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        with self._idle:
            self._flush_asked = True
            self._wake.set()
            while self._ops or self._busy or self._flush_asked:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def close(self, timeout: float) -> None:
        """Flush within `timeout`, stop the thread and close the store."""
        self.flush(timeout)
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(max(timeout, 0.0))
        try:
            self.store.close()
        except Exception as exc:
            internal_error("session store close", exc)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread, queue and overflow file are not ours."""
        if self._overflow is not None:
            self._overflow.after_fork()
        self._ops.clear()
        self._running.clear()
        self._pending.clear()
        self._pending_starts.clear()
        self._thread = None
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._busy = False
        self.store.after_fork()

    # -- the writer thread ------------------------------------------------------------------------

    _flush_asked = False

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._loop, name="sessiontrace-store", daemon=True)
            self._thread = thread
        thread.start()

    def _loop(self) -> None:
        try:
            self.store.purge_expired()
        except Exception as exc:
            store_failed(self.store, exc)
        if self._overflow is not None:
            try:
                self._overflow.adopt_leftovers()  # what killed processes could not replay
            except Exception as exc:
                internal_error("session store overflow", exc)
        next_activity = time.monotonic() + self.interval
        while not self._closed:
            if self._wake.wait(max(next_activity - time.monotonic(), 0.0)) and not self._flush_asked:
                # Let starts and ends gather: a session that starts and ends within the window is
                # written once, and while the event stays set the session path never signals.
                time.sleep(BATCH_DELAY)
            self._wake.clear()
            with self._idle:
                self._busy = True
                flushing = self._flush_asked
            try:
                self._drain()
                if flushing or time.monotonic() >= next_activity:
                    self._collect_activity()
                    next_activity = time.monotonic() + self.interval
                self._write()
                while self._replay() and (flushing or not self._ops):
                    self._write()
            except Exception as exc:
                internal_error("session store writer", exc)
            with self._idle:
                self._busy = False
                if flushing:
                    self._flush_asked = False
                self._idle.notify_all()

    def _drain(self) -> None:
        unwritten: dict[int, Stored] = {}  # sessions started in this batch, by id(session)
        while self._ops:
            kind, session = self._ops.popleft()
            if kind == "start":
                unwritten[id(session)] = session
                self._running[id(session)] = (session, session.last_active_ns)
            elif kind == "resumed":
                self._running[id(session)] = (session, session.last_active_ns)
            else:
                self._running.pop(id(session), None)
                if id(session) not in unwritten:
                    self._queue_update(session.store_update())
        for session in unwritten.values():
            # Built now, so a session that already ended is written once, with its end.
            record = session.store_record()
            self._pending_starts[record.id] = record

    def _collect_activity(self) -> None:
        for key, (session, written) in list(self._running.items()):
            if getattr(
                session, "ended", False
            ):  # its end went to the overflow file before its start was taken
                self._running.pop(key, None)
                continue
            active = session.last_active_ns
            if active != written:
                self._running[key] = (session, active)
                self._queue_update(session.store_update())

    def _replay(self) -> bool:
        """Apply the next chunk of the overflow file; False when there is nothing (left) to apply."""
        overflow = self._overflow
        if overflow is None or not (overflow.active or overflow.leftovers):
            return False
        lines = overflow.read(REPLAY_CHUNK)
        for kind, item in lines:
            if kind == "s":
                assert isinstance(item, SessionRecord)
                self._pending_starts[item.id] = item
            else:
                assert isinstance(item, SegmentUpdate)
                self._queue_update(item)
        return bool(lines or overflow.leftovers)

    def _queue_update(self, update: SegmentUpdate) -> None:
        start = self._pending_starts.get(update.session_id)
        if start is not None and start.segments and start.segments[-1].span_id == update.span_id:
            # Its start is not written yet: write the start with this state (one write, never an
            # update of a record the store does not have).
            self._pending_starts[update.session_id] = apply_update(start, update)
            return
        self._pending[(update.session_id, update.span_id)] = update
        if len(self._pending) > MAX_PENDING:
            # The store has been failing for a while: keep the newest, count what is given up.
            self._pending.pop(next(iter(self._pending)))
            STATE.counters.store_errors.add()

    def _write(self) -> None:
        if not self._pending_starts and not self._pending:
            return
        try:
            if self._pending_starts:
                records = list(self._pending_starts.values())
                self.store.put(records)
                for record in records:
                    if self._pending_starts.get(record.id) is record:
                        del self._pending_starts[record.id]
            if self._pending:
                updates = list(self._pending.values())
                self.store.update(updates)
                for update in updates:
                    if self._pending.get((update.session_id, update.span_id)) is update:
                        del self._pending[(update.session_id, update.span_id)]
        except Exception as exc:
            self._down_until = STATE.clock.monotonic() + RETRY_AFTER
            store_failed(self.store, exc)
            if len(self._pending_starts) > MAX_PENDING:
                self._pending_starts.pop(next(iter(self._pending_starts)))


class Overflow:
    """The overflow file of one writer: one line per start (``s<TAB>record``) or end
    (``e<TAB>update``), in the order they happened.

    ``<data_dir>/store-overflow/<store key>-<pid>-<token>.jsonl`` (0600), locked (``flock``) while
    its process lives; deleted once replayed. `active` is True from the first line until the
    writer has read the last one: meanwhile every start and end goes to the file, so the store
    sees them in order.
    """

    def __init__(self, data_dir: Path, store: SessionStore) -> None:
        self.data_dir = data_dir
        # crc32, not hashlib: importing hashlib (OpenSSL) costs init() several milliseconds.
        self.key = f"{zlib.crc32(store.description.encode()):08x}"
        self.active = False
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._read_at = 0
        self.leftovers: list[Path] = []

    def append(self, kind: str, item: SessionRecord | SegmentUpdate) -> bool:
        """Write one line (the calling session's thread); False when the file is full or cannot be written."""
        text = dumps(item) if isinstance(item, SessionRecord) else json.dumps(item, separators=(",", ":"))
        line = f"{kind}\t{text}\n".encode()
        with self._lock:
            if self._size + len(line) > MAX_OVERFLOW_BYTES:
                return False
            try:
                if self._fd is None:
                    self._open()
                fd = self._fd
                assert fd is not None
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, self._size)  # never a partial line
                return False
            self._size += len(line)
            self.active = True
            return True

    def _open(self) -> None:
        folder = ensure_data_dir(self.data_dir, "store-overflow")
        path = folder / f"{self.key}-{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "alive": not adopted by another writer
        self._fd, self._path, self._size, self._read_at = fd, path, 0, 0

    def read(self, limit: int) -> list[tuple[str, SessionRecord | SegmentUpdate]]:
        """The next whole lines (at most `limit`): first those of files killed processes left, then
        this process's. At the end of this process's file it is deleted and `active` turns False
        (under the lock: no line can be written in between)."""
        if self.leftovers:
            return _read_whole(self.leftovers.pop(0))
        with self._lock:
            fd, size, at = self._fd, self._size, self._read_at
            if fd is None or at >= size:
                self._finish()
                return []
            if size - at <= FINISH_BYTES:
                # The rest, and the end of the file, at once: were it read outside the lock, a
                # program that keeps starting sessions would append as fast as the writer reads,
                # and the file would never end.
                tail = os.pread(fd, size - at, at)
                self._finish()
                return [parsed for line in tail.split(b"\n") if line and (parsed := _parse(line)) is not None]
        data = os.pread(fd, min(size - at, 4 * 1024 * 1024), at)
        lines = data.split(b"\n")[:-1][:limit]
        self._read_at = at + sum(len(line) + 1 for line in lines)
        return [parsed for line in lines if (parsed := _parse(line)) is not None]

    def _finish(self) -> None:
        fd, path, self._fd, self._path = self._fd, self._path, None, None
        self.active = False
        self._size = self._read_at = 0
        if fd is not None:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                os.close(fd)

    def adopt_leftovers(self) -> None:
        """Note the files of this store that killed processes left (nobody holds their lock)."""
        if fcntl is None:
            return
        folder = self.data_dir / "store-overflow"
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        for name in names:
            if not (name.startswith(f"{self.key}-") and name.endswith(".jsonl")):
                continue
            path = folder / name
            try:
                fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive
            finally:
                os.close(fd)
            self.leftovers.append(path)

    def after_fork(self) -> None:
        """In a forked child: the parent's file is the parent's."""
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._path = None
        self.active = False
        self._size = self._read_at = 0
        self.leftovers = []


def _read_whole(path: Path) -> list[tuple[str, SessionRecord | SegmentUpdate]]:
    """Every whole line of a file a killed process left, which is then deleted (a torn last line,
    cut by the kill, is left out)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_OVERFLOW_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return [parsed for line in data.split(b"\n")[:-1] if (parsed := _parse(line)) is not None]


def _parse(line: bytes) -> tuple[str, SessionRecord | SegmentUpdate] | None:
    """One overflow line; None for a line that does not decode."""
    kind, _, text = line.partition(b"\t")
    try:
        if kind == b"s":
            return "s", loads(text)
        if kind != b"e":
            return None
        (session_id, span_id, last_activity, usage, state, reason, ended, name, user_id, tags) = json.loads(
            text
        )
        update = SegmentUpdate(
            session_id,
            span_id,
            last_activity,
            Usage(*usage),
            state,
            reason,
            ended,
            name,
            user_id,
            tuple(tags) if tags is not None else None,
        )
    except (ValueError, TypeError):
        return None
    return "e", update


def store_failed(store: SessionStore, exc: BaseException) -> None:
    """Count a failed store operation and warn once: sessions go on without persistence."""
    STATE.counters.store_errors.add()
    warn_once(
        "session-store-down",
        "sessiontrace: the session store (%s) failed: %s. Sessions go on without persistence "
        "(retried; further failures are only counted in sdk.stats().store_errors)",
        store.description,
        f"{type(exc).__name__}: {exc}",
    )


T = TypeVar("T")
