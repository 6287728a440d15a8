"""Backend dialects (sdk/dialects.py): the OpenInference attributes Phoenix reads, added to what is exported."""

from __future__ import annotations

import json
from typing import Any

import anthropic
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
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

import sdk
from sdk.dialects import DialectTranslator
from sdk.export.scrub import scrub_spans
from sdk.redaction import scrubber_for
from sdk.settings import ConfigError, load_config

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
OI_KEYS = ("openinference.span.kind", "input.value", "output.value", "tag.tags", "agent.name")


def exported(**settings: Any) -> InMemorySpanExporter:
    """The SDK started with an in-memory exporter behind its export pipeline (where dialects apply)."""
    exporter = InMemorySpanExporter()
    sdk.init(
        service_name="tests",
        exporter=exporter,
        export_interval=0.05,
        metrics=False,
        session_store="none",
        **settings,
    )
    return exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert sdk.flush()
    return {span.name: span for span in exporter.get_finished_spans()}


@sdk.task
def plan(goal: str) -> list[str]:
    return [goal, "done"]


@sdk.tool
def look_up(order: str) -> str:
    return f"{order}: shipped"


@sdk.agent(name="helper")
def helper(question: str) -> str:
    return look_up(plan(question)[0])


@sdk.workflow
def flow() -> str:
    return helper("A-1")


def ask(client: openai.OpenAI, text: str, model: str = "gpt-4o-mini") -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return str(reply.choices[0].message.content)


def test_every_sdk_span_gets_its_openinference_kind(llm_server):
    """Sessions, tasks, workflows, agents, tools, LLM calls and scores carry `openinference.span.kind`; raw spans do not."""
    exporter = exported()
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("chat", user_id="u-1", tags=["prod", "eu"]) as session:
        flow()
        ask(client, "hello")
        with trace.get_tracer("tests.raw").start_as_current_span("raw"):
            pass
    sdk.score(session, "helpful", 1.0)
    spans = by_name(exporter)
    kinds = {name: span.attributes.get("openinference.span.kind") for name, span in spans.items()}
    assert kinds == {
        "chat": "CHAIN",
        "flow": "CHAIN",
        "plan": "CHAIN",
        "invoke_agent helper": "AGENT",
        "execute_tool look_up": "TOOL",
        "chat gpt-4o-mini": "LLM",
        "session.score": "EVALUATOR",
        "raw": None,
    }
    assert spans["chat"].attributes["tag.tags"] == ("prod", "eu")
    assert spans["invoke_agent helper"].attributes["agent.name"] == "helper"
    assert spans["chat"].attributes["user.id"] == "u-1"


def sdk_span(name: str, attributes: dict[str, Any], scope: str = "sessiontrace") -> ReadableSpan:
    """A finished span as the SDK's tracer (or another, `scope`) makes it."""
    return ReadableSpan(
        name=name,
        context=SpanContext(1, 2, False, TraceFlags(1)),
        attributes=BoundedAttributes(attributes=attributes),
        instrumentation_scope=InstrumentationScope(scope),
    )


def test_live_marker_is_a_chain_with_the_sessions_tags():
    """The live `session.start` marker of a running session is a CHAIN with the session's tags."""
    translator = DialectTranslator(("openinference",))
    marker = sdk_span(
        "session.start",
        {"sessiontrace.span.kind": "session.start", "session.tags": ("a",), "session.id": "s"},
    )
    translated = translator.attributes_of(marker)
    assert translated is not None
    assert translated["openinference.span.kind"] == "CHAIN"
    assert translated["tag.tags"] == ("a",)
    assert translated["session.id"] == "s"  # the span's own attributes kept
    cell = sdk_span("cell[3]", {"notebook.cell.execution_count": 3})
    assert (translator.attributes_of(cell) or {})["openinference.span.kind"] == "CHAIN"


def test_spans_the_sdk_did_not_make_pass_through_unchanged():
    """A span without the SDK's kind, or from another tracer, gets nothing added and is exported as
    the same object."""
    translator = DialectTranslator(("openinference", "langfuse"))
    raw = sdk_span("GET /", {"http.method": "GET", "session.id": "s"})
    assert translator.attributes_of(raw) is None
    other = sdk_span("execute_tool x", {"sessiontrace.span.kind": "tool"}, scope="someone.else")
    assert translator.attributes_of(other) is None
    scrubber = scrubber_for(load_config())
    assert scrub_spans([raw, other], scrubber, translator.attributes_of) == [raw, other]


