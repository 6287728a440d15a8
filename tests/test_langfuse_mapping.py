"""What Langfuse shows of sessiontrace's sessions: the exported attributes read by Langfuse's own rules.

No Langfuse server runs here; tests/langfuse_model.py ports the rules of its OTLP ingestion
(v4.16.0) that read the attributes the SDK emits, and these tests run real sessions (the real
openai and anthropic clients against the loopback LLM server) through the export pipeline.
"""

from __future__ import annotations

import json
import time

import anthropic
import langfuse_model
import openai
import pytest
from llm_server import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    REASONING_TOKENS,
    USAGE_DETAILS,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdk


def start(**settings) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    sdk.init(
        service_name="tests",
        exporter=exporter,
        export_interval=0.05,
        metrics=False,
        session_store="none",
        pricing={USAGE_DETAILS: {"input": 1.0, "output": 2.0}},
        **settings,
    )
    return exporter


def langfuse_traces(exporter: InMemorySpanExporter) -> dict[str, langfuse_model.Trace]:
    assert sdk.flush()
    return langfuse_model.ingest(exporter.get_finished_spans())


@sdk.tool
def look_up(order: str) -> str:
    return f"{order}: shipped"


@sdk.agent(name="support")
def support(question: str, client: openai.OpenAI) -> str:
    look_up("A-1")
    reply = client.chat.completions.create(
        model=USAGE_DETAILS, messages=[{"role": "user", "content": question}]
    )
    return str(reply.choices[0].message.content)


def test_session_user_tags_input_and_output_of_a_trace(llm_server):
    """A session is a Langfuse trace with its session id, user, tags, name, first input and last output."""
    exporter = start(capture_content=True, dialects="openinference,langfuse")
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("refund-flow", user_id="u-42", tags=["prod", "eu"]) as session:
        support("where is A-1?", client)
        support("refund it", client)
    (trace,) = langfuse_traces(exporter).values()
    assert trace.id == session.trace_id
    assert trace.name == "refund-flow"
    assert trace.session_id == session.id
    assert trace.user_id == "u-42"
    assert trace.tags == ["eu", "prod"]  # from tag.tags: Langfuse does not read session.tags
    assert trace.input == "where is A-1?"
    assert trace.output == "Hello! You said: refund it"
    assert trace.metadata == {"session_state": "success"}


def test_observation_types_and_generation_content(llm_server):
    """Each span becomes the right observation type; a generation keeps its messages as input and output."""
    exporter = start(capture_content=True)
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("typed"):
        support("hello", client)
    (trace,) = langfuse_traces(exporter).values()
    types = {o.name: o.type for o in trace.observations}
    assert types == {
        "typed": "CHAIN",
        "invoke_agent support": "AGENT",
        "execute_tool look_up": "TOOL",
        f"chat {USAGE_DETAILS}": "GENERATION",
    }
    generation = next(o for o in trace.observations if o.type == "GENERATION")
    assert json.loads(generation.input)[0]["parts"][0]["content"] == "hello"
    assert json.loads(generation.output)[0]["parts"][0]["content"] == "Hello! You said: hello"
    assert generation.model == USAGE_DETAILS
    tool = next(o for o in trace.observations if o.type == "TOOL")
    assert json.loads(tool.input) == {"order": "A-1"}
    agent = next(o for o in trace.observations if o.type == "AGENT")
    assert json.loads(agent.input)["question"] == "hello"  # input.value from the captured arguments


def test_usage_and_cost_of_a_generation_with_the_langfuse_dialect(llm_server):
    """With the langfuse dialect, a generation's usage is Langfuse's exact split and its cost is the SDK's."""
    exporter = start(dialects="openinference,langfuse")
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("priced"):
        client.chat.completions.create(model=USAGE_DETAILS, messages=[{"role": "user", "content": "hi"}])
    (trace,) = langfuse_traces(exporter).values()
    (generation,) = [o for o in trace.observations if o.type == "GENERATION"]
    assert generation.usage == {
        "input": INPUT_TOKENS - CACHE_READ_TOKENS,
        "output": OUTPUT_TOKENS - REASONING_TOKENS,
        "total": INPUT_TOKENS + OUTPUT_TOKENS,
        "input_cached_tokens": CACHE_READ_TOKENS,
        "output_reasoning_tokens": REASONING_TOKENS,
    }
    assert generation.cost == {"total": pytest.approx((INPUT_TOKENS * 1.0 + OUTPUT_TOKENS * 2.0) / 1e6)}


def test_cache_writes_without_the_langfuse_dialect_leave_an_unknown_usage_type(llm_server):
    """Without the langfuse dialect Langfuse keeps the conventions' new cache-write key as a usage type of
    its own (its reader predates the rename); the dialect's usage details replace it with the exact split."""
    client = anthropic.Anthropic(base_url=llm_server.anthropic_url, api_key="k", max_retries=0)
    expected_input = INPUT_TOKENS - CACHE_READ_TOKENS - CACHE_WRITE_TOKENS
    found = {}
    for dialects in ("openinference", "openinference,langfuse"):
        exporter = start(dialects=dialects)
        with sdk.session("cached"):
            client.messages.create(
                model=USAGE_DETAILS, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        (trace,) = langfuse_traces(exporter).values()
        found[dialects] = next(o for o in trace.observations if o.type == "GENERATION").usage
        sdk.shutdown()
    assert found["openinference"]["input"] == expected_input  # the OpenInference alias is read
    assert found["openinference"]["input_cache_creation"] == CACHE_WRITE_TOKENS
    assert found["openinference"]["cache_write.input_tokens"] == CACHE_WRITE_TOKENS  # a stray type
    assert found["openinference,langfuse"] == {
        "input": expected_input,
        "output": OUTPUT_TOKENS,
        "total": INPUT_TOKENS + OUTPUT_TOKENS,
        "input_cached_tokens": CACHE_READ_TOKENS,
        "input_cache_creation": CACHE_WRITE_TOKENS,
    }


def test_cost_is_never_a_usage_type(llm_server):
    """The cost attribute (`llm.cost.total`) is read as the cost, never as a token type."""
    exporter = start(dialects="openinference")
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("cost"):
        client.chat.completions.create(model=USAGE_DETAILS, messages=[{"role": "user", "content": "hi"}])
    (trace,) = langfuse_traces(exporter).values()
    (generation,) = [o for o in trace.observations if o.type == "GENERATION"]
    assert set(generation.usage) <= {
        "input",
        "output",
        "total",
        "input_cached_tokens",
        "input_cache_creation",
        "output_reasoning_tokens",
    }
    assert generation.cost["total"] > 0


def test_running_session_is_listed_by_its_marker():
    """A running session's live marker gives Langfuse the trace's session and user before the session ends."""
    exporter = start()
    session = sdk.start_session("long", user_id="u-7", tags=["live"])
    try:
        markers = wait_for_marker(exporter)
        (trace,) = langfuse_model.ingest(markers).values()
        assert (trace.session_id, trace.user_id, trace.tags) == (session.id, "u-7", ["live"])
        assert [o.type for o in trace.observations] == ["CHAIN"]
    finally:
        sdk.end_session(session)


def wait_for_marker(exporter: InMemorySpanExporter, timeout: float = 5.0) -> list:
    """The exported `session.start` markers, once there is one (a session gets one after 1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sdk.flush()
        markers = [s for s in exporter.get_finished_spans() if s.name == "session.start"]
        if markers:
            return markers
        time.sleep(0.05)
    raise AssertionError(f"no live marker within {timeout} s")
