"""Sampling that keeps whole sessions: a session's spans are all exported, or none of them.

The head decision is a pure function of the session id (`head_keeps`), so every process and
service that sees an id, and every segment of a resumed session, decides the same. A session the
head decision drops is *held*: its spans wait in memory until it ends, when the tail rules
(`keep_failed`, `keep_slower_than`, `keep_costlier_than`) may still keep it. Past
`sample_buffer_spans` held spans in all, the session whose span does not fit is kept at once (its
spans then take the normal export path, which overflows to the spool's disk budget under load).

Spans of a session that is not open in this process (another service continued it through
trusted baggage) follow the head decision only: the tail rules need the session's end, which
happens elsewhere. Score spans (`session.score`) are always exported. Metrics, the session store,
`sdk.stats()` and the console summary count every session, sampled or not.

`STATE.sampling` holds the one `SessionSampling` of the process: held spans outlive a re-init.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry.trace import StatusCode

from sdk.semconv import (
    SCORE_SPAN,
    SESSION_ID,
    SESSION_SAMPLE_RATE,
    SESSION_SAMPLED_BY,
    SessionState,
)
from sdk.state import STATE

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from sdk.settings import Config

_SCALE = 1 << 64
DECISIONS_KEPT = 20_000
"""Decisions remembered for sessions that ended (for their late spans), oldest forgotten first."""
HEAD_CACHE = 4_096
"""Head decisions cached for ids not open here (remote sessions); cleared when full."""


def head_keeps(session_id: str, rate: float) -> bool:
    """The head decision: whether a session with this id is kept at `rate` (0-1).

    The first 8 bytes of the SHA-256 of the UTF-8 id, read as a big-endian integer, are compared
    with ``rate * 2**64`` — a rule any language can repeat, so other services agree.
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    from hashlib import sha256  # OpenSSL: 4 ms at import, paid only when a rate below 1 is set

    digest = sha256(session_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < rate * _SCALE


class SamplingRules(NamedTuple):
    """The sampling settings of the current pipeline (`sdk.init`'s `sample_rate` and `keep_*`)."""

    rate: float = 1.0
    keep_failed: bool = True
    keep_slower_than: float | None = None
    keep_costlier_than: float | None = None
    buffer_spans: int = 10_000

    @classmethod
    def of(cls, config: Config) -> SamplingRules:
        """The rules `config` sets."""
        return cls(
            config.sample_rate,
            config.keep_failed,
            config.keep_slower_than,
            config.keep_costlier_than,
            config.sample_buffer_spans,
        )

    def tail_keeps(self, state: SessionState, errors: int, duration: float, cost: float) -> str | None:
        """The tail rule that keeps an ended session the head decision dropped, or None."""
        if self.keep_failed and (state is not SessionState.SUCCESS or errors > 0):
            return "keep_failed"
        if self.keep_slower_than is not None and duration >= self.keep_slower_than:
            return "keep_slower_than"
        if self.keep_costlier_than is not None and cost >= self.keep_costlier_than:
            return "keep_costlier_than"
        return None


class SessionSampling:
    """The process's sampling state: the held spans of undecided sessions and recent decisions."""

    def __init__(self) -> None:
        self.rules = SamplingRules()
        self.engaged = False
        """Whether spans must be looked at: a rate below 1, or decisions still to honour."""
        self._lock = threading.Lock()
        self._held: dict[str, list[ReadableSpan]] = {}
        self._held_spans = 0
        self._erred: set[str] = set()  # held sessions with a span that ended in error
        # session id -> how it was kept ("rate", "keep_failed", ...), or None: dropped.
        self._decided: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._head: dict[str, bool] = {}
        STATE.at_fork(self, after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # Held spans are the parent's, which exports or drops them when its sessions end.
        self._lock = threading.Lock()
        self._held = {}
        self._held_spans = 0
        self._erred = set()
        self._engage()

    def configure(self, rules: SamplingRules) -> None:
        """Use `rules` from now on (init()); sessions held already stay held until they end."""
        with self._lock:
            self.rules = rules
            self._head = {}
            self._engage()

    def _engage(self) -> None:
        self.engaged = self.rules.rate < 1.0 or bool(self._held) or bool(self._decided)

    def session_started(self, session_id: str) -> bool:
        """Note a session that starts in this process; True when its spans are held (head: drop)."""
        if head_keeps(session_id, self.rules.rate):
            return False
        with self._lock:
            self._held.setdefault(session_id, [])
            self.engaged = True
        return True

    def holds(self, session_id: str) -> bool:
        """Whether the spans of this session are held (it is undecided)."""
        return session_id in self._held

    def admit(self, span: ReadableSpan) -> list[ReadableSpan]:
        """The spans to export now that `span` ended: none (held or dropped), `span`, or a session's
        held spans and `span` (the buffer was full: that session is kept)."""
        attributes = span.attributes
        session_id = attributes.get(SESSION_ID) if attributes else None
        if not isinstance(session_id, str) or span.name == SCORE_SPAN:
            return [span]
        with self._lock:
            held = self._held.get(session_id)
            if held is not None:
                if self._held_spans < self.rules.buffer_spans:
                    held.append(span)
                    self._held_spans += 1
                    if span.status.status_code is StatusCode.ERROR:
                        self._erred.add(session_id)
                    return []
                del self._held[session_id]
                self._erred.discard(session_id)
                self._held_spans -= len(held)
                self._remember(session_id, "buffer_full")
                held.append(span)
                return held
            if session_id in self._decided:
                kept = self._decided[session_id] is not None
            else:
                found = self._head.get(session_id)
                if found is None:
                    if len(self._head) >= HEAD_CACHE:
                        self._head.clear()
                    found = self._head[session_id] = head_keeps(session_id, self.rules.rate)
                kept = found
        if kept:
            return [span]
        STATE.counters.spans_sampled_out.add()
        return []

    def decide(
        self, session_id: str, state: SessionState, errors: int, duration: float, cost: float
    ) -> tuple[dict[str, Any], list[ReadableSpan]]:
        """Decide an ending session (before its own span ends): the attributes that say how it was
        sampled, and the held spans to export now. `errors`: the session's count (a held span
        that ended with an error status counts too)."""
        rules = self.rules
        with self._lock:
            held = self._held.pop(session_id, None)
            earlier = self._decided.get(session_id)
            how: str | None
            if held is None:
                how = earlier or "rate"
            else:
                self._held_spans -= len(held)
                if session_id in self._erred:
                    self._erred.discard(session_id)
                    errors += 1
                how = rules.tail_keeps(state, errors, duration, cost)
            self._remember(session_id, how)
        if how is None:
            assert held is not None  # only a held session can be dropped here
            STATE.counters.sessions_sampled_out.add()
            STATE.counters.spans_sampled_out.add_many(len(held))
            return {}, []
        if rules.rate >= 1.0 and held is None and earlier is None:
            return {}, []  # no sampling: nothing to say
        return {SESSION_SAMPLED_BY: how, SESSION_SAMPLE_RATE: rules.rate}, held or []

    def _remember(self, session_id: str, how: str | None) -> None:
        decided = self._decided
        decided[session_id] = how
        decided.move_to_end(session_id)
        while len(decided) > DECISIONS_KEPT:
            decided.popitem(last=False)
        self._engage()


def configure_sampling(rules: SamplingRules) -> None:
    """Apply the sampling settings of a new pipeline (no sampler is made while the rate is 1)."""
    sampling = STATE.sampling
    if sampling is None:
        if rules.rate >= 1.0:
            return
        sampling = STATE.sampling = SessionSampling()
    sampling.configure(rules)
