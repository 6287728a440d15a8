"""Backend dialects: the attributes Phoenix (OpenInference) and Langfuse read, beside the GenAI conventions.

The SDK's spans follow the OpenTelemetry conventions (``session.id``, ``user.id``, ``gen_ai.*``).
Backends read more than that, each its own way; the `dialects` setting adds what they lack and
nothing they already derive (docs/backends.md has the measurements behind each line):

- ``openinference`` (on by default; read by Phoenix, and also by Langfuse and MLflow):
  ``openinference.span.kind`` on the SDK's own spans (a session is a CHAIN, so are its live
  marker, tasks, workflows and notebook cells; an agent is an AGENT, a tool a TOOL, an LLM call
  an LLM, an embeddings call an EMBEDDING, a score an EVALUATOR), ``tag.tags`` from
  ``session.tags``, ``agent.name`` from ``gen_ai.agent.name``; on LLM spans the model, provider
  and token counts under OpenInference's names (``llm.model_name``, ``llm.provider``,
  ``llm.token_count.*``: Phoenix 15.10 and later derive them from ``gen_ai.*``, earlier
  versions and other OpenInference readers do not); on tool spans ``tool.name``,
  ``tool.id`` and, captured, the arguments and result as ``input.value`` /
  ``output.value``; the captured arguments and return values of tasks, workflows and agents as
  ``input.value`` / ``output.value`` (JSON) instead of ``sessiontrace.input`` /
  ``sessiontrace.output``. With content capture on, the session's first user message and last
  answer (from its instrumented LLM calls) become the session span's ``input.value`` /
  ``output.value``: what a backend shows as a session's first input and last output
  (`note_session_content`). An LLM span gets neither: Phoenix derives its messages from
  ``gen_ai.*``, and Langfuse would read an ``output.value`` alone as "no input" (it takes both
  from ``input.value`` / ``output.value`` as soon as one is there).
- ``langfuse``: ``langfuse.observation.usage_details`` on LLM spans (Langfuse's exact token
  split: input without cached tokens, output without reasoning tokens), and the session's state
  and end reason as filterable trace metadata (``langfuse.trace.metadata.session_state``, ...).

Everything but the content is derived here, on the export worker, from attributes the span
already has (`DialectTranslator.attributes_of`, before scrubbing, in the same copy of the span):
the program's threads run none of it, and spans the SDK's tracer did not make pass on
untouched. Its cost, measured: docs/performance.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span

from sdk.guard import internal_error
from sdk.otel_internals import plain_attributes, span_fields, span_origin
from sdk.semconv import SESSION_END_REASON, SESSION_STATE, SESSION_TAGS, SPAN_KIND, TRACER_NAME

OPENINFERENCE = "openinference"
LANGFUSE = "langfuse"
NAMES = (OPENINFERENCE, LANGFUSE)
DEFAULT = (OPENINFERENCE,)

# OpenInference (openinference-semantic-conventions 0.1.42)
OI_SPAN_KIND = "openinference.span.kind"
INPUT_VALUE = "input.value"
INPUT_MIME_TYPE = "input.mime_type"
OUTPUT_VALUE = "output.value"
OUTPUT_MIME_TYPE = "output.mime_type"
TAG_TAGS = "tag.tags"
AGENT_NAME = "agent.name"
OI_CACHE_WRITE = "llm.token_count.prompt_details.cache_write"
OI_TOKEN_TOTAL = "llm.token_count.total"
TEXT = "text/plain"
JSON = "application/json"

# Langfuse (v4.16, packages/shared/src/server/otel/OtelIngestionProcessor.ts)
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_TRACE_METADATA = "langfuse.trace.metadata."

OI_KINDS = {
    "session": "CHAIN",
    "session.start": "CHAIN",
    "task": "CHAIN",
    "workflow": "CHAIN",
    "cell": "CHAIN",
    "agent": "AGENT",
    "tool": "TOOL",
    "llm": "LLM",
    "score": "EVALUATOR",
}
"""``sessiontrace.span.kind`` -> ``openinference.span.kind`` (Phoenix shows UNKNOWN without one)."""
NOTEBOOK_CELL = "notebook.cell.execution_count"
"""A notebook cell's step span carries this (notebook_ext) and no span kind: it is a CHAIN too."""
_CAPTURED = (
    ("sessiontrace.input", INPUT_VALUE, INPUT_MIME_TYPE),
    ("sessiontrace.output", OUTPUT_VALUE, OUTPUT_MIME_TYPE),
)
_CAPTURED_KEYS = frozenset(ours for ours, _, _ in _CAPTURED)
_GENAI_AGENT_NAME = "gen_ai.agent.name"
_CACHE_WRITE = "gen_ai.usage.cache_write.input_tokens"
_INPUT_TOKENS = "gen_ai.usage.input_tokens"
_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
_OI_TOKEN_COUNTS = (
    (_INPUT_TOKENS, "llm.token_count.prompt"),
    (_OUTPUT_TOKENS, "llm.token_count.completion"),
    ("gen_ai.usage.cache_read.input_tokens", "llm.token_count.prompt_details.cache_read"),
    (_CACHE_WRITE, OI_CACHE_WRITE),
    ("gen_ai.usage.reasoning.output_tokens", "llm.token_count.completion_details.reasoning"),
)
_OI_PROVIDERS = {
    "openai": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
    "cohere": ("cohere", "cohere"),
    "mistral_ai": ("mistralai", "mistralai"),
    "deepseek": ("deepseek", None),
    "groq": ("groq", None),
    "perplexity": ("perplexity", None),
    "x_ai": ("xai", None),
    "azure.ai.openai": ("azure", "openai"),
    "azure.ai.inference": ("azure", None),
    "aws.bedrock": ("aws", None),
    "gcp.vertex_ai": ("google", "vertexai"),
    "gcp.gen_ai": ("google", None),
    "gcp.gemini": ("google", None),
}
"""``gen_ai.provider.name`` -> OpenInference's ``llm.provider`` and ``llm.system`` (the pairs Phoenix
20.26 derives, phoenix/trace/gen_ai/conversion.py); another provider gets neither."""
_TOOL_NAMES = (
    ("gen_ai.tool.name", "tool.name"),
    ("gen_ai.tool.call.id", "tool.id"),
)
_TOOL_CONTENT = (
    ("gen_ai.tool.call.arguments", INPUT_VALUE, INPUT_MIME_TYPE),
    ("gen_ai.tool.call.result", OUTPUT_VALUE, OUTPUT_MIME_TYPE),
)
_LANGFUSE_SESSION_KEYS = ((SESSION_STATE, "session_state"), (SESSION_END_REASON, "session_end_reason"))


