"""Names on the wire, and the states and context keys every layer of the SDK shares.

Attribute names the SDK writes on spans (``session.id`` from the OpenTelemetry semantic
conventions; the others are the SDK's own), the states a session ends in, and the keys the SDK
puts in OpenTelemetry contexts. This module is a base helper: it imports nothing of the SDK.
"""

from __future__ import annotations

from enum import Enum

from opentelemetry import context as otel_context
from opentelemetry.context import Context

SESSION_ID = "session.id"
SESSION_NAME = "session.name"
SESSION_STATE = "session.state"
SESSION_TAGS = "session.tags"
SESSION_END_REASON = "session.end_reason"
SESSION_PARENT_ID = "session.parent_id"
SESSION_PREVIOUS_ID = "session.previous_id"
"""Semconv's previous id of a session whose id *changed* (never equal to ``session.id``): the SDK
never writes it — a resumed segment keeps its id and links the earlier segment — an application
that replaces one session by another passes it in ``attributes=``."""
SESSION_AUTO = "session.auto"
SESSION_CONTINUED = "session.continued"
SESSION_SEGMENT = "session.segment"
SESSION_RESUMED = "session.resumed"
SESSION_ERRORS = "session.errors"
SESSION_LLM_CALLS = "session.llm.calls"
SESSION_LLM_INPUT_TOKENS = "session.llm.input_tokens"
SESSION_LLM_OUTPUT_TOKENS = "session.llm.output_tokens"
SESSION_LLM_COST = "session.llm.cost_usd"
SESSION_BUDGET_EXCEEDED = "session.budget.exceeded"
SESSION_SAMPLED_BY = "session.sampled_by"
SESSION_SAMPLE_RATE = "session.sample_rate"
USER_ID = "user.id"
TRACER_NAME = "sessiontrace"
METER_NAME = "sessiontrace"
"""The instrumentation scope of every span the SDK makes (its tracer's name)."""
SPAN_KIND = "sessiontrace.span.kind"
INBOUND_SESSION_ID = "sessiontrace.inbound.session_id"
"""Attribute of a session started with ``parent=`` whose inbound ``session.id`` was not adopted."""
SCORE_SPAN = "session.score"
SCORE_NAME = "session.score.name"
SCORE_VALUE = "session.score.value"
SCORE_COMMENT = "session.score.comment"
SCORE_SOURCE = "session.score.source"

MAX_ID_LENGTH = 256
"""Session ids are at most this many printable characters."""


class SessionState(str, Enum):
    """A session's lifecycle: `running`, then one of `success`, `fail`, `indeterminate`."""

    RUNNING = "running"
    SUCCESS = "success"
    FAIL = "fail"
    INDETERMINATE = "indeterminate"

    def __str__(self) -> str:
        return self.value


class SessionWarning(UserWarning):
    """A session call that could not do what was asked (e.g. ending when there is no session)."""


ROOT_KEY = otel_context.create_key("sessiontrace-new-trace")
"""Context key asking the SDK's tracer for a new trace even where an auto session would adopt the span."""


ROOT_CONTEXT = otel_context.set_value(ROOT_KEY, True, Context())

REMOTE_SESSION_KEY = otel_context.create_key("sessiontrace-remote-session")
"""Context key holding the id of a session of another process or service that this context
continues: set only for an inbound ``session.id`` the `accept_session_from` setting trusts (or
for work the SDK itself handed to another process). Spans started in such a context carry it."""
