"""Session stores: where session records live so a session can be resumed after a restart.

A record is one session: its id, name, trace id, user, tags, and its **segments** — one per
process lifetime that ran it (the first start, then each resume). State, activity times and
counters are kept per segment and summed into the record, so processes running segments of one
session at the same time never overwrite each other's numbers.

Implementations: `MemoryStore` (tests), `SQLiteStore` (the default: a file under the data
folder, safe for several processes on one host) and `RedisStore` (many processes and hosts).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sdk.state import STATE

RUNNING = "running"


class Usage(NamedTuple):
    """Counters of a segment (or, summed, of a session)."""

    spans: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0

    def plus(self, other: Usage) -> Usage:
        """The two counts added up."""
        return Usage(
            self.spans + other.spans,
            self.llm_calls + other.llm_calls,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            round(self.cost_usd + other.cost_usd, 10),
            self.errors + other.errors,
        )


class Segment(NamedTuple):
    """One run of a session in one process: its root span, owner process, state and counters.

    Times are epoch seconds. `owner` is ``host:pid`` of the process that runs it.
    """

    span_id: str
    number: int
    owner: str
    started: float
    last_activity: float
    state: str = RUNNING
    reason: str | None = None
    ended: float | None = None
    usage: Usage = Usage()


class Score(NamedTuple):
    """A score (feedback, an evaluation) on a session: see `sdk.score`."""

    name: str
    value: float | int | bool | str
    comment: str | None = None
    source: str = "human"
    at: float = 0.0
    """When it was given (epoch seconds)."""


def latest_scores(scores: Iterable[Score]) -> dict[str, float | int | bool | str]:
    """The latest value of each score name, in the order the names were first given."""
    return {score.name: score.value for score in sorted(scores, key=lambda score: score.at)}


def scores_text(scores: Iterable[Score]) -> str:
    """``name=value, ...`` of the latest value of each score name (``-`` for none)."""
    return ", ".join(f"{name}={value}" for name, value in latest_scores(scores).items()) or "-"


class SessionRecord(NamedTuple):
    """A stored session: identity, its segments oldest first, and the scores given to it."""

    id: str
    name: str
    trace_id: str
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()
    scores: tuple[Score, ...] = ()

    @property
    def latest(self) -> Segment:
        """The most recent segment (the one whose state is the session's)."""
        return self.segments[-1]

    @property
    def state(self) -> str:
        """The state of the latest segment: `running`, `success`, `fail` or `indeterminate`."""
        return self.latest.state if self.segments else RUNNING

    @property
    def reason(self) -> str | None:
        return self.latest.reason if self.segments else None

    @property
    def started(self) -> float:
        return self.segments[0].started if self.segments else 0.0

    @property
    def last_activity(self) -> float:
        return max((s.last_activity for s in self.segments), default=0.0)

    @property
    def ended(self) -> float | None:
        """When the latest segment ended (None while it runs)."""
        return self.latest.ended if self.segments else None

    @property
    def usage(self) -> Usage:
        """Counters summed over every segment."""
        total = Usage()
        for segment in self.segments:
            total = total.plus(segment.usage)
        return total

    @property
    def span_ids(self) -> tuple[str, ...]:
        """The root span id of each segment, oldest first."""
        return tuple(s.span_id for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json`` form and the Redis encoding)."""
        return {
            "id": self.id,
            "name": self.name,
            "trace_id": self.trace_id,
            "user_id": self.user_id,
            "tags": list(self.tags),
            "segments": [
                {
                    "span_id": s.span_id,
                    "number": s.number,
                    "owner": s.owner,
                    "started": s.started,
                    "last_activity": s.last_activity,
                    "state": s.state,
                    "reason": s.reason,
                    "ended": s.ended,
                    "usage": s.usage._asdict(),
                }
                for s in self.segments
            ],
            "scores": [score._asdict() for score in self.scores],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        """The inverse of `to_json`."""
        return cls(
            id=data["id"],
            name=data["name"],
            trace_id=data["trace_id"],
            user_id=data.get("user_id"),
            tags=tuple(data.get("tags") or ()),
            segments=tuple(
                Segment(
                    span_id=s["span_id"],
                    number=s["number"],
                    owner=s["owner"],
                    started=s["started"],
                    last_activity=s["last_activity"],
                    state=s["state"],
                    reason=s.get("reason"),
                    ended=s.get("ended"),
                    usage=Usage(**s.get("usage", {})),
                )
                for s in data.get("segments", ())
            ),
            scores=tuple(Score(**score) for score in data.get("scores", ())),
        )


class SegmentUpdate(NamedTuple):
    """What a process writes about a segment it runs: activity, and at the end its state."""

    session_id: str
    span_id: str
    last_activity: float
    usage: Usage
    state: str = RUNNING
    reason: str | None = None
    ended: float | None = None
    name: str | None = None
    user_id: str | None = None
    tags: tuple[str, ...] | None = None


class StoreError(Exception):
    """A store operation failed (the store is down, full or unreadable)."""


class SessionStore(ABC):
    """Where session records are kept. Implementations must be safe for several threads.

    Semantics every implementation follows (tests/test_store_contract.py checks them):

    - `begin_segment(record, resume=True)`: atomically, when a record with this id exists and
      has not expired, append ``record``'s only segment to it (numbered one past the last) and
      return the stored record as it is now — the caller continues *that* record's trace id.
      Otherwise store ``record`` as new (its segment numbered 1) and return it. Two processes
      doing this at once both end up in one record, with two segments.
    - `begin_segment(record, resume=False)`: replace any record with this id by ``record``;
      `put(records)` does that for a batch.
    - `update(updates)`: apply each update to its segment (unknown sessions or segments are
      ignored, and leave the record untouched). Name and user are set only where the record has
      none; tags only grow. Activity times only move forward.
    - `get(id)`: the record, or None when unknown or expired.
    - `list(...)`: records matching every filter given, most recently active first.
    - `purge_expired()`: remove expired records; returns how many.

    `expiry` (seconds after the last activity, None: never) is given at construction.
    Failures raise `StoreError`.
    """

    expiry: float | None = None

    @abstractmethod
    def begin_segment(self, record: SessionRecord, *, resume: bool) -> SessionRecord: ...

    def put(self, records: Sequence[SessionRecord]) -> None:
        """Store new sessions' records as they are, replacing any with the same id (a batch of
        ``begin_segment(record, resume=False)``; implementations may write them at once)."""
        for record in records:
            self.begin_segment(record, resume=False)

    @abstractmethod
    def update(self, updates: Sequence[SegmentUpdate]) -> None: ...

    def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None when unknown or expired."""
        record = self._fetch(session_id)
        if record is None or is_expired(record, self.expiry, STATE.clock.time()):
            return None
        return record

    @abstractmethod
    def _fetch(self, session_id: str) -> SessionRecord | None:
        """The stored record as it is, expired or not (None when unknown)."""

    @abstractmethod
    def list(
        self,
        *,
        state: str | None = None,
        user_id: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[SessionRecord]: ...

    @abstractmethod
    def purge_expired(self, now: float | None = None) -> int: ...

    def delete(self, session_id: str) -> bool:
        """Remove a record; True if it existed."""
        raise NotImplementedError

    def modify(
        self, session_id: str, change: Callable[[SessionRecord], SessionRecord]
    ) -> SessionRecord | None:
        """Atomically replace the record by `change(record)` and return the new one (None when
        unknown or expired). Optional for implementations: without it, scores cannot be kept."""
        raise NotImplementedError(f"{type(self).__name__} cannot change a record in place")

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release connections and files."""

    def after_fork(self) -> None:  # noqa: B027 - optional for implementations
        """In a forked child: drop locks and connections inherited from the parent (never close them)."""

    @property
    def description(self) -> str:
        """How the store is shown by `sdk.config()` and the CLI (never with a password)."""
        return type(self).__name__


def apply_update(record: SessionRecord, update: SegmentUpdate) -> SessionRecord:
    """`record` with `update` applied (the one merge rule, shared by every implementation)."""
    segments = list(record.segments)
    for index, segment in enumerate(segments):
        if segment.span_id == update.span_id:
            if segment.ended is not None and update.ended is None:
                # An activity write that raced the segment's end never reopens it.
                segments[index] = segment._replace(
                    last_activity=max(segment.last_activity, update.last_activity)
                )
            else:
                segments[index] = segment._replace(
                    last_activity=max(segment.last_activity, update.last_activity),
                    usage=update.usage,
                    state=update.state,
                    reason=update.reason,
                    ended=update.ended,
                )
            break
    else:
        return record
    return record._replace(
        segments=tuple(segments),
        name=record.name or update.name or "",
        user_id=record.user_id if record.user_id is not None else update.user_id,
        tags=_merged_tags(record.tags, update.tags or ()),
    )


def add_score(store: SessionStore, session_id: str, score: Score) -> SessionRecord | None:
    """Keep `score` in the session's record (None when the store has no such session)."""
    return store.modify(session_id, lambda record: record._replace(scores=(*record.scores, score)))


def append_segment(existing: SessionRecord, new: SessionRecord) -> SessionRecord:
    """`existing` with `new`'s segment appended, numbered one past the last (resume).

    What identifies the session is kept: its name, trace, user and earlier segments; tags only
    grow. A resume never rewrites who the session belongs to.
    """
    segment = new.segments[0]._replace(number=len(existing.segments) + 1)
    return existing._replace(
        segments=(*existing.segments, segment),
        name=existing.name or new.name,
        user_id=existing.user_id if existing.user_id is not None else new.user_id,
        tags=_merged_tags(existing.tags, new.tags),
    )


def _merged_tags(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    return old if all(tag in old for tag in new) else tuple(dict.fromkeys((*old, *new)))


def is_expired(record: SessionRecord, expiry: float | None, now: float) -> bool:
    """Whether a record was last active longer than `expiry` seconds before `now`."""
    return expiry is not None and now - record.last_activity > expiry


def matches(
    record: SessionRecord,
    *,
    state: str | None = None,
    user_id: str | None = None,
    tag: str | None = None,
    since: float | None = None,
) -> bool:
    """The `list()` filters, shared by implementations that filter in Python."""
    return (
        (state is None or record.state == state)
        and (user_id is None or record.user_id == user_id)
        and (tag is None or tag in record.tags)
        and (since is None or record.last_activity >= since)
    )


def _host() -> str:
    uname = getattr(os, "uname", None)
    if uname is not None:
        return str(uname().nodename)
    import socket  # Windows; socket costs milliseconds to import, so only here

    return socket.gethostname()


_HOST = _host()


def owner_id() -> str:
    """``host:pid`` of this process (the owner written into the segments it runs)."""
    return f"{_HOST}:{os.getpid()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the owning process still runs: True/False on this host, None (unknown) elsewhere."""
    host, _, pid_text = owner.rpartition(":")
    if host != _HOST or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def is_stale(record: SessionRecord, stale_after: float | None, now: float) -> bool:
    """A running record whose owner is gone (same host), or silent longer than `stale_after`."""
    if record.state != RUNNING:
        return False
    if owner_alive(record.latest.owner) is False:
        return True
    return stale_after is not None and now - record.last_activity > stale_after


def end_latest_segment(store: SessionStore, record: SessionRecord, state: str, reason: str | None) -> bool:
    """Mark the latest segment of a stored session ended (its process is gone); False if it had ended.

    The end time is the segment's last recorded activity: a stale session cleaned up days later
    does not count those days."""
    latest = record.latest
    if latest.ended is not None:
        return False
    store.update(
        [
            SegmentUpdate(
                session_id=record.id,
                span_id=latest.span_id,
                last_activity=latest.last_activity,
                usage=latest.usage,
                state=state,
                reason=reason,
                ended=max(latest.last_activity, latest.started),
            )
        ]
    )
    return True


def open_store(spec: Any, data_dir: Path, expiry: float | None) -> SessionStore | None:
    """The store a `session_store` setting names (None for `none`). Connects lazily where it can."""
    if isinstance(spec, SessionStore):
        return spec
    if spec == "none":
        return None
    if spec == "memory":
        from sdk.store.memory import MemoryStore

        return MemoryStore(expiry=expiry)
    if spec == "sqlite" or spec.startswith("sqlite:"):
        from sdk.store.sqlite import SQLiteStore

        path = data_dir / "sessions.db" if spec == "sqlite" else Path(spec[len("sqlite:") :])
        return SQLiteStore(path, expiry=expiry, data_dir=data_dir if spec == "sqlite" else None)
    from sdk.store.redis import RedisStore

    return RedisStore(spec, expiry=expiry)


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
# The C encoder that `_ENCODER.encode` builds anew for every call, built once (the same arguments
# json.JSONEncoder.iterencode passes, Python 3.10-3.13).
_MAKE_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = (
    _MAKE_C_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    if _MAKE_C_ENCODER is not None
    else None
)


def dumps(record: SessionRecord) -> str:
    """A record as compact JSON text: nested arrays in field order (records are NamedTuples, which
    json encodes in C; several times faster than the `to_json` objects)."""
    if _C_ENCODE is None:
        return _ENCODER.encode(record)
    return "".join(_C_ENCODE(record, 0))


def loads(text: str | bytes) -> SessionRecord:
    """The inverse of `dumps`."""
    session_id, name, trace_id, user_id, tags, segments, *rest = json.loads(text)
    return SessionRecord(
        session_id,
        name,
        trace_id,
        user_id,
        tuple(tags),
        tuple(_segment(*segment) for segment in segments),
        tuple(Score(*score) for score in rest[0]) if rest else (),  # records written before scores: none
    )


def _segment(
    span_id: str,
    number: int,
    owner: str,
    started: float,
    last_activity: float,
    state: str,
    reason: str | None,
    ended: float | None,
    usage: list[Any],
) -> Segment:
    return Segment(span_id, number, owner, started, last_activity, state, reason, ended, Usage(*usage))


__all__ = [
    "RUNNING",
    "Score",
    "Segment",
    "SegmentUpdate",
    "SessionRecord",
    "SessionStore",
    "StoreError",
    "Usage",
    "add_score",
    "append_segment",
    "apply_update",
    "dumps",
    "end_latest_segment",
    "is_expired",
    "is_stale",
    "loads",
    "matches",
    "open_store",
    "owner_alive",
    "owner_id",
]