def parse(value: object) -> tuple[str, ...]:
    """The `dialects` setting: names from `NAMES` (a list, or comma-separated), or ``none``.

    Raises ValueError naming the unknown entry."""
    items: Iterable[object]
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return ()
        items = text.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"expected a list of dialects ({', '.join(NAMES)}) or none")
    found: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name == "":
            continue
        if name not in NAMES:
            raise ValueError(f"unknown dialect {name!r}; known: {', '.join(NAMES)} (or none)")
        if name not in found:
            found.append(str(name))
    return tuple(found)


class DialectTranslator:
    """Adds the dialects' attributes to the SDK's spans of a batch (run by the export worker)."""

    def __init__(self, dialects: Sequence[str]) -> None:
        self.openinference = OPENINFERENCE in dialects
        self.langfuse = LANGFUSE in dialects

    @property
    def enabled(self) -> bool:
        """Whether any dialect is on (else the translator is not put in the pipeline)."""
        return self.openinference or self.langfuse

    def attributes_of(self, span: ReadableSpan) -> dict[str, Any] | None:
        """The attributes of `span` with its dialect attributes added (a new dict), or None when
        none apply. The export worker calls it for every span, before scrubbing (sdk/export/scrub.py
        makes the one copy of the span).

        Only spans of the SDK's tracer are read: another instrumentation's pass at the cost of one
        comparison. Their attributes are copied once, as a plain dict (every lookup after that is a
        dict's, not `BoundedAttributes`' through `Mapping`)."""
        scope = span_origin(span)[1]
        if scope is None or scope.name != TRACER_NAME:
            return None
        attributes = plain_attributes(span_fields(span)[6])
        if not attributes:
            return None
        own: dict[str, Any] = dict(attributes)
        kind = own.get(SPAN_KIND)
        if kind is None:
            if NOTEBOOK_CELL not in own:
                return None
            kind = "cell"
        try:
            return self.attributes(str(kind), own)
        except Exception as exc:  # never lose the span for a dialect: export it as it is
            internal_error("dialect attributes", exc)
            return None

    def attributes(self, kind: str, attributes: dict[str, Any]) -> dict[str, Any] | None:
        """The attributes of a span of `kind` with the dialects' added (`attributes` itself, a copy
        the caller owns, updated), or None when nothing changes."""
        extra: dict[str, Any] = {}
        moved = False
        if self.openinference:
            oi_kind = OI_KINDS.get(kind)
            if kind == "llm" and attributes.get("gen_ai.operation.name") == "embeddings":
                oi_kind = "EMBEDDING"
            if oi_kind is not None and OI_SPAN_KIND not in attributes:
                extra[OI_SPAN_KIND] = oi_kind
            if kind in ("session", "session.start"):
                tags = attributes.get(SESSION_TAGS)
                if tags:
                    extra[TAG_TAGS] = tags
            elif kind == "agent" and _GENAI_AGENT_NAME in attributes:
                extra[AGENT_NAME] = attributes[_GENAI_AGENT_NAME]
            elif kind == "llm":
                openinference_llm(attributes, extra, embedding=oi_kind == "EMBEDDING")
            elif kind == "tool":
                openinference_tool(attributes, extra)
            moved = not _CAPTURED_KEYS.isdisjoint(attributes)
        if self.langfuse:
            if kind == "llm":
                usage = langfuse_usage(attributes)
                if usage is not None:
                    extra[LANGFUSE_USAGE] = usage
            elif kind == "session":
                for ours, theirs in _LANGFUSE_SESSION_KEYS:
                    if ours in attributes:
                        extra[LANGFUSE_TRACE_METADATA + theirs] = attributes[ours]
        if not extra and not moved:
            return None
        out = attributes
        if moved:
            for ours, theirs, mime in _CAPTURED:
                if ours in out:
                    out[theirs] = out.pop(ours)
                    out[mime] = JSON
        out.update(extra)
        return out


