"""The SessionStore contract, run against every implementation: memory, a real SQLite file, a real redis-server."""

from __future__ import annotations

import json
import math
import secrets
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, requires_redis_server

from sdk.store import (
    RUNNING,
    Score,
    Segment,
    SegmentUpdate,
    SessionRecord,
    SessionStore,
    StoreError,
    Usage,
    add_score,
    dumps,
    loads,
    open_store,
)
from sdk.store.memory import MemoryStore
from sdk.store.redis import RedisStore
from sdk.store.sqlite import SQLiteStore

HOUR = 3600.0

MakeStore = Callable[..., SessionStore]


REDIS = pytest.param("redis", marks=requires_redis_server)


def _factory(request, tmp_path: Path) -> Iterator[MakeStore]:
    made: list[SessionStore] = []
    kind = request.param
    server: RedisServer | None = None
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()

    def make(expiry: float | None = HOUR) -> SessionStore:
        store: SessionStore
        if kind == "memory":
            store = MemoryStore(expiry=expiry)
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "store" / "sessions.db", expiry=expiry)
        else:
            assert server is not None
            store = RedisStore(server.url, expiry=expiry)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture(params=["memory", "sqlite", REDIS])
def make_store(request, tmp_path) -> Iterator[MakeStore]:
    """Makes stores of one kind (several calls: several clients of one SQLite file or one Redis)."""
    yield from _factory(request, tmp_path)


@pytest.fixture(params=["sqlite", REDIS])
def make_shared_store(request, tmp_path) -> Iterator[MakeStore]:
    """`make_store` for the stores that several processes share (not the memory store)."""
    yield from _factory(request, tmp_path)


@pytest.fixture
def store(make_store) -> SessionStore:
    """A store of the parametrized kind, with a one-hour expiry."""
    return make_store()


def span_id() -> str:
    return secrets.token_hex(8)


def new_record(
    session_id: str = "s-1",
    *,
    name: str = "chat",
    user_id: str | None = "u-1",
    tags: tuple[str, ...] = ("prod",),
    at: float | None = None,
    owner: str = "host-a:100",
) -> SessionRecord:
    """A record as a process writes it when a session starts: one running segment, numbered 1."""
    now = time.time() if at is None else at
    return SessionRecord(
        id=session_id,
        name=name,
        trace_id=secrets.token_hex(16),
        user_id=user_id,
        tags=tags,
        segments=(Segment(span_id(), 1, owner, now, now),),
    )


def activity(record: SessionRecord, at: float, *, segment: int = -1, **changes: object) -> SegmentUpdate:
    """An activity write (or, with `ended=`, an end) for one of `record`'s segments."""
    values: dict[str, object] = {
        "session_id": record.id,
        "span_id": record.segments[segment].span_id,
        "last_activity": at,
        "usage": Usage(spans=1),
    }
    values.update(changes)
    return SegmentUpdate(**values)


# -- begin_segment ---------------------------------------------------------------------------------


def test_begin_new_record_is_stored_as_given(store):
    """begin_segment(resume=True) for an unknown id stores the record as given and returns it."""
    record = new_record()
    assert store.begin_segment(record, resume=True) == record
    assert store.get(record.id) == record


def test_resume_appends_a_segment_to_the_stored_record(store):
    """Resuming an existing id appends the new segment numbered 2 and keeps what identifies the session: its trace id, name and user; tags only grow."""
    first = store.begin_segment(new_record(tags=("prod", "eu")), resume=True)
    second = new_record(name="chat-2", user_id="u-other", tags=("eu", "beta"), owner="host-b:7")
    stored = store.begin_segment(second, resume=True)
    assert stored.trace_id == first.trace_id != second.trace_id
    assert [s.number for s in stored.segments] == [1, 2]
    assert stored.segments[0] == first.segments[0]
    assert stored.segments[1] == second.segments[0]._replace(number=2)
    assert stored.span_ids == (first.segments[0].span_id, second.segments[0].span_id)
    assert stored.name == "chat", "a resume never renames the session"
    assert stored.user_id == "u-1", "a resume never changes whose session it is"
    assert stored.tags == ("prod", "eu", "beta")
    assert store.get(first.id) == stored
    third = store.begin_segment(new_record(), resume=True)
    assert [s.number for s in third.segments] == [1, 2, 3]
    assert third.trace_id == first.trace_id


