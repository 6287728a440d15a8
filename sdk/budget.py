"""Session budgets: limits on what one session may spend, checked before each LLM call is sent.

A `Budget` is a value (frozen, validated). A session gets one from ``sdk.session(..., budget=)``,
``start_session(..., budget=)`` or the `session_budget` setting. When the session is over any of
its limits, the next instrumented LLM call raises `BudgetExceeded` before the request leaves the
process (``on_exceed="raise"``), or goes ahead with a ``session.budget_exceeded`` event on the
session span and the `on_budget_exceeded` callbacks called (``on_exceed="warn"``). See
docs/budgets.md.

This module is a base helper: it imports only the SDK's other base helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from opentelemetry.trace import Span

from sdk.guard import internal_error, warn_once
from sdk.semconv import SESSION_BUDGET_EXCEEDED
from sdk.state import STATE

LIMITS = ("max_cost_usd", "max_tokens", "max_llm_calls", "max_duration_s", "max_errors", "max_repeats")
"""The limits a Budget can set, in the order they are checked."""


@dataclass(frozen=True)
class Budget:
    """Limits for one session; None leaves a limit unset.

    - `max_cost_usd`: LLM cost in USD (from the pricing table; unpriced models count 0).
    - `max_tokens`: input plus output tokens of the session's LLM calls.
    - `max_llm_calls`: instrumented LLM calls.
    - `max_duration_s`: seconds since the session started.
    - `max_errors`: spans of the session that recorded an error (failed LLM calls included).
    - `max_repeats`: the runaway-loop guard — the same `@sdk.tool` called with the same arguments
      more than this many times in a row.

    A session is over its budget once a count reaches its limit (``max_llm_calls=2`` allows two
    calls); a resumed session counts the usage of its earlier segments too.
    `on_exceed`: ``"raise"`` (`BudgetExceeded` at the next LLM call, before it is sent) or
    ``"warn"`` (the call goes ahead; an event and the `on_budget_exceeded` callbacks, once per
    limit).
    """

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    max_llm_calls: int | None = None
    max_duration_s: float | None = None
    max_errors: int | None = None
    max_repeats: int | None = None
    on_exceed: Literal["raise", "warn"] = "raise"

    def __post_init__(self) -> None:
        for name in ("max_cost_usd", "max_duration_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"Budget {name} must be a number >= 0 (or None), got {value!r}")
        for name in ("max_tokens", "max_llm_calls", "max_errors", "max_repeats"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"Budget {name} must be a whole number >= 0 (or None), got {value!r}")
        if self.max_repeats is not None and self.max_repeats < 1:
            raise ValueError(f"Budget max_repeats must be at least 1, got {self.max_repeats!r}")
        if self.on_exceed not in ("raise", "warn"):
            raise ValueError(f"Budget on_exceed must be 'raise' or 'warn', got {self.on_exceed!r}")

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return any(getattr(self, name) is not None for name in LIMITS)

    def describe(self) -> str:
        """``max_cost_usd=0.5,max_llm_calls=10,on_exceed=warn``: the limits set, as the setting reads them."""
        parts = [f"{name}={getattr(self, name)}" for name in LIMITS if getattr(self, name) is not None]
        if self.on_exceed != "raise":
            parts.append(f"on_exceed={self.on_exceed}")
        return ",".join(parts) or "none"

    @classmethod
    def from_mapping(cls, values: Any) -> Budget:
        """A Budget from a mapping of its field names (a config file table, an environment string parsed)."""
        known = {f.name for f in fields(cls)}
        unknown = [str(k) for k in values if k not in known]
        if unknown:
            raise ValueError(f"unknown budget field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        return cls(**{str(k): v for k, v in values.items()})


class BudgetExceeded(Exception):
    """An LLM call was refused, before it was sent, because its session is over its budget.

    `limit` names the limit (``"max_llm_calls"``, ...), `maximum` is its value, `used` what the
    session had used, `session` the `Session`.
    """

    def __init__(self, limit: str, maximum: float, used: float, session: Any) -> None:
        self.limit = limit
        self.maximum = maximum
        self.used = used
        self.session = session
        name = getattr(session, "name", "?")
        session_id = getattr(session, "id", "?")
        super().__init__(
            f"session {name!r} ({session_id}) is over its budget: {limit}={maximum}, used {used:g}; "
            "the LLM call was not sent"
        )


class Spent(NamedTuple):
    """What a session has used, in the budget's terms (earlier segments of a resumed session included)."""

    cost_usd: float = 0.0
    tokens: int = 0
    llm_calls: int = 0
    duration_s: float = 0.0
    errors: int = 0

    def plus(self, other: Spent) -> Spent:
        """The two added up."""
        return Spent(
            self.cost_usd + other.cost_usd,
            self.tokens + other.tokens,
            self.llm_calls + other.llm_calls,
            self.duration_s + other.duration_s,
            self.errors + other.errors,
        )


