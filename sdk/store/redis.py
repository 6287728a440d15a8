"""The session store for many processes and hosts: Redis (``redis://`` and ``rediss://`` URLs).

Layout, under a key prefix (``sessiontrace`` unless the URL says ``?prefix=NAME``):

- ``PREFIX:session:ID``: the record as JSON (`sdk.store.dumps`), with a TTL of `expiry` seconds
  that every write refreshes (no TTL when `expiry` is None);
- ``PREFIX:sessions``: a sorted set of session ids scored by last activity, the index `list()`
  and `purge_expired()` walk. An id whose record key has expired is removed from it when a
  `list()` or `purge_expired()` comes across it.

Every read-modify-write (resume, update) is optimistic: ``WATCH`` the record keys, read, merge
with the shared rules in `sdk.store`, then ``MULTI``/``EXEC``, again if another client changed a
watched key in between. So two processes on two hosts resuming one session at the same moment
both land in one record, with two segments.

Connections time out fast (1 s to connect, 1 s per reply, one retry; ``socket_timeout`` and
``socket_connect_timeout`` in the URL's query change that), so a Redis that is down or hung
costs the background writer a moment, never the program. Every failure is a `StoreError`.
The ``redis`` package (the ``sessiontrace[redis]`` extra) is imported when a store is made.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sdk.display import mask_url
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

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

T = TypeVar("T")

DEFAULT_PREFIX = "sessiontrace"
CONNECT_TIMEOUT = 1.0
"""Seconds to wait for a connection (``socket_connect_timeout`` in the URL overrides it)."""
SOCKET_TIMEOUT = 1.0
"""Seconds to wait for a reply (``socket_timeout`` in the URL overrides it)."""
MAX_ATTEMPTS = 100
"""Optimistic transactions tried this many times before giving up (only under heavy contention)."""
BATCH = 200
"""Records read and written per round trip by `update`, `list` and `purge_expired`."""

# Removes the given ids from the index when their record key no longer exists (it expired).
# KEYS: index, record key of each id; ARGV: the ids.
_DROP_MISSING = """
local removed = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], id)
  end
end
return removed
"""

# Deletes the records (and index entries) of the given ids still last active before the cutoff.
# KEYS: index, record key of each id; ARGV: cutoff, then the ids.
_PURGE = """
local removed = 0
local cutoff = tonumber(ARGV[1])
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < cutoff then
    redis.call('DEL', KEYS[i])
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