def test_resume_of_an_expired_record_starts_a_new_one(make_store):
    """A record last active longer than `expiry` ago is not resumed: the new record replaces it."""
    store = make_store(expiry=60.0)
    old = new_record(at=time.time() - 120)
    store.begin_segment(old, resume=True)
    fresh = new_record()
    assert store.begin_segment(fresh, resume=True) == fresh
    assert store.get(old.id) == fresh


def test_begin_without_resume_replaces_the_record(store):
    """begin_segment(resume=False) replaces whatever record had the id."""
    store.begin_segment(new_record(), resume=True)
    store.begin_segment(new_record(), resume=True)
    replacement = new_record(name="other", tags=())
    assert store.begin_segment(replacement, resume=False) == replacement
    assert store.get(replacement.id) == replacement


def test_running_state_and_totals_come_from_the_segments(store):
    """A record's state is its latest segment's; its usage is summed over segments; started is the first's."""
    t0 = time.time() - 100
    first = store.begin_segment(new_record(at=t0), resume=True)
    store.update(
        [activity(first, t0 + 10, usage=Usage(3, 1, 10, 20, 0.5, 0), state="success", ended=t0 + 10)]
    )
    stored = store.begin_segment(new_record(at=t0 + 50), resume=True)
    store.update([activity(stored, t0 + 60, usage=Usage(2, 1, 5, 5, 0.25, 1))])
    got = store.get(first.id)
    assert got is not None
    assert got.state == RUNNING
    assert got.ended is None
    assert got.segments[0].state == "success"
    assert got.usage == Usage(5, 2, 15, 25, 0.75, 1)
    assert got.started == t0
    assert got.last_activity == t0 + 60


# -- update ----------------------------------------------------------------------------------------


def test_update_sets_counters_state_and_identity(store):
    """An update sets the segment's counters, state, reason and end; it never changes the session's name or user, and tags only grow."""
    record = store.begin_segment(new_record(), resume=True)
    now = record.started + 5
    store.update([activity(record, now, usage=Usage(4, 2, 100, 50, 0.0123, 1))])
    got = store.get(record.id)
    assert got is not None
    assert got.latest.usage == Usage(4, 2, 100, 50, 0.0123, 1)
    assert got.last_activity == now
    assert (got.name, got.user_id, got.tags) == ("chat", "u-1", ("prod",)), "not given: unchanged"
    store.update(
        [
            activity(
                record,
                now + 1,
                state="fail",
                reason="ValueError: bad",
                ended=now + 1,
                name="renamed",
                user_id="u-2",
                tags=("x",),
            )
        ]
    )
    got = store.get(record.id)
    assert got is not None
    assert (got.state, got.reason, got.ended) == ("fail", "ValueError: bad", now + 1)
    assert (got.name, got.user_id, got.tags) == ("chat", "u-1", ("prod", "x"))


def test_activity_only_moves_forward(store):
    """An update with an older activity time keeps the newer one (its counters still apply)."""
    record = store.begin_segment(new_record(), resume=True)
    store.update([activity(record, record.started + 20, usage=Usage(spans=5))])
    store.update([activity(record, record.started + 10, usage=Usage(spans=6))])
    got = store.get(record.id)
    assert got is not None
    assert got.last_activity == record.started + 20
    assert got.latest.usage.spans == 6


def test_a_late_activity_write_does_not_reopen_an_ended_segment(store):
    """An activity write arriving after the segment's end leaves it ended, with the end's state and counters."""
    record = store.begin_segment(new_record(), resume=True)
    t = record.started
    store.update([activity(record, t + 5, usage=Usage(spans=9), state="success", ended=t + 5)])
    store.update([activity(record, t + 7, usage=Usage(spans=3))])
    got = store.get(record.id)
    assert got is not None
    assert (got.state, got.ended, got.latest.usage.spans) == ("success", t + 5, 9)
    assert got.last_activity == t + 7


