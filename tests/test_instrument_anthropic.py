"""The anthropic client, instrumented: the real client library against the loopback fake API."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anthropic
import pytest
import wrapt
from anthropic.resources.messages.messages import AsyncMessages, Messages
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, answer_for
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import sdk
from sdk.instrumentation import base as instrument
from sdk.testing import capture

MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TESTS = Path(__file__).resolve().parent
COST = (INPUT_TOKENS * 1.0 + OUTPUT_TOKENS * 5.0) / 1e6


@pytest.fixture
def client(anthropic_client):
    """The real anthropic client against the loopback server (closed after the test)."""
    return anthropic_client


@pytest.fixture
def aclient(llm_server):
    """Makes an async client; use it as ``async with aclient() as client`` inside the event loop."""
    return lambda: anthropic.AsyncAnthropic(
        base_url=llm_server.anthropic_url, api_key="test-key", max_retries=0
    )


def llm_spans(captured):
    return [s for s in captured.spans() if s.attributes.get("sessiontrace.span.kind") == "llm"]


def only_llm_span(captured):
    spans = llm_spans(captured)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_messages_create_span(captured, client):
    """messages.create is one CLIENT span in the session, with the GenAI request and response attributes."""
    with sdk.session("s") as session:
        message = client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stop_sequences=["END"]
        )
    assert type(message) is anthropic.types.Message
    assert message.content[0].text == answer_for(MESSAGES[0]["content"])
    span = only_llm_span(captured)
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.parent.span_id == captured.named("s").context.span_id
    attrs = span.attributes
    assert attrs["session.id"] == session.id
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert tuple(attrs["gen_ai.request.stop_sequences"]) == ("END",)
    assert attrs["gen_ai.response.id"] == "msg_1"
    assert attrs["gen_ai.response.model"] == MODEL
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("end_turn",)
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert attrs["llm.cost.total"] == pytest.approx(COST)
    assert captured.named("s").attributes["session.llm.cost_usd"] == pytest.approx(COST)


@pytest.mark.skipif(
    not hasattr(importlib.import_module("anthropic._base_client"), "start_api_call_span"),
    reason="anthropic < 1.14 starts no span of its own",
)
def test_the_clients_own_span_is_not_doubled(captured, client):
    """anthropic's built-in span is not started for calls the SDK records; without the SDK it is."""
    client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert [s.name for s in captured.spans()] == [f"chat {MODEL}"]
    sdk.uninstrument("anthropic")
    client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert [s.name for s in captured.spans()][1:] == ["anthropic.messages.create"]


def test_three_inits_one_span(client):
    """After three init() calls a call is still one span, and each method is wrapped once."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    for name in ("one", "two", "three"):
        sdk.init(exporter="none", service_name=name, span_processors=[processor])
    for method in ("create", "stream"):
        wrapper = vars(Messages)[method]
        assert isinstance(wrapper, wrapt.FunctionWrapper)
        assert not isinstance(wrapper.__wrapped__, wrapt.FunctionWrapper)
    client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        stream.until_done()
    assert [s.name for s in exporter.get_finished_spans()] == [f"chat {MODEL}"] * 2


def test_parent_is_the_tool_span(captured, client):
    """A call made inside an @sdk.tool function is a child of the tool's span."""

    @sdk.tool
    def summarize():
        return client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    with sdk.session("s"):
        summarize()
    assert only_llm_span(captured).parent.span_id == captured.named("execute_tool summarize").context.span_id


def test_async_create(captured, aclient):
    """AsyncMessages.create is recorded and returns the client's Message."""

    async def main():
        async with aclient() as client:
            return await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)

    assert type(asyncio.run(main())) is anthropic.types.Message
    assert only_llm_span(captured).attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS


def test_create_stream_full_closed_abandoned(captured, client):
    """stream=True: read to the end, closed early, and dropped unread each end the span once."""
    stream = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    assert isinstance(stream, anthropic.Stream)
    assert [e.type for e in stream][-1] == "message_stop"
    stream = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    next(stream)
    stream.close()

    def abandon():
        for _event in client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True):
            break

    abandon()
    gc.collect()
    spans = llm_spans(captured)
    assert [s.attributes["sessiontrace.stream.end"] for s in spans] == ["completed", "closed", "abandoned"]
    full = spans[0].attributes
    assert full["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert full["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert tuple(full["gen_ai.response.finish_reasons"]) == ("end_turn",)
    assert full["gen_ai.response.time_to_first_chunk"] > 0
    assert spans[1].attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS  # from message_start


def test_stream_helper(captured, client):
    """messages.stream(): the span starts when the manager is entered and ends with the stream."""
    with sdk.session("s"):
        manager = client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)
        assert llm_spans(captured) == []
        with manager as stream:
            assert stream.get_final_text() == answer_for(MESSAGES[0]["content"])
            final = stream.get_final_message()
    assert final.usage.output_tokens == OUTPUT_TOKENS
    span = only_llm_span(captured)
    assert span.parent.span_id == captured.named("s").context.span_id
    assert span.attributes["sessiontrace.stream.end"] == "completed"
    assert span.attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert span.attributes["gen_ai.request.stream"] is True


def test_stream_helper_left_early(captured, client):
    """Leaving the stream helper's block after one event ends the span as closed."""
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        for _event in stream:
            break
    assert only_llm_span(captured).attributes["sessiontrace.stream.end"] == "closed"


