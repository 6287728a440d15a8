"""sessiontrace: sessions for LLM and agent programs, recorded as OpenTelemetry traces.

    import sdk
    sdk.init(service_name="support-bot", auto_start_session=True)
    with sdk.session("refund-flow", user_id="u-42") as s:
        ...

See README.md and docs/ for the contract, configuration and examples.
"""

from sdk import context
from sdk.config import Config, ConfigError
from sdk.decorators import agent, event, task, tool, workflow
from sdk.lifecycle import config, flush, init, shutdown, stats
from sdk.session import (
    Session,
    SessionInfo,
    SessionScope,
    SessionState,
    SessionWarning,
    current_session,
    end_session,
    session,
    sessions,
    start_session,
)
from sdk.stats import Stats
from sdk.version import __version__

__all__ = [
    "Config",
    "ConfigError",
    "Session",
    "SessionInfo",
    "SessionScope",
    "SessionState",
    "SessionWarning",
    "Stats",
    "__version__",
    "agent",
    "config",
    "context",
    "current_session",
    "end_session",
    "event",
    "flush",
    "init",
    "session",
    "sessions",
    "shutdown",
    "start_session",
    "stats",
    "task",
    "tool",
    "workflow",
]