def test_updates_for_unknown_sessions_or_segments_are_ignored(store):
    """Updates naming an unknown session or segment change nothing and create nothing."""
    record = store.begin_segment(new_record(), resume=True)
    ghost = new_record("ghost")
    store.update(
        [activity(ghost, time.time()), activity(record, time.time() + 5)._replace(span_id=span_id())]
    )
    assert store.get("ghost") is None
    assert store.get(record.id) == record
    store.update([])


def test_one_batch_updates_several_sessions(store):
    """One update() call applies each update to its own session, in order."""
    a = store.begin_segment(new_record("a"), resume=True)
    b = store.begin_segment(new_record("b"), resume=True)
    t = time.time()
    store.update(
        [
            activity(a, t + 1, usage=Usage(spans=1)),
            activity(b, t + 2, usage=Usage(spans=2), state="success", ended=t + 2),
            activity(a, t + 3, usage=Usage(spans=3)),
        ]
    )
    got_a, got_b = store.get("a"), store.get("b")
    assert got_a is not None
    assert got_b is not None
    assert (got_a.latest.usage.spans, got_a.last_activity, got_a.state) == (3, t + 3, RUNNING)
    assert (got_b.latest.usage.spans, got_b.state) == (2, "success")


# -- get / list ------------------------------------------------------------------------------------


def test_get_unknown_is_none(store):
    """get() of an id never stored is None."""
    assert store.get("nope") is None


@pytest.fixture
def populated(store) -> dict[str, SessionRecord]:
    """Five sessions with different users, tags, states and activity times (a: oldest, e: newest)."""
    t = time.time() - 1000
    specs = {
        "a": ("u-1", ("prod",), "success"),
        "b": ("u-2", ("prod", "eu"), RUNNING),
        "c": ("u-1", ("dev",), "fail"),
        "d": (None, (), RUNNING),
        "e": ("u-2", ("eu",), "indeterminate"),
    }
    records = {}
    for offset, (sid, (user, tags, state)) in enumerate(specs.items()):
        at = t + 100 * offset
        record = store.begin_segment(new_record(sid, user_id=user, tags=tags, at=at), resume=False)
        ended = at + 10 if state != RUNNING else None
        store.update([activity(record, at + 10, state=state, ended=ended)])
        records[sid] = store.get(sid)
    return records


def ids(records: list[SessionRecord]) -> list[str]:
    return [r.id for r in records]


def test_list_is_most_recently_active_first(store, populated):
    """list() with no filter returns every record, most recently active first."""
    assert ids(store.list()) == ["e", "d", "c", "b", "a"]
    assert store.list()[0] == populated["e"]


def test_list_filters(store, populated):
    """list() filters by state, user, tag and activity since a time, combined, and honours limit."""
    assert ids(store.list(state=RUNNING)) == ["d", "b"]
    assert ids(store.list(state="fail")) == ["c"]
    assert ids(store.list(user_id="u-2")) == ["e", "b"]
    assert ids(store.list(tag="eu")) == ["e", "b"]
    assert ids(store.list(tag="prod", user_id="u-1")) == ["a"]
    assert ids(store.list(since=populated["c"].last_activity)) == ["e", "d", "c"]
    assert ids(store.list(since=populated["c"].last_activity, state=RUNNING)) == ["d"]
    assert ids(store.list(limit=2)) == ["e", "d"]
    assert ids(store.list(state=RUNNING, limit=1)) == ["d"]
    assert store.list(user_id="nobody") == []
    assert store.list(tag="prod", state="indeterminate") == []


def test_list_limit_beyond_one_page(store):
    """A filtered list over more records than one read batch finds them all, in order."""
    t = time.time() - 1000
    for n in range(450):
        store.begin_segment(
            new_record(f"s{n:03d}", user_id="even" if n % 2 == 0 else "odd", at=t + n), resume=False
        )
    evens = store.list(user_id="even")
    assert ids(evens) == [f"s{n:03d}" for n in range(448, -1, -2)]
    assert ids(store.list(user_id="odd", limit=3)) == ["s449", "s447", "s445"]
    assert len(store.list()) == 450


# -- expiry ----------------------------------------------------------------------------------------


