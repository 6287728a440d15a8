"""An in-process session store, for tests and for programs that want resume within one process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from sdk.state import STATE
from sdk.store import (
    SegmentUpdate,
    SessionRecord,
    SessionStore,
    append_segment,
    apply_update,
    is_expired,
    matches,
)


class MemoryStore(SessionStore):
    """Records in a dict, behind a lock. Nothing survives the process."""

    def __init__(self, *, expiry: float | None = 24 * 3600.0) -> None:
        self.expiry = expiry
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}

    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord:
        with self._lock:
            existing = self._records.get(record.id)
            if resume and existing is not None and not is_expired(existing, self.expiry, STATE.clock.time()):
                stored = append_segment(existing, record)
            else:
                stored = record
            self._records[record.id] = stored
            return stored

    def update(self, updates: Sequence[SegmentUpdate]) -> None:
        with self._lock:
            for update in updates:
                record = self._records.get(update.session_id)
                if record is not None:
                    self._records[update.session_id] = apply_update(record, update)

    def _fetch(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._records.get(session_id)

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
        with self._lock:
            records = list(self._records.values())
        found = [
            r
            for r in records
            if not is_expired(r, self.expiry, now)
            and matches(r, state=state, user_id=user_id, tag=tag, since=since)
        ]
        found.sort(key=lambda r: -r.last_activity)
        return found[:limit] if limit is not None else found

    def purge_expired(self, now: float | None = None) -> int:
        now = STATE.clock.time() if now is None else now
        with self._lock:
            expired = [k for k, r in self._records.items() if is_expired(r, self.expiry, now)]
            for key in expired:
                del self._records[key]
        return len(expired)

    def modify(
        self, session_id: str, change: Callable[[SessionRecord], SessionRecord]
    ) -> SessionRecord | None:
        with self._lock:
            record = self._records.get(session_id)
            if record is None or is_expired(record, self.expiry, STATE.clock.time()):
                return None
            self._records[session_id] = changed = change(record)
            return changed

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._records.pop(session_id, None) is not None