def test_one_copy_of_a_span_carries_both_dialect_attributes_and_scrubbing():
    """A span the dialect changes is copied once, with its name, context and timing, the dialect's
    attributes added and its secrets scrubbed."""
    span = sdk_span(
        "execute_tool x", {"sessiontrace.span.kind": "tool", "gen_ai.tool.name": "x", "note": SECRET}
    )
    (out,) = scrub_spans(
        [span], scrubber_for(load_config()), DialectTranslator(("openinference",)).attributes_of
    )
    assert out is not span
    assert (out.name, out.context, out.start_time, out.instrumentation_scope) == (
        span.name,
        span.context,
        span.start_time,
        span.instrumentation_scope,
    )
    assert out.attributes["openinference.span.kind"] == "TOOL"
    assert out.attributes["tool.name"] == "x"
    assert SECRET not in out.attributes["note"]


def test_captured_arguments_and_results_become_input_and_output_values():
    """With capture on, a task's arguments and result are `input.value`/`output.value` (JSON), not `sessiontrace.*`."""
    exporter = exported(capture_content=True)
    with sdk.session("s"):
        plan("ship it")
        look_up("A-9")
    spans = by_name(exporter)
    task = spans["plan"].attributes
    assert json.loads(task["input.value"]) == {"goal": "ship it"}
    assert json.loads(task["output.value"]) == ["ship it", "done"]
    assert task["input.mime_type"] == task["output.mime_type"] == "application/json"
    assert "sessiontrace.input" not in task
    assert "sessiontrace.output" not in task
    tool = spans["execute_tool look_up"].attributes
    assert json.loads(tool["gen_ai.tool.call.arguments"]) == {"order": "A-9"}
    assert json.loads(tool["input.value"]) == {"order": "A-9"}  # beside the GenAI names, not instead
    assert json.loads(tool["gen_ai.tool.call.result"]) == json.loads(tool["output.value"]) == "A-9: shipped"
    assert tool["input.mime_type"] == tool["output.mime_type"] == "application/json"
    assert tool["tool.name"] == tool["gen_ai.tool.name"] == "look_up"


def test_session_shows_its_first_question_and_last_answer(llm_server):
    """With capture on, the session span's input is the first user message, its output the last answer."""
    exporter = exported(capture_content=True)
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("conversation"):
        ask(client, "first question")
        last = ask(client, "second question")
    spans = exporter.get_finished_spans() if sdk.flush() else []
    root = next(s for s in spans if s.name == "conversation").attributes
    assert root["input.value"] == "first question"
    assert root["output.value"] == last == "Hello! You said: second question"
    assert root["input.mime_type"] == root["output.mime_type"] == "text/plain"
    for llm in (s.attributes for s in spans if s.name == "chat gpt-4o-mini"):
        assert "input.value" not in llm  # its messages are gen_ai.input.messages / gen_ai.output.messages
        assert "output.value" not in llm


def test_no_content_without_capture(llm_server):
    """With content capture off (the default) no input or output value is exported, only the kinds."""
    exporter = exported()
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("quiet"):
        ask(client, "private question")
        plan("private goal")
        look_up("private order")
    assert sdk.flush()
    for span in exporter.get_finished_spans():
        assert not {"input.value", "output.value"} & set(span.attributes), span.name
        assert "private" not in json.dumps(dict(span.attributes))
        assert "openinference.span.kind" in span.attributes


def test_session_input_and_output_are_redacted(llm_server):
    """A secret in the question never reaches the session's or the call's exported input and output."""
    exporter = exported(capture_content=True)
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("leaky"):
        ask(client, f"my key is {SECRET}")
    spans = by_name(exporter)
    assert "[REDACTED]" in spans["leaky"].attributes["input.value"]
    assert "[REDACTED]" in spans["leaky"].attributes["output.value"]
    for span in spans.values():
        assert SECRET not in json.dumps(dict(span.attributes)), span.name


def test_dialects_none_adds_nothing(llm_server):
    """`dialects="none"` exports only the GenAI conventions and the SDK's own names."""
    exporter = exported(dialects="none", capture_content=True)
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("plain", tags=["t"]):
        ask(client, "hi")
        plan("x")
    spans = by_name(exporter)
    for span in spans.values():
        assert not set(OI_KEYS) & set(span.attributes), span.name
    assert json.loads(spans["plan"].attributes["sessiontrace.input"]) == {"goal": "x"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("openinference", ("openinference",)),
        ("langfuse, openinference", ("langfuse", "openinference")),
        ("none", ()),
        (["openinference", "openinference"], ("openinference",)),
    ],
)
def test_dialects_setting_values(value, expected):
    """The `dialects` setting takes names (a list or comma-separated) or `none`."""
    assert load_config({"dialects": value}).dialects == expected