def test_expired_records_are_hidden_and_purged(make_store):
    """Records last active more than `expiry` ago are hidden by get() and list(), and purge_expired() removes them."""
    store = make_store(expiry=600.0)
    now = time.time()
    old = store.begin_segment(new_record("old", at=now - 900), resume=False)
    recent = store.begin_segment(new_record("recent", at=now - 300), resume=False)
    assert store.get("old") is None
    assert store.get("recent") == recent
    assert ids(store.list()) == ["recent"]
    assert ids(store.list(since=0)) == ["recent"]
    assert store.purge_expired() == 1
    assert store.purge_expired() == 0
    assert store.get("old") is None
    store.update([activity(old, now)])  # the record is gone: the update is ignored
    assert store.get("old") is None
    assert store.purge_expired(now=now + 600) == 1, "purge_expired(now=) judges expiry at that time"
    assert store.list() == []


def test_activity_keeps_a_record_from_expiring(make_store):
    """An activity write moves a record's expiry forward."""
    store = make_store(expiry=600.0)
    now = time.time()
    record = store.begin_segment(new_record(at=now - 500), resume=False)
    store.update([activity(record, now)])
    assert store.purge_expired(now=now + 300) == 0
    assert store.get(record.id) is not None


def test_no_expiry_keeps_records(make_store):
    """With expiry None, records are never hidden or purged."""
    store = make_store(expiry=None)
    record = store.begin_segment(new_record(at=1_000_000.0), resume=False)
    assert store.get(record.id) == record
    assert ids(store.list()) == [record.id]
    assert store.purge_expired(now=time.time() + 10 * 365 * 86400) == 0
    assert store.begin_segment(new_record(), resume=True).trace_id == record.trace_id


# -- delete, round trip, several clients --------------------------------------------------------


def test_delete(store):
    """delete() removes a record (True), and is False for an unknown id."""
    record = store.begin_segment(new_record(), resume=True)
    assert store.delete(record.id) is True
    assert store.get(record.id) is None
    assert store.list() == []
    assert store.delete(record.id) is False


def test_every_field_survives_the_store(store):
    """A record with every field set comes back from the store equal, and the JSON form round-trips."""
    t = 1_700_000_000.123456
    record = SessionRecord(
        id='chat-7f3a/ünïcode "quoted"',
        name="refund flow",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        user_id="u-42",
        tags=("prod", "eu-west", "ä"),
        segments=(
            Segment(
                "b7ad6b7169203331",
                1,
                "host-a:12",
                t,
                t + 1.5,
                "fail",
                "Boom: x",
                t + 2,
                Usage(3, 1, 7, 9, 0.0042, 1),
            ),
            Segment("00f067aa0ba902b7", 2, "host-b:34", t + 10, t + 11),
        ),
    )
    assert loads(dumps(record)) == record
    assert SessionRecord.from_json(record.to_json()) == record
    store.expiry = None
    store.begin_segment(record, resume=False)
    assert store.get(record.id) == record


def test_two_clients_share_records(make_shared_store):
    """Two store objects on one SQLite file or one Redis server see each other's writes."""
    a, b = make_shared_store(), make_shared_store()
    record = a.begin_segment(new_record(), resume=True)
    assert b.get(record.id) == record
    resumed = b.begin_segment(new_record(), resume=True)
    assert a.get(record.id) == resumed
    assert len(resumed.segments) == 2


def test_open_store_specs(tmp_path):
    """open_store maps the session_store setting to a store: sqlite in the data folder, sqlite:PATH, memory, none, a Redis URL."""
    data_dir = tmp_path / "data"
    default = open_store("sqlite", data_dir, 60.0)
    assert isinstance(default, SQLiteStore)
    assert default.path == data_dir / "sessions.db"
    assert default.expiry == 60.0
    assert not data_dir.exists(), "nothing is created until the first operation"
    explicit = open_store(f"sqlite:{tmp_path / 'x.db'}", data_dir, None)
    assert isinstance(explicit, SQLiteStore)
    assert explicit.path == tmp_path / "x.db"
    assert isinstance(open_store("memory", data_dir, 1.0), MemoryStore)
    assert open_store("none", data_dir, 1.0) is None
    redis_store = open_store("redis://:pw@127.0.0.1:1/2?prefix=app", data_dir, 30.0)
    assert isinstance(redis_store, RedisStore)
    assert (redis_store.expiry, redis_store.prefix) == (30.0, "app")
    assert redis_store.description == "redis://:***@127.0.0.1:1/2?prefix=app"
    mine = MemoryStore()
    assert open_store(mine, data_dir, 1.0) is mine