def test_async_streams(captured, aclient):
    """Async: create(stream=True) read fully, closed early, and the async stream helper."""

    async def main():
        async with aclient() as client:
            stream = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
            assert isinstance(stream, anthropic.AsyncStream)
            async for _ in stream:
                pass
            stream = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
            await stream.__anext__()
            await stream.close()
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as helper:
                text = await helper.get_final_text()
            assert text == answer_for(MESSAGES[0]["content"])

    asyncio.run(main())
    ends = [s.attributes["sessiontrace.stream.end"] for s in llm_spans(captured)]
    assert ends == ["completed", "closed", "completed"]


def test_tool_use_is_recorded(client):
    """A tool_use block (streamed or not) is a gen_ai.tool.call event; its input only with capture."""
    for capture_content in (False, True):
        captured = capture(capture_content=capture_content)
        client.messages.create(model="tool-call", max_tokens=64, messages=MESSAGES)
        for _ in client.messages.create(model="tool-call", max_tokens=64, messages=MESSAGES, stream=True):
            pass
        for span in llm_spans(captured):
            assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("tool_use",)
            (event,) = [e for e in span.events if e.name == "gen_ai.tool.call"]
            assert event.attributes["gen_ai.tool.name"] == "get_weather"
            assert event.attributes["gen_ai.tool.call.id"] == "toolu_1"
            if capture_content:
                assert json.loads(event.attributes["gen_ai.tool.call.arguments"]) == {"city": "Paris"}
            else:
                assert "gen_ai.tool.call.arguments" not in event.attributes


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [("error-429", anthropic.RateLimitError, 429), ("error-500", anthropic.InternalServerError, 500)],
)
def test_http_errors(captured, client, model, error, status):
    """The client's exception passes through unchanged; the span records it."""
    with pytest.raises(error):
        client.messages.create(model=model, max_tokens=64, messages=MESSAGES)
    span = only_llm_span(captured)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == error.__qualname__
    assert span.attributes["http.response.status_code"] == status


def test_malformed_and_stream_errors(captured, client):
    """A non-JSON body, a non-JSON event and an error event raise the client's errors; spans record them."""
    with pytest.raises(json.JSONDecodeError):
        client.messages.create(model="malformed", max_tokens=64, messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        for _ in client.messages.create(model="malformed", max_tokens=64, messages=MESSAGES, stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError):
        for _ in client.messages.create(model="stream-error", max_tokens=64, messages=MESSAGES, stream=True):
            pass
    spans = llm_spans(captured)
    assert len(spans) == 3
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)


def test_unexpected_shape(captured, client):
    """No usage and unknown fields: the caller gets what the client made; the span records the rest."""
    instrumented = client.messages.create(model="no-usage", max_tokens=64, messages=MESSAGES)
    sdk.uninstrument()
    plain = client.messages.create(model="no-usage", max_tokens=64, messages=MESSAGES)
    assert type(instrumented) is type(plain)
    assert instrumented.model_dump() == plain.model_dump()
    span = llm_spans(captured)[0]
    assert span.attributes["gen_ai.response.id"] == "msg_1"
    assert "gen_ai.usage.input_tokens" not in span.attributes


def test_content_capture(client):
    """With capture on, system instructions and messages are recorded in the conventions' layout."""
    captured = capture(capture_content=True)
    client.messages.create(model=MODEL, max_tokens=64, system="Be brief.", messages=MESSAGES)
    attrs = only_llm_span(captured).attributes
    assert json.loads(attrs["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": MESSAGES[0]["content"]}]}
    ]
    output = json.loads(attrs["gen_ai.output.messages"])
    assert output[0]["parts"] == [{"type": "text", "content": answer_for(MESSAGES[0]["content"])}]
    assert output[0]["finish_reason"] == "end_turn"


def test_no_content_by_default(captured, client):
    """Without capture, nothing of the prompt or answer is on the span."""
    client.messages.create(model=MODEL, max_tokens=64, system="Be brief.", messages=MESSAGES)
    text = json.dumps(dict(only_llm_span(captured).attributes))
    assert "Paris" not in text
    assert "brief" not in text


def test_uninstrument_restores_the_originals(captured, client):
    """uninstrument('anthropic') and shutdown() restore both methods; init() applies them again."""
    originals = {m: vars(Messages)[m].__wrapped__ for m in ("create", "stream")}
    async_original = vars(AsyncMessages)["create"].__wrapped__
    sdk.uninstrument("anthropic")
    assert {m: vars(Messages)[m] for m in originals} == originals
    assert vars(AsyncMessages)["create"] is async_original
    assert not any(name.startswith("anthropic") for name in instrument.applied())
    capture()
    assert instrument.is_applied("anthropic.messages.create")
    sdk.shutdown()
    assert {m: vars(Messages)[m] for m in originals} == originals


@pytest.mark.subprocess
def test_client_imported_after_init(llm_server):
    """anthropic imported after init() is patched on import: one span per call, the native one suppressed."""
    code = f"""
        import sys
        from sdk.testing import capture
        captured = capture()
        assert "anthropic" not in sys.modules
        import anthropic
        client = anthropic.Anthropic(base_url={llm_server.anthropic_url!r}, api_key="k", max_retries=0)
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{{"role": "user", "content": "hi"}}])
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=[{{"role": "user", "content": "hi"}}]) as s:
            s.until_done()
        print(sorted(s.name for s in captured.spans()))
        """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    env.pop("SESSIONTRACE_RAISE_INTERNAL_ERRORS", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['chat claude-haiku-4-5', 'chat claude-haiku-4-5']"
