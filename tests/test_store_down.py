"""A real redis-server that stops, hangs or fills up under a RedisStore: every failure is a prompt StoreError, and the store recovers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pytest
from redis_server import RedisServer, free_port, requires_redis_server

from sdk.state import STATE
from sdk.store import Segment, SegmentUpdate, SessionRecord, StoreError, Usage
from sdk.store.redis import RedisStore
from sdk.store.writer import StoreWriter

pytestmark = requires_redis_server

HOUR = 3600.0


def record(session_id: str, *, span: str = "a1a1a1a1a1a1a1a1") -> SessionRecord:
    now = time.time()
    return SessionRecord(session_id, "job", "ab" * 16, segments=(Segment(span, 1, "host:1", now, now),))


def every_operation(store: RedisStore) -> dict[str, object]:
    """Call each SessionStore operation once; map its name to what it returned or raised."""
    calls = {
        "begin_segment": lambda: store.begin_segment(record("x"), resume=True),
        "begin_segment(resume=False)": lambda: store.begin_segment(record("x"), resume=False),
        "update": lambda: store.update([SegmentUpdate("x", "a1a1a1a1a1a1a1a1", time.time(), Usage(spans=1))]),
        "get": lambda: store.get("x"),
        "list": lambda: store.list(),
        "purge_expired": lambda: store.purge_expired(),
        "delete": lambda: store.delete("x"),
    }
    outcome: dict[str, object] = {}
    for name, call in calls.items():
        try:
            outcome[name] = call()
        except Exception as exc:
            outcome[name] = exc
    return outcome


def test_stopped_redis_raises_store_error_and_recovers_after_restart(own_redis_server):
    """Redis stopped mid-run: every operation raises StoreError naming the store; restarted on its port: the same store works again."""
    store = RedisStore(own_redis_server.url, expiry=HOUR)
    stored = store.begin_segment(record("before"), resume=True)
    assert store.get("before") == stored

    own_redis_server.stop()
    outcome = every_operation(store)
    for name, result in outcome.items():
        assert isinstance(result, StoreError), f"{name}: {result!r}"
        assert store.description in str(result)
        assert "ConnectionError" in str(result)

    own_redis_server.start()  # same port, empty (no persistence)
    assert store.get("before") is None
    again = store.begin_segment(record("after"), resume=True)
    assert store.get("after") == again
    assert store.list() == [again]
    store.close()


def test_hung_redis_raises_store_error_after_the_socket_timeout(own_redis_server):
    """A Redis that accepts connections but never answers makes operations fail with StoreError (timeout), not hang."""
    store = RedisStore(own_redis_server.url, expiry=HOUR)
    store.begin_segment(record("x"), resume=True)
    own_redis_server.pause()
    try:
        with pytest.raises(StoreError, match="Timeout"):
            store.get("x")
        with pytest.raises(StoreError, match="Timeout"):
            store.update([SegmentUpdate("x", "a1a1a1a1a1a1a1a1", time.time(), Usage(spans=2))])
    finally:
        own_redis_server.resume()
    got = store.get("x")
    assert got is not None
    assert got.trace_id == "ab" * 16
    store.close()


def test_unreachable_redis_fails_on_use_not_on_construction():
    """A store whose Redis is not there is made without error; its first operation raises StoreError."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", expiry=HOUR)
    with pytest.raises(StoreError, match="Connection refused"):
        store.list()
    store.close()


def test_full_redis_raises_store_error(tmp_path):
    """A Redis at its maxmemory (noeviction) refuses writes: a StoreError saying so; reads still work."""
    with RedisServer(
        tmp_path / "full", extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    ) as full:
        store = RedisStore(full.url, expiry=HOUR)
        big = "t" * 20_000
        failure: StoreError | None = None
        for n in range(10_000):
            try:
                store.begin_segment(
                    SessionRecord(f"s{n}", "big", "ab" * 16, tags=(big,), segments=record("x").segments),
                    resume=False,
                )
            except StoreError as exc:
                failure = exc
                break
        assert failure is not None
        assert "OutOfMemoryError" in str(failure)
        assert "maxmemory" in str(failure)
        assert store.get("s0") is not None
        store.close()


@dataclass
class StubSession:
    """What the store writer needs of a session: a record to start with, an update to end with."""

    id: str
    span_id: str = "c3c3c3c3c3c3c3c3"
    last_active_ns: int = field(default_factory=time.time_ns)
    state: str = "running"

    def store_record(self) -> SessionRecord:
        return record(self.id, span=self.span_id)

    def store_update(self) -> SegmentUpdate:
        ended = time.time() if self.state != "running" else None
        return SegmentUpdate(
            self.id, self.span_id, time.time(), Usage(spans=3), state=self.state, ended=ended
        )


def test_writer_warns_once_counts_and_catches_up_after_restart(own_redis_server, caplog):
    """The background writer over a stopped Redis: one warning, failures counted, nothing raised; after a restart what was pending is written."""
    store = RedisStore(own_redis_server.url, expiry=HOUR)
    writer = StoreWriter(store, interval=0.05)
    first = StubSession("first")
    writer.on_session_start(first, stored=False)
    assert writer.flush(10) is True
    assert store.get("first") is not None

    own_redis_server.stop()
    with caplog.at_level(logging.WARNING):
        second = StubSession("second", span_id="d4d4d4d4d4d4d4d4")
        writer.on_session_start(second, stored=False)
        writer.flush(10)  # tries, fails, keeps what was refused for later
        first.state = "success"
        writer.on_session_end(first)
        writer.flush(10)
    warnings = [r for r in caplog.records if "session store" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert store.description in warnings[0].getMessage()
    assert STATE.counters.store_errors.value >= 2

    own_redis_server.start()
    assert writer.flush(10) is True
    got_second = store.get("second")
    got_first = store.get("first")
    assert got_second is not None
    assert got_second.span_ids == ("d4d4d4d4d4d4d4d4",)
    assert got_first is None, "the restarted Redis kept nothing, and an end alone does not create a record"
    writer.close(5)