# -- Redis specifics -------------------------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server) -> str:
    redis_server.flush()
    return redis_server.url


@requires_redis_server
def test_redis_keys_carry_the_expiry_as_ttl(redis_server, redis_url):
    """Every write sets the record key's TTL to the expiry; without expiry the key has none."""
    store = RedisStore(redis_url, expiry=600.0)
    record = store.begin_segment(new_record(), resume=True)
    ttl = store.ttl(record.id)
    assert ttl is not None
    assert 590 < ttl <= 600
    assert redis_server.command(f"PEXPIRE {store.key(record.id)} 5000") == [b":1"]
    store.update([activity(record, time.time())])
    ttl = store.ttl(record.id)
    assert ttl is not None
    assert ttl > 590, "an activity write refreshes the TTL"
    forever = RedisStore(redis_url + "?prefix=forever", expiry=None)
    forever.begin_segment(new_record("f"), resume=True)
    assert forever.ttl("f") is None
    assert redis_server.command(f"TTL {forever.key('f')}") == [b":-1"]


@requires_redis_server
def test_redis_index_drops_records_whose_key_expired(redis_server, redis_url):
    """A record whose key Redis expired disappears from list(), and its index entry is cleaned up."""
    store = RedisStore(redis_url, expiry=600.0)
    kept = store.begin_segment(new_record("kept"), resume=True)
    store.begin_segment(new_record("gone"), resume=True)
    assert redis_server.command(f"DEL {store.key('gone')}") == [b":1"]  # as when its TTL runs out
    assert redis_server.command(f"ZCARD {store.index_key}") == [b":2"]
    assert store.list() == [kept]
    assert redis_server.command(f"ZCARD {store.index_key}") == [b":1"]
    assert store.get("gone") is None


@requires_redis_server
def test_redis_prefix_separates_stores(redis_server, redis_url):
    """Stores with different ?prefix= on one server never see each other's records; keys are PREFIX:session:ID."""
    a = RedisStore(redis_url + "?prefix=app-a", expiry=HOUR)
    b = RedisStore(redis_url + "?prefix=app-b", expiry=HOUR)
    default = RedisStore(redis_url, expiry=HOUR)
    a.begin_segment(new_record("same"), resume=True)
    assert b.get("same") is None
    assert default.get("same") is None
    assert b.list() == []
    assert a.key("same") == "app-a:session:same"
    assert default.key("x") == "sessiontrace:session:x"
    assert redis_server.command("EXISTS app-a:session:same") == [b":1"]
    assert redis_server.command("EXISTS app-a:sessions") == [b":1"]


@requires_redis_server
def test_redis_tls_and_password(tmp_path):
    """rediss:// with a CA file and a password works; the description masks the password; a wrong one is a StoreError."""
    with RedisServer(tmp_path / "tls", tls=True, password="s3cret-pw") as server:
        store = RedisStore(server.url, expiry=HOUR)
        record = store.begin_segment(new_record(), resume=True)
        assert store.get(record.id) == record
        assert "s3cret-pw" not in store.description
        assert store.description.startswith("rediss://:***@127.0.0.1:")
        wrong = RedisStore(server.url.replace("s3cret-pw", "nope"), expiry=HOUR)
        with pytest.raises(StoreError, match="AuthenticationError"):
            wrong.get(record.id)
        untrusted = RedisStore(server.url.split("?")[0], expiry=HOUR)
        with pytest.raises(StoreError, match="certificate verify failed") as caught:
            untrusted.get(record.id)
        assert "s3cret-pw" not in str(caught.value)
        store.close()


@requires_redis_server
def test_redis_unreadable_record_is_a_store_error(redis_server, redis_url):
    """A record key holding something that is not a record is reported as a StoreError naming the id."""
    store = RedisStore(redis_url, expiry=HOUR)
    redis_server.command(f"SET {store.key('junk')} not-json")
    with pytest.raises(StoreError, match="'junk'"):
        store.get("junk")


