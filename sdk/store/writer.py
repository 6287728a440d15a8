"""Writes session records in the background, so the span path never waits for the store.

Starts and ends are queued (a deque append and, when the writer sleeps, one wake-up) and written
within moments; a running session's activity and counters are written at most every
`interval` seconds. A store that fails is warned about once, counted in `sdk.stats()`, and
retried with what is pending (the latest state of each segment, bounded); sessions keep working.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from sdk.guard import internal_error, warn_once
from sdk.stats import COUNTERS
from sdk.store import SegmentUpdate, SessionRecord, SessionStore

MAX_PENDING = 10_000
MAX_QUEUED = 20_000  # starts and ends not yet taken by the writer thread (each holds its session)
BATCH_DELAY = 0.05
RETRY_AFTER = 5.0


class Stored(Protocol):
    """What the writer needs of a session (`sdk.session.Session` provides it)."""

    id: str
    last_active_ns: int

    def _store_record(self) -> SessionRecord: ...

    def _store_update(self) -> SegmentUpdate: ...


class StoreWriter:
    """One background thread per store: queued starts and ends, periodic activity."""

    def __init__(self, store: SessionStore, interval: float) -> None:
        self.store = store
        self.interval = interval
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
        if len(self._ops) >= MAX_QUEUED:
            self._overflow()
            return
        self._ops.append(("resumed" if stored else "start", session))
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start_thread()

    def on_session_end(self, session: Stored) -> None:
        if len(self._ops) >= MAX_QUEUED:
            self._overflow()
            return
        self._ops.append(("end", session))
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start_thread()

    def _overflow(self) -> None:
        COUNTERS.store_errors.add()
        warn_once(
            "session-store-behind",
            "sessiontrace: the session store (%s) is more than %d session starts/ends behind; "
            "further ones are not stored until it catches up (counted in sdk.stats().store_errors)",
            self.store.description,
            MAX_QUEUED,
        )

    def call(self, operation: Callable[[], T]) -> T | None:
        """Run a synchronous store operation (a resume's claim, a lookup) for the application.

        On failure: warned once, counted, None. After a failure, calls return None at once for
        RETRY_AFTER seconds instead of waiting on a store that is down each time (the
        background writer keeps retrying)."""
        if time.monotonic() < self._down_until:
            COUNTERS.store_errors.add()
            return None
        try:
            result = operation()
        except Exception as exc:
            self._down_until = time.monotonic() + RETRY_AFTER
            store_failed(self.store, exc)
            return None
        self._down_until = 0.0
        return result

    # -- control --------------------------------------------------------------------------------

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
        """In a forked child: the parent's thread and queue are not ours."""
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
                    self._queue_update(session._store_update())
        for session in unwritten.values():
            # Built now, so a session that already ended is written once, with its end.
            record = session._store_record()
            self._pending_starts[record.id] = record

    def _collect_activity(self) -> None:
        for key, (session, written) in list(self._running.items()):
            active = session.last_active_ns
            if active != written:
                self._running[key] = (session, active)
                self._queue_update(session._store_update())

    def _queue_update(self, update: SegmentUpdate) -> None:
        self._pending[(update.session_id, update.span_id)] = update
        if len(self._pending) > MAX_PENDING:
            # The store has been failing for a while: keep the newest, count what is given up.
            self._pending.pop(next(iter(self._pending)))
            COUNTERS.store_errors.add()

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
            self._down_until = time.monotonic() + RETRY_AFTER
            store_failed(self.store, exc)
            if len(self._pending_starts) > MAX_PENDING:
                self._pending_starts.pop(next(iter(self._pending_starts)))


def store_failed(store: SessionStore, exc: BaseException) -> None:
    """Count a failed store operation and warn once: sessions go on without persistence."""
    COUNTERS.store_errors.add()
    warn_once(
        "session-store-down",
        "sessiontrace: the session store (%s) failed: %s. Sessions go on without persistence "
        "(retried; further failures are only counted in sdk.stats().store_errors)",
        store.description,
        f"{type(exc).__name__}: {exc}",
    )


T = TypeVar("T")