def openinference_llm(attributes: Mapping[str, Any], extra: dict[str, Any], *, embedding: bool) -> None:
    """Into `extra`: an LLM span's model, provider and token counts under OpenInference's names
    (the values Phoenix would derive; the model is the requested one, which its price table reads)."""
    model = attributes.get("gen_ai.request.model") or attributes.get("gen_ai.response.model")
    if model:
        extra["embedding.model_name" if embedding else "llm.model_name"] = model
    provider, system = _OI_PROVIDERS.get(str(attributes.get("gen_ai.provider.name")), (None, None))
    if provider is not None:
        extra["llm.provider"] = provider
    if system is not None:
        extra["llm.system"] = system
    for ours, theirs in _OI_TOKEN_COUNTS:
        if ours in attributes:
            extra[theirs] = attributes[ours]
    if _INPUT_TOKENS in attributes and _OUTPUT_TOKENS in attributes:
        extra[OI_TOKEN_TOTAL] = _int(attributes[_INPUT_TOKENS]) + _int(attributes[_OUTPUT_TOKENS])


def openinference_tool(attributes: Mapping[str, Any], extra: dict[str, Any]) -> None:
    """Into `extra`: a tool span's name and call id, and its captured arguments and
    result as ``input.value`` / ``output.value`` (JSON, already redacted)."""
    for ours, theirs in _TOOL_NAMES:
        if ours in attributes:
            extra[theirs] = attributes[ours]
    for ours, value, mime in _TOOL_CONTENT:
        if ours in attributes:
            extra[value] = attributes[ours]
            extra[mime] = JSON


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def langfuse_usage(attributes: Mapping[str, Any]) -> str | None:
    """``langfuse.observation.usage_details`` of an LLM span: Langfuse's own split of the GenAI counts
    (input without cache reads and writes, output without reasoning), as a JSON object; None
    without token counts."""
    if "gen_ai.usage.input_tokens" not in attributes and "gen_ai.usage.output_tokens" not in attributes:
        return None
    tokens_in = _int(attributes.get("gen_ai.usage.input_tokens"))
    tokens_out = _int(attributes.get("gen_ai.usage.output_tokens"))
    cache_read = _int(attributes.get("gen_ai.usage.cache_read.input_tokens"))
    cache_write = _int(attributes.get(_CACHE_WRITE))
    reasoning = _int(attributes.get("gen_ai.usage.reasoning.output_tokens"))
    usage = {
        "input": max(tokens_in - cache_read - cache_write, 0),
        "output": max(tokens_out - reasoning, 0),
        "total": tokens_in + tokens_out,
    }
    if cache_read:
        usage["input_cached_tokens"] = cache_read
    if cache_write:
        usage["input_cache_creation"] = cache_write
    if reasoning:
        usage["output_reasoning_tokens"] = reasoning
    return json.dumps(usage, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Content (captured on the program's thread, by the LLM instrumentation)


def message_text(message: Mapping[str, Any] | None) -> str | None:
    """The text parts of one message in the GenAI conventions' shape, joined; None without text."""
    if not isinstance(message, Mapping):
        return None
    parts = message.get("parts")
    texts = [
        part["content"]
        for part in (parts if isinstance(parts, (list, tuple)) else ())
        if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("content"), str)
    ]
    return "\n".join(texts) if texts else None


def last_user_text(messages: object) -> str | None:
    """The text of the last ``user`` message of a call's input messages (what the user asked)."""
    if not isinstance(messages, (list, tuple)):
        return None
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message)
    return None


def first_text(messages: object) -> str | None:
    """The text of the first output message that has text (a call's answer)."""
    for message in messages if isinstance(messages, (list, tuple)) else ():
        text = message_text(message)
        if text is not None:
            return text
    return None


def note_session_content(session_span: Span, asked: str | None, answer: str | None) -> None:
    """With capture on, after an LLM call of a session: the first question as the session span's
    ``input.value`` (kept), the latest answer as its ``output.value`` (replaced). The texts are
    already redacted."""
    if not session_span.is_recording():
        return
    if asked is not None and INPUT_VALUE not in (getattr(session_span, "attributes", None) or {}):
        session_span.set_attributes({INPUT_VALUE: asked, INPUT_MIME_TYPE: TEXT})
    if answer is not None:
        session_span.set_attributes({OUTPUT_VALUE: answer, OUTPUT_MIME_TYPE: TEXT})