def test_sqlite_file_lives_where_it_is_told(tmp_path):
    """The SQLite store creates its folder and file on first use (a real file, readable by a second client)."""
    path = tmp_path / "deep" / "er" / "sessions.db"
    store = SQLiteStore(path, expiry=HOUR)
    assert not path.exists()
    record = store.begin_segment(new_record(), resume=True)
    assert path.is_file()
    other = SQLiteStore(Path(str(path)), expiry=HOUR)
    assert other.get(record.id) == record
    store.close()
    other.close()


def test_a_record_is_stored_as_the_json_the_standard_encoder_writes():
    """`dumps` (the C encoder built once) writes what json.dumps writes: escapes, non-ASCII text,
    None, special floats; `loads` reads it back."""
    record = SessionRecord(
        's-\u00e9"quote"\n',
        "naïve \u2603 \\ name",
        "0af7651916cd43dd8448eb211c80319c",
        None,
        ("t\x00", "日本"),
        (
            Segment(
                "b7ad6b7169203331",
                1,
                "h:1",
                1.5,
                float("inf"),
                "running",
                None,
                None,
                Usage(1, 2, 3, 4, float("nan"), 0),
            ),
        ),
        (Score("rating", 1e-7, "c", "human", 2.25),),
    )
    text = dumps(record)
    assert text == json.dumps(record, separators=(",", ":"))
    again = loads(text)
    assert (again.id, again.tags, again.scores) == (record.id, record.tags, record.scores)
    assert math.isnan(again.segments[0].usage.cost_usd)


def test_sqlite_store_follows_its_file_when_it_is_deleted_or_replaced(tmp_path):
    """The store keeps its connection between writes; a file deleted or replaced meanwhile is
    noticed: the next write goes to the file at the path (made private again), where readers look."""
    path = tmp_path / "store" / "sessions.db"
    store = SQLiteStore(path, expiry=HOUR)
    first = store.begin_segment(new_record("first"), resume=False)
    path.unlink()
    second = store.begin_segment(new_record("second"), resume=False)
    assert path.stat().st_mode & 0o777 == 0o600
    reader = SQLiteStore(Path(str(path)), expiry=HOUR)
    assert reader.get(second.id) == second
    assert reader.get(first.id) is None  # it went with the deleted file
    reader.close()
    path.unlink()
    replacement = SQLiteStore(path, expiry=HOUR)  # another program puts a new store there
    third = replacement.begin_segment(new_record("third"), resume=False)
    replacement.close()
    fourth = store.begin_segment(new_record("fourth"), resume=False)
    assert {r.id for r in store.list()} == {third.id, fourth.id}
    store.close()


def test_sqlite_write_is_retried_when_a_reader_holds_up_its_commit(tmp_path):
    """A reader holding the file past SQLite's 1 s wait makes the COMMIT busy: the write is retried
    until it lands, the connection never stays inside the failed transaction, and others can read."""
    path = tmp_path / "store" / "sessions.db"
    store = SQLiteStore(path, expiry=HOUR)
    store.begin_segment(new_record("before"), resume=False)
    reading = threading.Event()

    def reader() -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sessions").fetchall()
        reading.set()
        time.sleep(1.5)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    assert reading.wait(10)
    written = store.begin_segment(new_record("during"), resume=False)
    thread.join()
    assert store.get("during") == written
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # no lock left behind by the store between its operations
    other.execute("COMMIT")
    other.close()
    assert {r.id for r in store.list()} == {"before", "during"}
    store.close()


def test_sqlite_store_makes_its_data_folder_again_when_it_was_removed(tmp_path):
    """The data folder removed while the process runs (``rm -rf .sessiontrace``): the next write
    makes it again — folder 0700 with its .gitignore, file 0600 — and lands there."""
    data_dir = tmp_path / ".sessiontrace"
    store = SQLiteStore(data_dir / "sessions.db", expiry=HOUR, data_dir=data_dir)
    store.begin_segment(new_record("first"), resume=False)
    shutil.rmtree(data_dir)
    second = store.begin_segment(new_record("second"), resume=False)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / ".gitignore").is_file()
    assert (data_dir / "sessions.db").stat().st_mode & 0o777 == 0o600
    assert store.list() == [second]
    store.close()