class RedisStore(SessionStore):
    """Records in Redis at `url` (``redis://[user:password@]host[:port][/db][?prefix=NAME]``).

    ``rediss://`` connects with TLS (``ssl_ca_certs=PATH``, ``ssl_cert_reqs=none`` and redis-py's
    other ``ssl_*`` options go in the query); ``unix:///path/redis.sock`` uses a Unix socket.
    Nothing is connected until the first operation. `expiry`: seconds after the last activity
    that a record is kept (its keys' TTL); None keeps records until deleted.
    """

    def __init__(self, url: str, *, expiry: float | None = 24 * 3600.0) -> None:
        self.expiry = expiry
        self.url = url
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for name, value in query if name == "prefix"]
        self.prefix = prefixes[-1] if prefixes and prefixes[-1] else DEFAULT_PREFIX
        self._description = mask_url(url)
        self._password = parts.password or ""
        # The URL as redis-py reads it: without ?prefix= (rebuilt by hand, as urlunsplit would
        # turn unix:///path into unix:/path).
        rest = urllib.parse.urlencode([(n, v) for n, v in query if n != "prefix"])
        connect_url = url.split("?", 1)[0] + (f"?{rest}" if rest else "")
        self.index_key = f"{self.prefix}:sessions"
        self._lock = threading.Lock()
        self._client: Redis | None = None
        self._connect_url = connect_url
        self._scripts: dict[str, Any] = {}
        self._client_for_scripts: Redis | None = None

    @property
    def description(self) -> str:
        """The URL with its password masked."""
        return self._description

    def key(self, session_id: str) -> str:
        """The Redis key holding the record of `session_id`."""
        return f"{self.prefix}:session:{session_id}"

    # -- connection -------------------------------------------------------------------------------

    def _redis(self) -> Redis:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._require_package()
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                try:
                    # The pool notices a fork (it checks the pid) and opens new connections in the child.
                    self._client = redis.Redis.from_url(
                        self._connect_url,
                        socket_connect_timeout=CONNECT_TIMEOUT,
                        socket_timeout=SOCKET_TIMEOUT,
                        retry=Retry(NoBackoff(), 1),
                        health_check_interval=0,
                    )
                except (ValueError, TypeError) as exc:
                    raise StoreError(f"{self.description}: {exc}") from exc
            return self._client

    def _require_package(self) -> None:
        try:
            import redis  # noqa: F401 - only whether it imports
        except ImportError as exc:
            raise StoreError(
                f"{self.description}: the redis package is not installed (pip install 'sessiontrace[redis]')"
            ) from exc

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Every failure as a StoreError naming the store (never with its password)."""
        self._require_package()
        from redis.exceptions import RedisError

        try:
            yield
        except StoreError:
            raise
        except (RedisError, OSError) as exc:
            message = str(exc)
            if len(self._password) >= 3:
                message = message.replace(self._password, "***")
            raise StoreError(f"{self.description}: {type(exc).__name__}: {message}") from exc

    def _script(self, name: str, source: str) -> Any:
        client = self._redis()
        if self._client_for_scripts is not client:
            self._scripts = {}
            self._client_for_scripts = client
        if name not in self._scripts:
            self._scripts[name] = client.register_script(source)
        return self._scripts[name]

    def _transaction(self, keys: Sequence[str], body: Callable[[Pipeline], T]) -> T:
        """Run `body` (reads, then ``pipe.multi()`` and writes) with `keys` watched, until it commits."""
        with self._errors(), self._redis().pipeline(transaction=True) as pipe:
            from redis.exceptions import WatchError

            for attempt in range(MAX_ATTEMPTS):
                try:
                    if keys:
                        pipe.watch(*keys)  # type: ignore[no-untyped-call]  # redis-py leaves watch() unannotated
                    result = body(pipe)
                    pipe.execute()
                    return result
                except WatchError:
                    # Another client wrote a watched key (execute() has reset the pipeline): read
                    # again, after a short random pause so that competing clients spread out.
                    time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise StoreError(f"{self.description}: gave up after {MAX_ATTEMPTS} conflicting writes")

    def _queue_write(self, pipe: Pipeline, record: SessionRecord) -> None:
        """Queue the writes that store `record` (inside MULTI): the value with its TTL, the index."""
        if self.expiry is None:
            pipe.set(self.key(record.id), dumps(record))
        else:
            pipe.set(self.key(record.id), dumps(record), px=max(int(self.expiry * 1000), 1))
        pipe.zadd(self.index_key, {record.id: record.last_activity})

    def _decode(self, session_id: str, raw: Any) -> SessionRecord | None:
        if raw is None:
            return None
        try:
            return loads(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self.description}: the record of {session_id!r} is unreadable ({exc})"
            ) from exc

    # -- SessionStore -----------------------------------------------------------------------------

    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord:
        key = self.key(record.id)

        def body(pipe: Pipeline) -> SessionRecord:
            existing = self._decode(record.id, pipe.get(key)) if resume else None
            if existing is not None and not is_expired(existing, self.expiry, STATE.clock.time()):
                stored = append_segment(existing, record)
            else:
                stored = record
            pipe.multi()
            self._queue_write(pipe, stored)
            return stored

        return self._transaction([key] if resume else [], body)

    def update(self, updates: Sequence[SegmentUpdate]) -> None:
        ids = list(dict.fromkeys(u.session_id for u in updates))
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            wanted = set(chunk)
            self._update_chunk(chunk, [u for u in updates if u.session_id in wanted])

    def _update_chunk(self, ids: list[str], updates: list[SegmentUpdate]) -> None:
        keys = [self.key(i) for i in ids]

        def body(pipe: Pipeline) -> None:
            raws = pipe.mget(keys)
            records: dict[str, SessionRecord] = {}
            for session_id, raw in zip(ids, raws, strict=True):
                found = self._decode(session_id, raw)
                if found is not None:
                    records[session_id] = found
            changed: dict[str, SessionRecord] = {}
            for update in updates:
                current = records.get(update.session_id)
                if current is None:
                    continue  # unknown (or expired and gone): ignored
                merged = apply_update(current, update)
                if merged is not current:
                    records[update.session_id] = changed[update.session_id] = merged
            pipe.multi()
            for merged in changed.values():
                self._queue_write(pipe, merged)

        self._transaction(keys, body)

    def modify(
        self, session_id: str, change: Callable[[SessionRecord], SessionRecord]
    ) -> SessionRecord | None:
        key = self.key(session_id)

        def body(pipe: Pipeline) -> SessionRecord | None:
            record = self._decode(session_id, pipe.get(key))
            pipe.multi()
            if record is None or is_expired(record, self.expiry, STATE.clock.time()):
                return None
            changed = change(record)
            self._queue_write(pipe, changed)
            return changed

        return self._transaction([key], body)

    def _fetch(self, session_id: str) -> SessionRecord | None:
        with self._errors():
            raw = self._redis().get(self.key(session_id))
        return self._decode(session_id, raw)

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
        floor = since
        if self.expiry is not None:
            floor = max(floor if floor is not None else float("-inf"), now - self.expiry)
        low: float | str = "-inf" if floor is None else floor
        found: list[SessionRecord] = []
        seen: set[str] = set()
        with self._errors():
            client = self._redis()
            offset = 0
            while limit is None or len(found) < limit:
                page = client.zrevrangebyscore(self.index_key, "+inf", low, start=offset, num=BATCH)
                if not page:
                    break
                offset += len(page)
                ids = [m.decode() if isinstance(m, bytes) else str(m) for m in page]
                raws = client.mget([self.key(i) for i in ids])
                missing = []
                for session_id, raw in zip(ids, raws, strict=True):
                    record = self._decode(session_id, raw)
                    if record is None:
                        missing.append(session_id)
                    elif session_id in seen:
                        continue  # moved down the index by a concurrent write: listed already
                    else:
                        seen.add(session_id)
                        if not is_expired(record, self.expiry, now) and matches(
                            record, state=state, user_id=user_id, tag=tag, since=since
                        ):
                            found.append(record)
                if missing:
                    dropped = self._script("drop_missing", _DROP_MISSING)(
                        keys=[self.index_key, *(self.key(i) for i in missing)], args=missing
                    )
                    offset -= int(dropped)  # the next page starts that many entries earlier
                if len(page) < BATCH:
                    break
        found.sort(key=lambda r: -r.last_activity)
        return found[:limit] if limit is not None else found

    def purge_expired(self, now: float | None = None) -> int:
        if self.expiry is None:
            return 0
        cutoff = (STATE.clock.time() if now is None else now) - self.expiry
        removed = 0
        with self._errors():
            client = self._redis()
            purge = self._script("purge", _PURGE)
            while True:
                # Always the first page: the script removes every entry of it still in the range
                # (one refreshed meanwhile has left the range by itself).
                page = client.zrangebyscore(self.index_key, "-inf", f"({cutoff!r}", start=0, num=BATCH)
                if not page:
                    break
                ids = [m.decode() if isinstance(m, bytes) else str(m) for m in page]
                keys = [self.index_key, *(self.key(i) for i in ids)]
                removed += int(purge(keys=keys, args=[repr(cutoff), *ids]))
                if len(page) < BATCH:
                    break
        return removed

    def delete(self, session_id: str) -> bool:
        """Remove a record and its index entry; True if the record existed."""
        with self._errors():
            pipe = self._redis().pipeline(transaction=True)
            pipe.delete(self.key(session_id))
            pipe.zrem(self.index_key, session_id)
            deleted, _ = pipe.execute()
        return int(deleted) > 0

    def ttl(self, session_id: str) -> float | None:
        """Seconds until the record's key expires (None: no TTL or no such key). For tests and tools."""
        with self._errors():
            left = int(self._redis().pttl(self.key(session_id)))
        return left / 1000 if left >= 0 else None

    def after_fork(self) -> None:
        """In a forked child: forget the parent's client and lock (its sockets are left to the parent)."""
        self._lock = threading.Lock()
        self._client = None
        self._client_for_scripts = None
        self._scripts = {}

    def close(self) -> None:
        """Close the connection pool (a later operation opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a pool whose server is gone: nothing left to release
                client.close()


__all__ = ["DEFAULT_PREFIX", "RedisStore"]
