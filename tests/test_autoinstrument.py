"""OpenTelemetry's ``opentelemetry-instrument`` finds the SDK's instrumentors by their entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from llm_server import LLMServer
from otlp_receiver import OTLPReceiver

from sdk import autoinstrument
from sdk.instrumentation import instrumentor

SCRIPT = """
import sys
import openai
import sdk

client = openai.OpenAI(base_url=sys.argv[1], api_key="test-key", max_retries=0)
with sdk.session("zero-code"):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
print("instrumented:", sdk.instrumentation.base.is_applied("openai.chat.completions.create"))
"""


def test_the_instrumentors_are_registered_for_opentelemetry_instrument():
    """openai, anthropic, autogen, the OpenAI Agents SDK and LangGraph are in the opentelemetry_instrumentor entry-point group, as classes in OpenTelemetry's instrumentor shape declaring the SDK's ranges."""
    found = {
        e.name: e for e in entry_points(group="opentelemetry_instrumentor") if e.value.startswith("sdk.")
    }
    assert set(found) == {"openai", "anthropic", "autogen", "openai_agents", "langgraph"}
    for name, entry in found.items():
        cls = entry.load()
        assert issubclass(cls, autoinstrument._EntryPointInstrumentor)
        made = cls()
        assert list(made.instrumentation_dependencies()) == list(
            instrumentor(name).instrumentation_dependencies()
        )
        assert callable(made.instrument)
        assert callable(made.uninstrument)


@pytest.mark.subprocess
def test_opentelemetry_instrument_records_an_openai_call_with_no_init(tmp_path):
    """A program that never calls sdk.init(), run under `opentelemetry-instrument`, has its openai call recorded in its session and exported over OTLP."""
    command = Path(sys.executable).parent / "opentelemetry-instrument"
    if not command.exists():
        pytest.skip("opentelemetry-instrumentation's command is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    with LLMServer() as server, OTLPReceiver() as receiver:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            SESSIONTRACE_METRICS="false",
            SESSIONTRACE_RAISE_INTERNAL_ERRORS="1",
        )
        child = subprocess.run(
            [str(command), sys.executable, "-c", textwrap.dedent(SCRIPT), server.openai_url],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        spans = receiver.accepted_spans
    assert child.returncode == 0, child.stderr
    assert "instrumented: True" in child.stdout
    (session,) = [
        s for s in spans if s.name == "zero-code" and s.attributes.get("session.state") == "success"
    ]
    (llm,) = [s for s in spans if s.attributes.get("sessiontrace.span.kind") == "llm"]
    assert llm.attributes["session.id"] == session.attributes["session.id"]
    assert llm.trace_id == session.trace_id