def test_sqlite_store_in_the_data_folder_refuses_a_symlinked_file(tmp_path):
    """A store file in the data folder that is (or is replaced by) a symbolic link is refused with a
    StoreError naming it; the link's target is neither written nor changed."""
    data_dir = tmp_path / ".sessiontrace"
    path = data_dir / "sessions.db"
    victim = tmp_path / "elsewhere.db"
    victim.write_bytes(b"")
    victim.chmod(0o644)
    data_dir.mkdir(mode=0o700)
    path.symlink_to(victim)
    store = SQLiteStore(path, expiry=HOUR, data_dir=data_dir)
    with pytest.raises(StoreError, match="symbolic link"):
        store.begin_segment(new_record(), resume=False)
    path.unlink()
    store.begin_segment(new_record("real"), resume=False)  # a real file: works, private
    assert path.stat().st_mode & 0o777 == 0o600
    path.unlink()
    path.symlink_to(victim)  # replaced while the store's connection is open
    with pytest.raises(StoreError, match="symbolic link"):
        store.begin_segment(new_record("after"), resume=False)
    assert victim.stat().st_size == 0
    assert victim.stat().st_mode & 0o777 == 0o644
    store.close()


@requires_redis_server
def test_redis_over_a_unix_socket(tmp_path):
    """A unix:// URL (with ?db= and ?prefix=) reaches Redis through its Unix socket."""
    sock = tmp_path / "redis.sock"
    with RedisServer(
        tmp_path / "unix", extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700")
    ) as server:
        store = RedisStore(f"unix://{sock}?db=1&prefix=local", expiry=HOUR)
        record = store.begin_segment(new_record(), resume=True)
        assert store.get(record.id) == record
        assert server.command("SELECT 1", "EXISTS local:session:s-1") == [b"+OK", b":1"]
        store.close()


def test_purge_more_than_one_batch(make_store):
    """purge_expired() removes every expired record however many there are, and keeps the others."""
    store = make_store(expiry=600.0)
    now = time.time()
    for n in range(450):
        store.begin_segment(new_record(f"old-{n}", at=now - 700 - n), resume=False)
    store.begin_segment(new_record("fresh", at=now), resume=False)
    assert store.purge_expired() == 450
    assert ids(store.list(since=0)) == ["fresh"]


def test_redis_without_the_package_is_a_store_error(monkeypatch):
    """Without the redis package, a Redis store is still made; using it raises StoreError saying what to install."""
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    store = RedisStore("redis://127.0.0.1:6379/0", expiry=HOUR)
    for call in (lambda: store.get("x"), lambda: store.begin_segment(new_record(), resume=True)):
        with pytest.raises(StoreError, match=r"pip install 'sessiontrace\[redis\]'"):
            call()


# -- scores ----------------------------------------------------------------------------------------


def test_add_score_appends_to_the_record_and_keeps_everything_else(store):
    """add_score keeps the score in the record, after those given before; the rest of the record is unchanged."""
    record = store.begin_segment(new_record(), resume=True)
    first = Score("helpfulness", 0.9, "thanks", "user", time.time())
    second = Score("resolved", True, None, "evaluator", time.time())
    assert add_score(store, record.id, first) == record._replace(scores=(first,))
    add_score(store, record.id, second)
    got = store.get(record.id)
    assert got is not None
    assert got.scores == (first, second)
    assert got._replace(scores=()) == record


def test_add_score_to_an_unknown_or_expired_session_changes_nothing(make_store):
    """A score for an id the store does not know, or whose record expired, is refused (None) and stores nothing."""
    store = make_store(expiry=60.0)
    assert add_score(store, "nobody", Score("x", 1)) is None
    assert store.get("nobody") is None
    old = store.begin_segment(new_record("old", at=time.time() - 120), resume=True)
    assert add_score(store, old.id, Score("x", 1)) is None


def test_records_written_before_scores_read_with_none():
    """A record stored by an earlier version (six fields, no scores) reads back with no scores."""
    record = new_record()
    old_text = dumps(record).rsplit(",[]]", 1)[0] + "]"
    assert loads(old_text) == record
    assert (
        loads(dumps(record._replace(scores=(Score("a", "good", None, "human", 1.0),)))).scores[0].value
        == "good"
    )