_SPENT_FOR = {
    "max_cost_usd": "cost_usd",
    "max_tokens": "tokens",
    "max_llm_calls": "llm_calls",
    "max_duration_s": "duration_s",
    "max_errors": "errors",
}


class BudgetState:
    """One session's budget: the limits, what earlier segments spent, the loop guard, what was reported.

    Thread-safe enough for its use: counters are read, the loop guard is updated under the
    session's lock by its caller.
    """

    __slots__ = ("budget", "exceeded", "prior", "repeat_count", "repeat_key")

    def __init__(self, budget: Budget, prior: Spent | None = None) -> None:
        self.budget = budget
        self.prior = prior or Spent()
        self.exceeded: dict[str, None] = {}
        """Limits found exceeded so far, in order (each reported once)."""
        self.repeat_key: object = None
        self.repeat_count = 0

    def note_tool_call(self, key: object) -> None:
        """Count a tool call for the loop guard (`key`: the tool's name and arguments)."""
        if key == self.repeat_key:
            self.repeat_count += 1
        else:
            self.repeat_key, self.repeat_count = key, 1

    def over(self, spent: Spent) -> tuple[str, float, float] | None:
        """The first limit `spent` (this segment's) and earlier segments reach: (limit, maximum, used)."""
        budget = self.budget
        total = self.prior.plus(spent)
        for limit, field in _SPENT_FOR.items():
            maximum = getattr(budget, limit)
            if maximum is not None:
                used = getattr(total, field)
                if used >= maximum:
                    return limit, maximum, used
        if budget.max_repeats is not None and self.repeat_count > budget.max_repeats:
            return "max_repeats", budget.max_repeats, self.repeat_count
        return None


def report_exceeded(
    span: Span,
    error: BudgetExceeded,
    state: BudgetState,
    callbacks: Sequence[Callable[[Any, BudgetExceeded], Any]],
) -> None:
    """A limit found exceeded for the first time: the ``session.budget_exceeded`` event on the session's
    span, and the `on_budget_exceeded` callbacks (one that raises is counted and logged once)."""
    try:
        span.add_event(
            "session.budget_exceeded",
            {
                "session.budget.limit": error.limit,
                "session.budget.maximum": error.maximum,
                "session.budget.used": error.used,
                "session.budget.on_exceed": state.budget.on_exceed,
            },
        )
        span.set_attribute(SESSION_BUDGET_EXCEEDED, list(state.exceeded))
    except Exception as exc:
        internal_error("session budget event", exc)
    for callback in callbacks:
        try:
            callback(error.session, error)
        except Exception as exc:
            STATE.counters.callback_errors.add()
            warn_once(
                f"callback-on_budget_exceeded-{type(exc).__name__}",
                "sessiontrace: an on_budget_exceeded callback raised %s: %s (further errors are "
                "counted in sdk.stats().callback_errors)",
                type(exc).__name__,
                exc,
            )
