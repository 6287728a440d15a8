"""sessiontrace: sessions for LLM and agent programs, recorded as OpenTelemetry traces.

    import sdk
    sdk.init(service_name="support-bot", auto_start_session=True)
    with sdk.session("refund-flow", user_id="u-42") as s:
        ...

See README.md and docs/ for the contract, configuration and examples.
"""

from typing import TYPE_CHECKING, Any

from sdk import context
from sdk.budget import Budget, BudgetExceeded
from sdk.counters import Stats
from sdk.decorators import agent, event, task, tool, workflow
from sdk.instrumentation import instrument, uninstrument
from sdk.lifecycle import config, flush, init, shutdown, stats
from sdk.scores import score
from sdk.semconv import SessionState, SessionWarning
from sdk.session_api import SessionInfo, SessionScope, end_session, session, sessions, start_session
from sdk.session_core import Session, current_session
from sdk.settings import Config, ConfigError
from sdk.version import __version__

if TYPE_CHECKING:
    from sdk.records import SessionRow, SpanRecorder, SpanRow, read_sessions, read_spans
    from sdk.store import Score, SessionRecord, SessionStore, Usage

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Config",
    "ConfigError",
    "Score",
    "Session",
    "SessionInfo",
    "SessionRecord",
    "SessionRow",
    "SessionScope",
    "SessionState",
    "SessionStore",
    "SessionWarning",
    "SpanRecorder",
    "SpanRow",
    "Stats",
    "Usage",
    "__version__",
    "agent",
    "config",
    "context",
    "current_session",
    "end_session",
    "event",
    "flush",
    "init",
    "instrument",
    "read_sessions",
    "read_spans",
    "score",
    "session",
    "sessions",
    "shutdown",
    "start_session",
    "stats",
    "task",
    "tool",
    "uninstrument",
    "workflow",
]

_LAZY = frozenset(
    {"Score", "SessionRecord", "SessionStore", "Usage"}
)  # sdk.store costs import time; load it on first use
_LAZY_RECORDS = frozenset(
    {"SessionRow", "SpanRecorder", "SpanRow", "read_sessions", "read_spans"}
)  # and sdk.records


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import sdk.store

        return getattr(sdk.store, name)
    if name in _LAZY_RECORDS:
        import sdk.records

        return getattr(sdk.records, name)
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")
