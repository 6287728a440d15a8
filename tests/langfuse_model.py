"""What Langfuse makes of OTLP spans: the parts of its ingestion that read what sessiontrace exports.

No Langfuse server runs here (it needs Postgres, ClickHouse, Redis and S3), so the mapping tests
check sessiontrace's spans against this port of Langfuse's own rules, read from its source at
v4.16.0 (langfuse/langfuse commit 62751446149b, 2026-08-22):

- packages/shared/src/server/otel/OtelIngestionProcessor.ts: `processSpan` (a trace event for a
  root span, `createTraceEvent` / `createObservationEvent`), `extractSessionId`, `extractUserId`,
  `extractTags`, `extractInputAndOutput` (the branches a span without a framework's scope reaches),
  `extractOpenTelemetryGenAiInputAndOutput`, `extractModelName`, `extractUsageDetails` /
  `extractGenericGenAiUsageDetails`, `extractCostDetails`, `extractMetadata` (the
  ``langfuse.trace.metadata.*`` keys);
- packages/shared/src/server/otel/ObservationTypeMapper.ts: the observation type, by priority.

Only the rules for attributes sessiontrace can emit are ported; each function names its source.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

_LANGFUSE_TYPES = {
    "span": "SPAN",
    "generation": "GENERATION",
    "event": "EVENT",
    "embedding": "EMBEDDING",
    "agent": "AGENT",
    "tool": "TOOL",
    "chain": "CHAIN",
    "retriever": "RETRIEVER",
    "guardrail": "GUARDRAIL",
    "evaluator": "EVALUATOR",
}
_OPENINFERENCE_TYPES = {
    "CHAIN": "CHAIN",
    "RETRIEVER": "RETRIEVER",
    "LLM": "GENERATION",
    "EMBEDDING": "EMBEDDING",
    "AGENT": "AGENT",
    "TOOL": "TOOL",
    "GUARDRAIL": "GUARDRAIL",
    "EVALUATOR": "EVALUATOR",
}
_GENAI_OPERATION_TYPES = {
    "chat": "GENERATION",
    "completion": "GENERATION",
    "text_completion": "GENERATION",
    "generate_content": "GENERATION",
    "generate": "GENERATION",
    "embeddings": "EMBEDDING",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "execute_tool": "TOOL",
}
_MODEL_KEYS = (
    "langfuse.observation.model.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "llm.model_name",
    "model",
)
_KNOWN_USAGE_KEYS = frozenset(
    {
        "prompt_tokens", "input_tokens", "prompt", "completion_tokens", "output_tokens", "completion",
        "total_tokens", "total", "cache_read.input_tokens", "cache_read_input_tokens", "cache_read_tokens",
        "details.cache_read_tokens", "details.cache_read_input_tokens", "prompt_details.cache_read",
        "input_cached_tokens", "cache_creation.input_tokens", "cache_creation_input_tokens",
        "cache_write_tokens", "details.cache_write_tokens", "details.cache_creation_input_tokens",
        "prompt_details.cache_write", "input_cache_creation", "reasoning.output_tokens",
        "completion_details.reasoning", "completion_details.audio",
    }
)  # fmt: skip


def observation_type(attributes: Mapping[str, Any]) -> str:
    """ObservationTypeMapper.mapToObservationType: the first mapper (lowest priority number) that applies."""
    declared = attributes.get("langfuse.observation.type")
    if isinstance(declared, str) and declared.lower() in _LANGFUSE_TYPES:  # priority 1
        return _LANGFUSE_TYPES[declared.lower()]
    kind = attributes.get("openinference.span.kind")  # priority 2
    if kind in _OPENINFERENCE_TYPES:
        return _OPENINFERENCE_TYPES[kind]
    operation = attributes.get("gen_ai.operation.name")  # priority 3
    if operation in _GENAI_OPERATION_TYPES:
        return _GENAI_OPERATION_TYPES[operation]
    if attributes.get("gen_ai.tool.name") or attributes.get("gen_ai.tool.call.id"):  # priority 7
        return "TOOL"
    if any(attributes.get(key) for key in _MODEL_KEYS):  # priority 10
        return "GENERATION"
    return "SPAN"


def _first(attributes: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if attributes.get(key):
            value = attributes[key]
            return value if isinstance(value, str) else json.dumps(value)
    return None


def session_id(attributes: Mapping[str, Any]) -> str | None:
    """extractSessionId."""
    return _first(
        attributes,
        (
            "langfuse.session.id",
            "session.id",
            "gen_ai.conversation.id",
            "langfuse.observation.metadata.langfuse_session_id",
            "langfuse.trace.metadata.langfuse_session_id",
        ),
    )


def user_id(attributes: Mapping[str, Any]) -> str | None:
    """extractUserId."""
    return _first(
        attributes,
        (
            "langfuse.user.id",
            "user.id",
            "langfuse.observation.metadata.langfuse_user_id",
            "langfuse.trace.metadata.langfuse_user_id",
        ),
    )


def tags(attributes: Mapping[str, Any]) -> list[str]:
    """extractTags: the first non-empty of the tag keys, as an array, a JSON array, commas or one string.
    ``session.tags`` is not among them."""
    value = None
    for key in (
        "langfuse.trace.tags",
        "langfuse.tags",
        "langfuse.observation.metadata.langfuse_tags",
        "langfuse.trace.metadata.langfuse_tags",
        "tag.tags",
    ):
        if attributes.get(key):
            value = attributes[key]
            break
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(tag) for tag in value]
    if value.strip().startswith("["):
        return [str(tag) for tag in json.loads(value)]
    return [tag.strip() for tag in value.split(",")] if "," in value else [value]


def input_output(attributes: Mapping[str, Any], *, trace: bool = False) -> tuple[Any, Any]:
    """extractInputAndOutput, for a span of no framework's instrumentation scope and without GenAI events:
    the first family of keys of which either side is set gives both sides."""
    if trace and (attributes.get("langfuse.trace.input") or attributes.get("langfuse.trace.output")):
        return attributes.get("langfuse.trace.input"), attributes.get("langfuse.trace.output")
    families = (
        ("langfuse.observation.input", "langfuse.observation.output"),
        ("mlflow.spanInputs", "mlflow.spanOutputs"),
        ("traceloop.entity.input", "traceloop.entity.output"),
        ("input.value", "output.value"),
        ("input", "output"),
        ("tool_arguments", "tool_response"),
    )
    for input_key, output_key in families:
        if attributes.get(input_key) or attributes.get(output_key):
            return attributes.get(input_key), attributes.get(output_key)
    for prefix in ("gen_ai.prompt", "gen_ai.completion", "llm.input_messages", "llm.output_messages"):
        if any(key.startswith(prefix) for key in attributes):
            raise NotImplementedError(f"{prefix}.* keys: sessiontrace emits none")
    if attributes.get("gen_ai.input.messages") or attributes.get("gen_ai.output.messages"):
        return attributes.get("gen_ai.input.messages"), attributes.get("gen_ai.output.messages")
    if attributes.get("gen_ai.tool.call.arguments") or attributes.get("gen_ai.tool.call.result"):
        return attributes.get("gen_ai.tool.call.arguments"), attributes.get("gen_ai.tool.call.result")
    return None, None


def model_name(attributes: Mapping[str, Any]) -> str | None:
    """extractModelName."""
    for key in (
        "langfuse.observation.model.name",
        "gen_ai.response.model",
        "ai.model.id",
        "gen_ai.request.model",
        "llm.response.model",
        "llm.model_name",
        "model",
    ):
        if attributes.get(key):
            return str(attributes[key])
    return None


def usage_details(attributes: Mapping[str, Any]) -> dict[str, float]:
    """extractUsageDetails: ``langfuse.observation.usage_details`` wins outright; else the generic
    ``gen_ai.usage.*`` / ``llm.token_count.*`` reading, where every key it does not know becomes a
    usage type of its own."""
    declared = attributes.get("langfuse.observation.usage_details")
    if isinstance(declared, str):
        parsed = json.loads(declared)
        if isinstance(parsed, dict):
            return parsed
    raw: dict[str, float] = {}
    for key, value in attributes.items():
        if (key.startswith("gen_ai.usage.") and key != "gen_ai.usage.cost") or key.startswith(
            "llm.token_count."
        ):
            with contextlib.suppress(TypeError, ValueError):  # Number(value) is NaN: the key is skipped
                raw[key.replace("gen_ai.usage.", "").replace("llm.token_count.", "")] = float(value)

    def pick(*names: str) -> float | None:
        return next((raw[name] for name in names if name in raw), None)

    tokens_in = pick("prompt_tokens", "input_tokens", "prompt")
    tokens_out = pick("completion_tokens", "output_tokens", "completion")
    total = pick("total_tokens", "total")
    cache_read = pick(
        "cache_read.input_tokens", "cache_read_input_tokens", "cache_read_tokens", "details.cache_read_tokens",
        "details.cache_read_input_tokens", "prompt_details.cache_read", "input_cached_tokens",
    )  # fmt: skip
    cache_write = pick(
        "cache_creation.input_tokens", "cache_creation_input_tokens", "cache_write_tokens",
        "details.cache_write_tokens", "details.cache_creation_input_tokens", "prompt_details.cache_write",
        "input_cache_creation",
    )  # fmt: skip
    reasoning = pick("reasoning.output_tokens", "completion_details.reasoning")
    audio = pick("completion_details.audio")
    usage = {
        (key.replace("details.", "", 1) if key.startswith("details.") else key): value
        for key, value in raw.items()
        if key not in _KNOWN_USAGE_KEYS
    }
    if tokens_in is not None:
        usage["input"] = max(tokens_in - (cache_read or 0) - (cache_write or 0), 0)
    if tokens_out is not None:
        usage["output"] = max(tokens_out - (reasoning or 0) - (audio or 0), 0)
    if total is not None:
        usage["total"] = total
    if cache_read is not None:
        usage["input_cached_tokens"] = cache_read
    if cache_write is not None:
        usage["input_cache_creation"] = cache_write
    if reasoning is not None:
        usage["output_reasoning_tokens"] = reasoning
    if audio is not None:
        usage["output_audio_tokens"] = audio
    return usage


def cost_details(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """extractCostDetails (an empty result: Langfuse prices the model itself)."""
    declared = attributes.get("langfuse.observation.cost_details")
    if isinstance(declared, str):
        return dict(json.loads(declared))
    for key in ("gen_ai.usage.cost", "llm.cost.total"):
        if attributes.get(key) not in (None, ""):
            return {"total": attributes[key]}
    return {}


def trace_metadata(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """extractMetadata for the trace: each ``langfuse.trace.metadata.<k>`` becomes top-level key `<k>`."""
    prefix = "langfuse.trace.metadata."
    return {key[len(prefix) :]: value for key, value in attributes.items() if key.startswith(prefix)}


@dataclass
class Observation:
    """One Langfuse observation (what the trace view lists)."""

    name: str
    type: str
    input: Any
    output: Any
    model: str | None
    usage: dict[str, float]
    cost: dict[str, Any]


@dataclass
class Trace:
    """One Langfuse trace: the fields its root span and the spans with trace updates set."""

    id: str
    name: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    tags: list[str] = field(default_factory=list)
    input: Any = None
    output: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)


def ingest(spans: Sequence[ReadableSpan]) -> dict[str, Trace]:
    """Langfuse's traces for `spans`, by trace id (processSpan for each span, in export order)."""
    traces: dict[str, Trace] = {}
    for span in spans:
        attributes = dict(span.attributes or {})
        trace_id = f"{span.context.trace_id:032x}"
        trace = traces.setdefault(trace_id, Trace(trace_id))
        root = span.parent is None
        if root:
            trace.name = attributes.get("langfuse.trace.name") or span.name
            trace.input, trace.output = input_output(attributes, trace=True)
            trace.metadata.update(trace_metadata(attributes))
        trace.session_id = session_id(attributes) or trace.session_id
        trace.user_id = user_id(attributes) or trace.user_id
        trace.tags = sorted(set(trace.tags) | set(tags(attributes)))
        observed_input, observed_output = input_output(attributes)
        trace.observations.append(
            Observation(
                name=span.name,
                type=observation_type(attributes),
                input=observed_input,
                output=observed_output,
                model=model_name(attributes),
                usage=usage_details(attributes),
                cost=cost_details(attributes),
            )
        )
    return traces
