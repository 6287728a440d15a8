"""Every attribute name the SDK emits is in the documented table (docs/attributes.md), with its source.

Two checks: a run that exercises every feature that writes attributes (sessions of every kind, the
decorators, the openai and anthropic clients with their options, streams, errors, scores, the
live marker, both dialects, content capture) compares every exported name with the table; and a
scan of the SDK's source finds every name-like string literal (the framework integrations'
attributes included, which need their frameworks to run) and asks for it in the table.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import anthropic
import openai
import pytest
from llm_server import USAGE_DETAILS, LLMServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdk
from sdk import context

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "attributes.md"
_TICKED = re.compile(r"`([^`]+)`")
_LITERAL = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
NOT_TELEMETRY = frozenset(
    {
        # modules, entry points and files the SDK patches, imports or reads
        "agents.run", "agents.tracing.provider", "anthropic._base_client", "anthropic.resources.messages.messages",
        "autogen_core._single_threaded_agent_runtime", "concurrent.futures.process", "langchain_core.tracers.context",
        "langgraph.pregel._runner", "langgraph.pregel.main", "langgraph.run_with_retry", "langgraph.arun_with_retry",
        "openai.resources.chat.completions.completions", "openai.resources.embeddings",
        "openai.resources.responses.responses", "sdk.export.meters", "sdk.instrumentation.agents",
        "sdk.instrumentation.anthropic", "sdk.instrumentation.autogen", "sdk.instrumentation.langgraph",
        "sdk.instrumentation.openai", "sdk.instrumentation.genai", "sdk.instrumentation.openai_responses",
        "opentelemetry.metrics", "opentelemetry.exporter.otlp.proto.common._internal._encode_attributes",
        "sessiontrace.hooks", "pricing.json", "pyproject.toml", "sessiontrace.toml",
        "sessions.db",
        # patch names shown in messages, process-state registrations, the public API's names
        "anthropic.messages.create", "anthropic.messages.stream", "openai.chat.completions.create",
        "openai.embeddings.create", "openai.responses.create", "openai_agents.bridge", "openai_agents.registration",
        "langgraph.handler", "langgraph.registration", "frameworks.owned", "sdk.event",
        # gRPC channel options, a Slack URL fragment a secret pattern looks for, WSGI environ keys
        "grpc.enable_retries", "grpc.initial_reconnect_backoff_ms", "grpc.max_reconnect_backoff_ms",
        "grpc.min_reconnect_backoff_ms", "hooks.slack", "wsgi.version",
        # event types of the OpenAI Responses stream the instrumentation reads
        "response.completed", "response.failed", "response.incomplete", "response.output_text.delta",
        # attributes of other instrumentations' spans the SDK reads (outbound trust), and the
        # name of an older SDK's cost attribute it still reads from old trace files
        "http.url", "net.peer.name", "url.full", "gen_ai.usage.cost_usd",
        # the name of a custom Agents SDK span with none of its own, a link attribute's value, a logger
        "openai_agents.custom", "notebook.cell", "sessiontrace.notebook",
        # modules of other OpenTelemetry packages sdk/foreign.py looks for, a loopback host name
        "opentelemetry.exporter.otlp.proto.grpc", "opentelemetry.exporter.otlp.proto.http",
        "openinference.instrumentation.openai", "openinference.instrumentation.anthropic",
        "opentelemetry.instrumentation.openai", "opentelemetry.instrumentation.openai_v2",
        "opentelemetry.instrumentation.genai.openai", "opentelemetry.instrumentation.anthropic",
        "opentelemetry.util.genai.invocation", "localhost.localdomain",
        # gen_ai.provider.name values the openinference dialect maps to OpenInference's provider names
        "aws.bedrock", "azure.ai.inference", "azure.ai.openai", "gcp.gemini", "gcp.gen_ai", "gcp.vertex_ai",
    }
)  # fmt: skip


def documented() -> set[str]:
    """The names in the first column of every table of docs/attributes.md."""
    names: set[str] = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            names.update(_TICKED.findall(line.split("|")[1]))
    return names


def sources() -> list[Path]:
    """The code that can emit names: the SDK and the notebook extension."""
    return sorted([*(ROOT / "sdk").rglob("*.py"), *(ROOT / "notebook_ext").glob("*.py")])


@sdk.task
def plan(goal: str) -> str:
    return goal


@sdk.tool
def look_up(order: str) -> str:
    return order


@sdk.agent(name="helper")
def helper(question: str) -> str:
    return look_up(plan(question))


@sdk.workflow
def flow() -> str:
    return helper("q")


def exercise(llm_server: LLMServer) -> list[ReadableSpan]:
    """Every feature that writes attributes, once; the exported spans."""
    exporter = InMemorySpanExporter()
    sdk.init(
        service_name="table",
        exporter=exporter,
        export_interval=0.05,
        metrics=False,
        session_store="memory",
        dialects="openinference,langfuse",
        capture_content=True,
        auto_start_session=True,
        accept_session_from="all",
    )
    oai = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    ant = anthropic.Anthropic(base_url=llm_server.anthropic_url, api_key="k", max_retries=0)
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with sdk.session("everything", user_id="u", tags=["t"]) as outer:
        flow()
        oai.chat.completions.create(
            model=USAGE_DETAILS,
            messages=prompt,
            temperature=0.1,
            top_p=0.9,
            max_tokens=10,
            stop="x",
            seed=1,
            n=2,
            frequency_penalty=0.1,
            presence_penalty=0.1,
            response_format={"type": "json_object"},
            service_tier="auto",
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
        oai.chat.completions.create(model="tool-call", messages=prompt)
        for _ in oai.chat.completions.create(
            model="gpt-4o-mini", messages=prompt, stream=True, stream_options={"include_usage": True}
        ):
            pass
        oai.responses.create(
            model="gpt-4o-mini",
            input="hi",
            instructions="be brief",
            conversation="conv_1",
            previous_response_id="resp_0",
            text={"format": {"type": "text"}},
        )
        oai.embeddings.create(
            model="text-embedding-3-small", input=["a"], encoding_format="float", dimensions=3
        )
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="error-500", messages=prompt)
        ant.messages.create(
            model=USAGE_DETAILS,
            max_tokens=5,
            system="be brief",
            stop_sequences=["x"],
            messages=[{"role": "user", "content": "hi"}],
        )
        with ant.messages.stream(
            model="gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            s.until_done()
        with sdk.session("inner"):
            pass
        headers = context.inject({})
        with sdk.session("continued", parent=headers):
            pass
        deadline = time.monotonic() + 5
        while not outer.marked and time.monotonic() < deadline:
            sdk.flush()
            time.sleep(0.05)
    sdk.score(outer, "helpful", 1.0, comment="ok", source="llm")
    with pytest.raises(ValueError, match="boom"), sdk.session("failing"):
        raise ValueError("boom")
    with sdk.session("budgeted", budget=sdk.Budget(max_llm_calls=1, on_exceed="warn")):
        for _ in range(2):  # the second call is over the budget: warned about (logged), and sent
            oai.chat.completions.create(model="gpt-4o-mini", messages=prompt)
    for _ in range(2):
        sdk.start_session("resumed", session_id="r-1", resume=True).end()
    sdk.shutdown()
    oai.close()
    ant.close()
    return list(exporter.get_finished_spans())


def emitted_names(spans: list[ReadableSpan]) -> set[str]:
    names: set[str] = set()
    for span in spans:
        names |= set(span.attributes or {})
        for event in span.events:
            names.add(event.name)
            names |= set(event.attributes or {})
        for link in span.links:
            names |= set(link.attributes or {})
        names |= set(span.resource.attributes)
    return names


def test_every_emitted_attribute_is_documented(llm_server):
    """Every span, event, link and resource attribute name a run of every feature exports is in docs/attributes.md."""
    names = emitted_names(exercise(llm_server))
    assert len(names) > 80  # the run did exercise the features
    missing = sorted(names - documented())
    assert missing == [], f"add these to docs/attributes.md: {missing}"


def literals() -> dict[str, str]:
    """Name-like string literals in the SDK's code (docstrings left out): name -> a file using it."""
    found: dict[str, str] = {}
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        docstrings |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _LITERAL.match(node.value)
            ):
                found.setdefault(node.value, str(path.relative_to(ROOT)))
    return found


def test_every_name_in_the_code_is_documented():
    """Every attribute, event and metric name written in the SDK's code is in docs/attributes.md
    (module paths and other non-telemetry strings are listed in this test)."""
    table = documented()
    missing = sorted(
        f"{name} ({where})" for name, where in literals().items() if name not in table | NOT_TELEMETRY
    )
    assert missing == [], (
        f"add these to docs/attributes.md (or, if they are no telemetry, to NOT_TELEMETRY): {missing}"
    )


def test_the_table_names_nothing_the_sdk_does_not_emit():
    """Every name in docs/attributes.md is written somewhere in the SDK's code (the table does not drift)."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources())
    stale = sorted(name for name in documented() if name not in code and not _composed(name, code))
    assert stale == []


def _composed(name: str, code: str) -> bool:
    """Names the code builds from a prefix and a key (``langfuse.trace.metadata.`` + ``session_state``)."""
    prefix, _, last = name.rpartition(".")
    return f'"{prefix}.' in code and f'"{last}"' in code
