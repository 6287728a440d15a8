"""Real processes (spawned) writing to one SQLite file or one redis-server at the same moment."""

from __future__ import annotations

import hashlib
import multiprocessing
import secrets
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from redis_server import requires_redis_server

from sdk.store import Segment, SegmentUpdate, SessionRecord, SessionStore, Usage, open_store, owner_id

pytestmark = pytest.mark.subprocess

HOUR = 3600.0
WORKERS = 8
SESSIONS = 200
BATCH = 10
RESUME_ROUNDS = 30
WAIT = 120.0  # a barrier that is not reached in this time means a worker died: fail, do not hang


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=requires_redis_server)])
def spec(request, tmp_path) -> str:
    """A `session_store` setting that several processes can open: a SQLite file, or a Redis URL."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'shared' / 'sessions.db'}"
    server = request.getfixturevalue("redis_server")
    server.flush()
    return str(server.url)


def _open(spec: str) -> SessionStore:
    store = open_store(spec, Path("unused-data-dir"), HOUR)
    assert store is not None
    return store


def _hex(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def expected_record(worker: int, n: int, t0: float, owner: str) -> SessionRecord:
    """What session `n` of `worker` must look like in the store after the worker is done with it."""
    sid = f"w{worker}-s{n:03d}"
    start = t0 + n
    return SessionRecord(
        id=sid,
        name=f"job {worker}/{n}",
        trace_id=_hex(f"trace {sid}", 32),
        user_id=f"user-{worker}",
        tags=(f"w{worker}", "load"),
        segments=(
            Segment(
                span_id=_hex(f"span {sid}", 16),
                number=1,
                owner=owner,
                started=start,
                last_activity=start + 2,
                state="fail" if n % 3 == 0 else "success",
                reason="boom" if n % 3 == 0 else None,
                ended=start + 2,
                usage=Usage(
                    spans=n + 1, llm_calls=worker, input_tokens=10 * n, output_tokens=n, cost_usd=n / 1000
                ),
            ),
        ),
    )


def write_sessions(spec: str, worker: int, t0: float, barrier: Barrier) -> None:
    """A worker process: start SESSIONS sessions, write their activity and ends in batches, as the writer does."""
    store = _open(spec)
    owner = owner_id()
    barrier.wait(WAIT)
    for first in range(0, SESSIONS, BATCH):
        batch = [expected_record(worker, n, t0, owner) for n in range(first, first + BATCH)]
        for final in batch:
            started = final.segments[0]
            begun = SessionRecord(
                final.id,
                final.name,
                final.trace_id,
                final.user_id,
                final.tags,
                (Segment(started.span_id, 1, owner, started.started, started.started),),
            )
            store.begin_segment(begun, resume=False)
        store.update(
            [SegmentUpdate(r.id, r.latest.span_id, r.started + 1, Usage(spans=1), name=r.name) for r in batch]
        )
        store.update(
            [
                SegmentUpdate(
                    r.id,
                    r.latest.span_id,
                    r.last_activity,
                    r.usage,
                    state=r.state,
                    reason=r.reason,
                    ended=r.ended,
                )
                for r in batch
            ]
        )
    store.close()


def _run(target: Any, args_per_process: list[tuple[Any, ...]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for args in args_per_process]
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_eight_processes_writing_two_hundred_sessions_each(spec):
    """8 spawned processes x 200 sessions written at once to one store: every record present, each exactly as written."""
    t0 = time.time() - 1000
    barrier = multiprocessing.get_context("spawn").Barrier(WORKERS)
    _run(write_sessions, [(spec, worker, t0, barrier) for worker in range(WORKERS)])

    store = _open(spec)
    everything = store.list()
    assert len(everything) == WORKERS * SESSIONS
    assert len({r.id for r in everything}) == WORKERS * SESSIONS
    owners = {r.id: r.latest.owner for r in everything}
    assert len(set(owners.values())) == WORKERS, "each worker wrote its own sessions"
    for worker in range(WORKERS):
        for n in range(SESSIONS):
            sid = f"w{worker}-s{n:03d}"
            assert store.get(sid) == expected_record(worker, n, t0, owners[sid])
        assert len(store.list(user_id=f"user-{worker}")) == SESSIONS
    assert len(store.list(state="fail")) == WORKERS * len(range(0, SESSIONS, 3))
    assert len(store.list(tag="load", state="success", limit=7)) == 7
    store.close()


def resume_rounds(spec: str, session_ids: list[str], barrier: Barrier, results: Any) -> None:
    """A worker process: for each id, wait for the other worker, then resume that id at the same moment."""
    store = _open(spec)
    found = []
    for sid in session_ids:
        candidate = SessionRecord(
            id=sid,
            name="race",
            trace_id=secrets.token_hex(16),
            segments=(Segment(secrets.token_hex(8), 1, owner_id(), time.time(), time.time()),),
        )
        barrier.wait(WAIT)
        stored = store.begin_segment(candidate, resume=True)
        mine = stored.segments[-1]
        assert mine.span_id == candidate.segments[0].span_id
        found.append((sid, candidate.trace_id, stored.trace_id, mine.span_id, mine.number))
    store.close()
    results.put(found)


def test_two_processes_resuming_one_id_at_once(spec):
    """Two processes calling begin_segment(resume=True) for one id at the same moment end in one record with both segments and one trace id."""
    store = _open(spec)
    existing = [f"existing-{n}" for n in range(RESUME_ROUNDS // 2)]
    fresh = [f"fresh-{n}" for n in range(RESUME_ROUNDS - len(existing))]
    before = {}
    for sid in existing:
        now = time.time()
        record = SessionRecord(
            sid, "race", secrets.token_hex(16), segments=(Segment(secrets.token_hex(8), 1, "h:1", now, now),)
        )
        before[sid] = store.begin_segment(record, resume=False)
    session_ids = [sid for pair in zip(existing, fresh, strict=True) for sid in pair]

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=resume_rounds, args=(spec, session_ids, barrier, results)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]

    for sid in session_ids:
        record = store.get(sid)
        assert record is not None
        claims = [entry for outcome in outcomes for entry in outcome if entry[0] == sid]
        assert len(claims) == 2
        # Both processes were handed the one stored trace id, and both segments are in the record.
        assert {stored_trace for _, _, stored_trace, _, _ in claims} == {record.trace_id}
        numbers = sorted(number for *_, number in claims)
        if sid in before:
            assert record.trace_id == before[sid].trace_id
            assert numbers == [2, 3]
            assert record.segments[0] == before[sid].segments[0]
        else:
            assert numbers == [1, 2]
            assert record.trace_id in {candidate_trace for _, candidate_trace, *_ in claims}
        assert [s.number for s in record.segments] == list(range(1, len(record.segments) + 1))
        assert {s.span_id: s.number for s in record.segments[-2:]} == {
            span: number for *_, span, number in claims
        }
    store.close()


def write_after_fork(store: SessionStore, session_id: str) -> None:
    """A forked child: drop the parent's connection (as the SDK's fork handler does), then write."""
    store.after_fork()
    now = time.time()
    store.begin_segment(
        SessionRecord(
            session_id,
            "child",
            secrets.token_hex(16),
            segments=(Segment(secrets.token_hex(8), 1, owner_id(), now, now),),
        ),
        resume=False,
    )
    store.close()


@pytest.mark.filterwarnings(r"ignore:.*use of fork\(\) may lead to deadlocks:DeprecationWarning")
def test_a_forked_child_writes_through_its_own_connection(spec):
    """A store used by the parent, then forked: the child writes with a connection of its own, and the parent's keeps working."""
    store = _open(spec)
    now = time.time()
    store.begin_segment(
        SessionRecord(
            "parent",
            "p",
            secrets.token_hex(16),
            segments=(Segment(secrets.token_hex(8), 1, owner_id(), now, now),),
        ),
        resume=False,
    )
    children = [
        multiprocessing.get_context("fork").Process(target=write_after_fork, args=(store, f"child-{n}"))
        for n in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert sorted(r.id for r in store.list()) == ["child-0", "child-1", "child-2", "parent"]
    child_record = store.get("child-0")
    assert child_record is not None
    assert child_record.latest.owner != owner_id()
    store.close()