def test_an_unknown_dialect_is_a_clear_error():
    """An unknown dialect name is refused with the key, the value's layer and the known names."""
    with pytest.raises(
        ConfigError, match=r"dialects .*unknown dialect 'phoenix'; known: openinference, langfuse"
    ):
        load_config({"dialects": "phoenix"})


def test_dialects_default_is_openinference():
    """With nothing set, the OpenInference dialect is on (its cost: docs/performance.md)."""
    assert load_config().dialects == ("openinference",)


def test_anthropic_cache_write_uses_the_current_name_and_the_openinference_one(llm_server):
    """Cache writes are `gen_ai.usage.cache_write.input_tokens` (not the old `cache_creation`), and Phoenix's name too."""
    exporter = exported()
    client = anthropic.Anthropic(base_url=llm_server.anthropic_url, api_key="k", max_retries=0)
    with sdk.session("cached"):
        client.messages.create(
            model=USAGE_DETAILS, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    attrs = by_name(exporter)[f"chat {USAGE_DETAILS}"].attributes
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS  # includes cache reads and writes
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ_TOKENS
    assert attrs["gen_ai.usage.cache_write.input_tokens"] == CACHE_WRITE_TOKENS
    assert attrs["llm.token_count.prompt_details.cache_write"] == CACHE_WRITE_TOKENS
    assert "gen_ai.usage.cache_creation.input_tokens" not in attrs
    assert "gen_ai.system" not in attrs


def test_openai_reasoning_and_cached_tokens(llm_server):
    """OpenAI's reasoning and cached token counts are recorded under the current GenAI names."""
    exporter = exported()
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    with sdk.session("reasoning"):
        ask(client, "think", model=USAGE_DETAILS)
    attrs = by_name(exporter)[f"chat {USAGE_DETAILS}"].attributes
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == CACHE_READ_TOKENS
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == REASONING_TOKENS
    assert attrs["llm.token_count.prompt_details.cache_read"] == CACHE_READ_TOKENS
    assert attrs["llm.token_count.completion_details.reasoning"] == REASONING_TOKENS


def test_llm_spans_carry_openinference_model_provider_and_token_counts(llm_server):
    """An LLM span has the model, provider and the server's token counts under OpenInference's names
    too (earlier Phoenix versions read only those); an embeddings call is an EMBEDDING."""
    exporter = exported()
    oai = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    ant = anthropic.Anthropic(base_url=llm_server.anthropic_url, api_key="k", max_retries=0)
    with sdk.session("models"):
        ask(oai, "hi", model=USAGE_DETAILS)
        ant.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        oai.embeddings.create(model="text-embedding-3-small", input=["a"])
    spans = by_name(exporter)
    chat = spans[f"chat {USAGE_DETAILS}"].attributes
    assert chat["llm.model_name"] == USAGE_DETAILS
    assert (chat["llm.provider"], chat["llm.system"]) == ("openai", "openai")
    assert chat["llm.token_count.prompt"] == INPUT_TOKENS
    assert chat["llm.token_count.completion"] == OUTPUT_TOKENS
    assert chat["llm.token_count.total"] == INPUT_TOKENS + OUTPUT_TOKENS
    claude = spans["chat claude-x"].attributes
    assert (claude["llm.provider"], claude["llm.system"], claude["llm.model_name"]) == (
        "anthropic",
        "anthropic",
        "claude-x",
    )
    assert claude["llm.token_count.prompt"] == claude["gen_ai.usage.input_tokens"] > 0
    assert claude["llm.token_count.completion"] == claude["gen_ai.usage.output_tokens"] > 0
    embedding = spans["embeddings text-embedding-3-small"].attributes
    assert embedding["openinference.span.kind"] == "EMBEDDING"
    assert embedding["embedding.model_name"] == "text-embedding-3-small"
    assert "llm.model_name" not in embedding
    oai.close()
    ant.close()


def test_other_providers_get_no_guessed_openinference_provider():
    """A provider OpenInference has no name for (a framework's) gets no `llm.provider` or `llm.system`."""
    translator = DialectTranslator(("openinference",))
    span = sdk_span(
        "chat m",
        {
            "sessiontrace.span.kind": "llm",
            "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": 3,
        },
    )
    attributes = translator.attributes_of(span) or {}
    assert attributes["llm.model_name"] == "m"
    assert attributes["llm.token_count.prompt"] == 3
    assert "llm.token_count.total" not in attributes  # no output count: no total invented
    assert not {"llm.provider", "llm.system"} & set(attributes)
