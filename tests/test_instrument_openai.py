"""The openai client, instrumented: the real client library against the loopback fake API."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
import wrapt
from llm_server import EMBEDDING, INPUT_TOKENS, OUTPUT_TOKENS, answer_for
from openai.resources.chat.completions.completions import AsyncCompletions, Completions
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import sdk
from sdk.instrumentation import base as instrument
from sdk.testing import capture

MODEL = "gpt-4o-mini"
PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def client(openai_client):
    """The real openai client against the loopback server (closed after the test)."""
    return openai_client


@pytest.fixture
def aclient(llm_server):
    """Makes an async client; use it as ``async with aclient() as client`` inside the event loop."""
    return lambda: openai.AsyncOpenAI(base_url=llm_server.openai_url, api_key="test-key", max_retries=0)


def llm_spans(captured):
    return [s for s in captured.spans() if s.attributes.get("sessiontrace.span.kind") == "llm"]


def only_llm_span(captured):
    spans = llm_spans(captured)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def all_text(captured) -> str:
    """Every attribute and event of every span, as text (what could reach an exporter)."""
    out = []
    for span in captured.spans():
        out.append(json.dumps(dict(span.attributes), default=str))
        for event in span.events:
            out.append(json.dumps(dict(event.attributes), default=str))
    return "\n".join(out)


def test_chat_create_is_one_client_span_under_the_session(captured, client):
    """A chat call in a session is one CLIENT span, child of the session, with the GenAI attributes."""
    with sdk.session("s") as session:
        result = client.chat.completions.create(
            model=MODEL, messages=PROMPT, temperature=0.3, max_tokens=50, top_p=0.9, seed=7, stop="END"
        )
    assert type(result) is openai.types.chat.ChatCompletion
    assert result.choices[0].message.content == answer_for(PROMPT[0]["content"])
    span = only_llm_span(captured)
    session_span = captured.named("s")
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.parent.span_id == session_span.context.span_id
    assert span.context.trace_id == session_span.context.trace_id
    attrs = span.attributes
    assert attrs["session.id"] == session.id
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert "gen_ai.system" not in attrs  # deprecated for gen_ai.provider.name
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.request.seed"] == 7
    assert tuple(attrs["gen_ai.request.stop_sequences"]) == ("END",)
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["llm.cost.total"] == pytest.approx((INPUT_TOKENS * 0.15 + OUTPUT_TOKENS * 0.6) / 1e6)
    assert "gen_ai.request.stream" not in attrs
    assert span.status.status_code is not StatusCode.ERROR


def test_session_span_carries_llm_totals(captured, client):
    """When the session ends its span has the LLM calls, tokens, cost and errors of its calls."""
    with sdk.session("totals") as session:
        client.chat.completions.create(model=MODEL, messages=PROMPT)
        client.chat.completions.create(model=MODEL, messages=PROMPT)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="error-429", messages=PROMPT)
    attrs = captured.named("totals").attributes
    assert attrs["session.llm.calls"] == 3
    assert attrs["session.llm.input_tokens"] == 2 * INPUT_TOKENS
    assert attrs["session.llm.output_tokens"] == 2 * OUTPUT_TOKENS
    assert attrs["session.llm.cost_usd"] == pytest.approx(
        2 * (INPUT_TOKENS * 0.15 + OUTPUT_TOKENS * 0.6) / 1e6
    )
    assert attrs["session.errors"] == 1
    assert session.usage.llm_calls == 3
    assert sdk.stats().llm_calls == 3


def test_three_inits_still_one_span_and_one_patch(client):
    """After three init() calls (each rebuilding the pipeline) a call is still one span, patched once."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    for name in ("one", "two", "three"):
        sdk.init(exporter="none", service_name=name, span_processors=[processor])
    wrapper = vars(Completions)["create"]
    assert isinstance(wrapper, wrapt.FunctionWrapper)
    assert not isinstance(wrapper.__wrapped__, wrapt.FunctionWrapper), "create is wrapped more than once"
    assert instrument.applied().count("openai.chat.completions.create") == 1
    with sdk.session("s"):
        client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert len([s for s in exporter.get_finished_spans() if s.name == f"chat {MODEL}"]) == 1


def test_parent_is_the_decorator_span(captured, client):
    """A call made inside an @sdk.agent function is a child of the agent's span."""

    @sdk.agent
    def planner():
        return client.chat.completions.create(model=MODEL, messages=PROMPT)

    with sdk.session("s"):
        planner()
    span = only_llm_span(captured)
    assert span.parent.span_id == captured.named("invoke_agent planner").context.span_id


def test_async_chat_create(captured, aclient):
    """The async client's create is recorded the same way, and returns the same type."""

    async def main():
        async with aclient() as client:
            with sdk.session("s"):
                return await client.chat.completions.create(model=MODEL, messages=PROMPT)

    result = asyncio.run(main())
    assert type(result) is openai.types.chat.ChatCompletion
    span = only_llm_span(captured)
    assert span.attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert span.parent.span_id == captured.named("s").context.span_id


def test_patched_methods_keep_their_signature():
    """The patch is transparent to introspection: same signature, same coroutine-ness, same name."""
    import inspect

    sdk.init(exporter="none")
    patched = vars(AsyncCompletions)["create"]
    original = patched.__wrapped__
    assert inspect.signature(patched) == inspect.signature(original)
    assert inspect.iscoroutinefunction(patched) == inspect.iscoroutinefunction(original)
    assert patched.__name__ == "create"


def test_stream_consumed_fully(captured, client):
    """A stream read to the end ends its span with usage, finish reason and time to first chunk."""
    with sdk.session("s"):
        stream = client.chat.completions.create(
            model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
        assert isinstance(stream, openai.Stream)
        assert llm_spans(captured) == []  # still open while the stream is read
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == answer_for(PROMPT[0]["content"])
    span = only_llm_span(captured)
    attrs = span.attributes
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["sessiontrace.stream.end"] == "completed"
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] <= (span.end_time - span.start_time) / 1e9
    assert span.parent.span_id == captured.named("s").context.span_id


def test_stream_closed_early(captured, client):
    """close() after one chunk ends the span (as closed) with what was read."""
    stream = client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
    next(stream)
    stream.close()
    span = only_llm_span(captured)
    assert span.attributes["sessiontrace.stream.end"] == "closed"
    assert span.attributes["gen_ai.response.id"] == "chatcmpl-1"
    assert "gen_ai.response.time_to_first_chunk" in span.attributes


def test_stream_with_block_exit_ends_the_span(captured, client):
    """Leaving a `with stream:` block early ends the span; the block gets the proxy, not the raw stream."""
    with client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True) as stream:
        assert isinstance(stream, openai.Stream)
        for _chunk in stream:
            break
    span = only_llm_span(captured)
    assert span.attributes["sessiontrace.stream.end"] == "closed"


def test_stream_abandoned_is_ended_by_the_garbage_collector(captured, client):
    """A stream broken out of and dropped ends its span as abandoned when collected."""

    def read_one():
        stream = client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
        for _chunk in stream:
            break

    read_one()
    gc.collect()
    span = only_llm_span(captured)
    assert span.attributes["sessiontrace.stream.end"] == "abandoned"


def test_async_stream_full_closed_and_abandoned(captured, aclient):
    """Async streams: read to the end, closed with aclose(), and dropped unread each end their span."""

    async def main():
        async with aclient() as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
            )
            assert isinstance(stream, openai.AsyncStream)
            chunks = [c async for c in stream]
            assert chunks
            stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
            await stream.__anext__()
            await stream.aclose()
            async with await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True) as s:
                await s.__anext__()
            stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
            await stream.__anext__()
            response = stream.response
            del stream
            gc.collect()
            await response.aclose()

    asyncio.run(main())
    ends = [s.attributes["sessiontrace.stream.end"] for s in llm_spans(captured)]
    assert ends == ["completed", "closed", "closed", "abandoned"]
    assert llm_spans(captured)[0].attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS


def test_stream_tool_calls_are_recorded(client):
    """Tool calls requested in a stream are events on the span; arguments only with content capture."""
    for capture_content in (False, True):
        captured = capture(capture_content=capture_content)
        stream = client.chat.completions.create(model="tool-call", messages=PROMPT, stream=True)
        for _ in stream:
            pass
        span = only_llm_span(captured)
        assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("tool_calls",)
        (event,) = [e for e in span.events if e.name == "gen_ai.tool.call"]
        assert event.attributes["gen_ai.tool.name"] == "get_weather"
        assert event.attributes["gen_ai.tool.call.id"] == "call_1"
        if capture_content:
            assert json.loads(event.attributes["gen_ai.tool.call.arguments"]) == {"city": "Paris"}
        else:
            assert "gen_ai.tool.call.arguments" not in event.attributes


def test_tool_calls_of_a_response_are_recorded(captured, client):
    """Tool calls in a non-streamed response are events with the tool's name and call id."""
    client.chat.completions.create(model="tool-call", messages=PROMPT, tools=[])
    span = only_llm_span(captured)
    (event,) = [e for e in span.events if e.name == "gen_ai.tool.call"]
    assert event.attributes["gen_ai.tool.name"] == "get_weather"
    assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("tool_calls",)


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [("error-429", openai.RateLimitError, 429), ("error-500", openai.InternalServerError, 500)],
)
def test_http_errors_pass_through_and_are_recorded(captured, client, model, error, status):
    """The client's exception reaches the caller unchanged; the span has error.type and the status."""
    with pytest.raises(error) as raised:
        client.chat.completions.create(model=model, messages=PROMPT)
    assert raised.value.status_code == status
    span = only_llm_span(captured)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == error.__qualname__
    assert span.attributes["http.response.status_code"] == status
    assert [e.name for e in span.events] == ["exception"]
    assert sdk.stats().internal_errors == 0


def test_malformed_json_passes_through(captured, client):
    """A body that is not JSON raises what the client raises; the span records it."""
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="malformed", messages=PROMPT)
    span = only_llm_span(captured)
    assert span.attributes["error.type"] == "JSONDecodeError"


def test_errors_inside_streams_pass_through(captured, client):
    """An error event mid-stream and a malformed event raise the client's error and end the span."""
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="stream-error", messages=PROMPT, stream=True):
            pass
    with pytest.raises(json.JSONDecodeError):
        for _ in client.chat.completions.create(model="malformed", messages=PROMPT, stream=True):
            pass
    spans = llm_spans(captured)
    assert [s.attributes["sessiontrace.stream.end"] for s in spans] == ["error", "error"]
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)


def test_unexpected_shape_returns_what_the_client_returned(captured, client):
    """A response without usage and with new fields reaches the caller exactly as the client made it."""
    instrumented = client.chat.completions.create(model="no-usage", messages=PROMPT)
    sdk.uninstrument()
    plain = client.chat.completions.create(model="no-usage", messages=PROMPT)
    assert type(instrumented) is type(plain)
    assert instrumented.model_dump() == plain.model_dump()
    assert instrumented.brand_new_field == {"nested": [1, 2, 3]}
    span = only_llm_span(captured)
    assert span.attributes["gen_ai.response.id"] == "chatcmpl-1"
    assert "gen_ai.usage.input_tokens" not in span.attributes
    assert "llm.cost.total" not in span.attributes
    assert span.status.status_code is not StatusCode.ERROR


def test_a_bug_in_span_code_never_changes_the_result(captured, client, monkeypatch):
    """An exception in the SDK's response handling is counted; the caller gets the client's result."""
    from sdk.instrumentation import openai as patches

    def broken(call, result):
        raise RuntimeError("bug in the SDK")

    monkeypatch.setitem(patches._HANDLERS, "chat", (broken, patches._ChatStream))
    monkeypatch.setenv("SESSIONTRACE_RAISE_INTERNAL_ERRORS", "0")
    result = client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert result.choices[0].message.content == answer_for(PROMPT[0]["content"])
    assert sdk.stats().internal_errors == 1
    assert len(llm_spans(captured)) == 1  # the span still ended


def test_responses_create_sync_async_and_streaming(captured, client, aclient):
    """responses.create: sync, async, and streamed (sync and async) each make one span."""
    result = client.responses.create(model=MODEL, input="Hi there", max_output_tokens=40, temperature=0.5)
    assert result.output_text == answer_for("Hi there")
    events = [e.type for e in client.responses.create(model=MODEL, input="Hi there", stream=True)]
    assert events[-1] == "response.completed"

    async def main():
        async with aclient() as client:
            await client.responses.create(model=MODEL, input="Hi there")
            stream = await client.responses.create(model=MODEL, input="Hi there", stream=True)
            async for _ in stream:
                pass

    asyncio.run(main())
    spans = llm_spans(captured)
    assert len(spans) == 4
    for span in spans:
        assert span.name == f"chat {MODEL}"
        assert span.attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
        assert span.attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
        assert span.attributes["gen_ai.response.id"] == "resp_1"
        assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == ("completed",)
    assert spans[0].attributes["gen_ai.request.max_tokens"] == 40
    assert spans[0].attributes["gen_ai.request.temperature"] == 0.5
    assert spans[1].attributes["sessiontrace.stream.end"] == "completed"
    assert "gen_ai.response.time_to_first_chunk" in spans[3].attributes


def test_responses_stream_error_event_marks_the_span(captured, client):
    """An `error` event in a responses stream (which the client yields, not raises) marks the span (openai < 1.98 yields it untyped, as `event: error`)."""
    events = list(client.responses.create(model="stream-error", input="Hi", stream=True))
    assert [e.type or getattr(e, "event", None) for e in events][-1] == "error"
    span = only_llm_span(captured)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "server_error"


def assert_complete(span, response_id: str, finish: str) -> None:
    """The span holds what the response said: id, usage, finish reason."""
    assert span.attributes["gen_ai.response.id"] == response_id
    assert span.attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert span.attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert tuple(span.attributes["gen_ai.response.finish_reasons"]) == (finish,)


def test_with_raw_response_records_the_parsed_result(captured, client):
    """with_raw_response (LangChain's non-streaming path): chat and responses spans get id, usage and finish reason."""
    with sdk.session("s"):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT)
        assert raw.headers["x-request-id"] == "req_test"
        assert raw.parse().choices[0].message.content == answer_for(PROMPT[0]["content"])
        raw = client.responses.with_raw_response.create(model=MODEL, input="Hi there")
        assert raw.parse().output_text == answer_for("Hi there")
    chat, responses = llm_spans(captured)
    assert_complete(chat, "chatcmpl-1", "stop")
    assert_complete(responses, "resp_1", "completed")
    assert chat.parent.span_id == captured.named("s").context.span_id


def test_with_raw_response_async_and_streamed(captured, aclient):
    """with_raw_response on the async client, plain and stream=True: the streamed span ends when its stream ends."""

    async def main():
        async with aclient() as client:
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT)
            raw.parse()
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
            )
            stream = raw.parse()
            assert isinstance(stream, openai.AsyncStream)
            assert raw.parse() is stream  # parsed again: the same (recorded) stream
            assert len(llm_spans(captured)) == 1  # the streamed call is still open
            async for _chunk in stream:
                pass

    asyncio.run(main())
    plain, streamed = llm_spans(captured)
    assert_complete(plain, "chatcmpl-1", "stop")
    assert_complete(streamed, "chatcmpl-1", "stop")
    assert streamed.attributes["sessiontrace.stream.end"] == "completed"


def test_with_streaming_response_ends_when_the_stream_is_read(captured, client):
    """with_streaming_response, streamed: the span is open until the parsed stream is read, then holds its result."""
    with client.responses.with_streaming_response.create(
        model=MODEL, input="Hi there", stream=True
    ) as response:
        stream = response.parse()
        assert llm_spans(captured) == []  # the headers arrived; the answer has not
        events = [event.type for event in stream]
    assert events[-1] == "response.completed"
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=PROMPT) as response:
        assert response.parse().choices[0].finish_reason == "stop"
    streamed, plain = llm_spans(captured)
    assert_complete(streamed, "resp_1", "completed")
    assert streamed.attributes["sessiontrace.stream.end"] == "completed"
    assert_complete(plain, "chatcmpl-1", "stop")


def test_async_with_streaming_response_ends_when_the_stream_is_read(captured, aclient):
    """The async client's with_streaming_response (the Agents SDK's streamed path): the span ends with the stream."""

    async def main():
        async with aclient() as client:
            manager = client.responses.with_streaming_response.create(
                model=MODEL, input="Hi there", stream=True
            )
            async with manager as response:
                stream = await response.parse()
                assert llm_spans(captured) == []
                events = [event.type async for event in stream]
            assert events[-1] == "response.completed"
            async with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
            ) as response:
                async for _chunk in await response.parse():
                    pass

    asyncio.run(main())
    responses, chat = llm_spans(captured)
    assert_complete(responses, "resp_1", "completed")
    assert_complete(chat, "chatcmpl-1", "stop")
    assert {responses.attributes["sessiontrace.stream.end"], chat.attributes["sessiontrace.stream.end"]} == {
        "completed"
    }


def test_streaming_response_closed_or_dropped_unread_ends_the_span(captured, client):
    """A streaming response closed before it is parsed, or dropped unparsed, still ends its span once."""
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=PROMPT):
        pass
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=PROMPT, stream=True
    ) as r:
        next(iter(r.parse()))  # one chunk, then the block closes the response
    client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT, stream=True)
    gc.collect()
    spans = llm_spans(captured)
    assert len(spans) == 3
    assert "gen_ai.usage.input_tokens" not in spans[0].attributes
    assert spans[1].attributes["sessiontrace.stream.end"] == "closed"
    assert "sessiontrace.stream.end" not in spans[2].attributes


def test_embeddings(captured, client, aclient):
    """embeddings.create (sync and async): operation embeddings, input tokens, the vector unchanged."""
    result = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.data[0].embedding == pytest.approx(EMBEDDING)

    async def main():
        async with aclient() as client:
            return await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])

    assert len(asyncio.run(main()).data) == 2
    spans = llm_spans(captured)
    assert [s.name for s in spans] == ["embeddings text-embedding-3-small"] * 2
    attrs = spans[0].attributes
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert "gen_ai.usage.output_tokens" not in attrs
    assert attrs["llm.cost.total"] == pytest.approx(INPUT_TOKENS * 0.02 / 1e6)


def test_unknown_model_has_no_cost_and_is_counted(captured, client):
    """A model missing from the pricing table: no cost attribute, no error, counted as unpriced."""
    client.chat.completions.create(model="my-private-model", messages=PROMPT)
    span = only_llm_span(captured)
    assert "llm.cost.total" not in span.attributes
    assert span.attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert sdk.stats().llm_calls_unpriced == 1
    assert sdk.stats().internal_errors == 0


def test_pricing_override_prices_a_private_model(client):
    """The pricing setting adds a model; its calls get a cost from it."""
    captured = capture(pricing={"my-private-model": {"input": 1.0, "output": 2.0}})
    client.chat.completions.create(model="my-private-model", messages=PROMPT)
    cost = only_llm_span(captured).attributes["llm.cost.total"]
    assert cost == pytest.approx((INPUT_TOKENS * 1.0 + OUTPUT_TOKENS * 2.0) / 1e6)


def test_no_content_without_capture(captured, client):
    """By default neither the prompt nor the completion appears anywhere in the spans."""
    client.chat.completions.create(model=MODEL, messages=PROMPT)
    text = all_text(captured)
    assert "Paris" not in text
    assert "gen_ai.input.messages" not in text
    assert "Hello" not in text


def test_content_capture_uses_the_conventions_layout(client):
    """With capture on, input and output messages are JSON in gen_ai.input/output.messages."""
    captured = capture(capture_content=True)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, *PROMPT]
    )
    attrs = only_llm_span(captured).attributes
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": PROMPT[0]["content"]}]},
    ]
    assert json.loads(attrs["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": answer_for(PROMPT[0]["content"])}],
            "finish_reason": "stop",
        }
    ]


def test_capture_follows_the_otel_environment_variable(client, monkeypatch):
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true turns capture on."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    captured = capture()
    client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert "gen_ai.input.messages" in only_llm_span(captured).attributes


def test_capture_per_session(client):
    """capture_content can be turned on for one session only."""
    captured = capture()
    with sdk.session("on", overrides={"capture_content": True}):
        client.chat.completions.create(model=MODEL, messages=PROMPT)
    with sdk.session("off"):
        client.chat.completions.create(model=MODEL, messages=PROMPT)
    on, off = llm_spans(captured)
    assert "gen_ai.input.messages" in on.attributes
    assert "gen_ai.input.messages" not in off.attributes


def test_uninstrument_and_shutdown_restore_the_originals(captured, client):
    """sdk.uninstrument() and sdk.shutdown() put the original methods back; init() patches again."""
    original = vars(Completions)["create"].__wrapped__
    sdk.uninstrument("openai")
    assert vars(Completions)["create"] is original
    client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert llm_spans(captured) == []
    captured = capture()
    assert vars(Completions)["create"] is not original
    client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert len(llm_spans(captured)) == 1
    sdk.shutdown()
    assert vars(Completions)["create"] is original
    with pytest.raises(ValueError, match="unknown library"):
        sdk.uninstrument("langchain")


def test_uninstrument_also_stops_methods_captured_while_patched(captured, client):
    """A method captured while patched (with_raw_response keeps the bound create) records nothing after uninstrument()."""
    raw = client.chat.completions.with_raw_response
    sdk.uninstrument("openai")
    raw.create(model=MODEL, messages=PROMPT).parse()
    assert llm_spans(captured) == []
    sdk.instrument("openai")
    raw.create(model=MODEL, messages=PROMPT).parse()
    assert len(llm_spans(captured)) == 1


def test_instrument_setting_chooses_libraries(client):
    """instrument=['anthropic'] leaves openai alone; instrument='none' patches nothing."""
    captured = capture(instrument=["anthropic"])
    assert not instrument.is_applied("openai.chat.completions.create")
    client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert llm_spans(captured) == []
    capture(instrument="none")
    assert not any(name.startswith(("openai", "anthropic")) for name in instrument.applied())
    capture(instrument="all")
    assert instrument.is_applied("openai.chat.completions.create")


def test_disabled_sdk_records_nothing(client):
    """With the SDK disabled the call goes straight through."""
    sdk.init(enabled=False)
    result = client.chat.completions.create(model=MODEL, messages=PROMPT)
    assert result.usage.prompt_tokens == INPUT_TOKENS
    assert sdk.stats().llm_calls == 0


def _run_child(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    env.pop("SESSIONTRACE_RAISE_INTERNAL_ERRORS", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.subprocess
def test_client_imported_after_init(llm_server):
    """openai imported after init() is patched by the post-import hook: one span per call."""
    out = _run_child(
        f"""
        import sys
        from sdk.testing import capture
        captured = capture()
        assert "openai" not in sys.modules
        import openai
        client = openai.OpenAI(base_url={llm_server.openai_url!r}, api_key="k", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
        print(sorted(s.name for s in captured.spans()))
        """
    )
    assert out.strip() == "['chat gpt-4o-mini']"


@pytest.mark.subprocess
def test_genai_metrics_are_recorded(llm_server):
    """Token usage, duration and time to first chunk go to the OpenTelemetry metrics API."""
    out = _run_child(
        f"""
        import json
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        import openai
        from sdk.testing import capture
        capture()
        client = openai.OpenAI(base_url={llm_server.openai_url!r}, api_key="k", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}], stream=True, stream_options={{"include_usage": True}}):
            pass
        found = {{}}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        if hasattr(p, "count"):
                            found[m.name] = [p.count, p.sum, dict(p.attributes)]
                        else:
                            found[m.name] = [None, p.value, dict(p.attributes)]
        print(json.dumps(found))
        """
    )
    found = json.loads(out)
    assert found["gen_ai.client.inference.operation.input_tokens"][:2] == [2, 2 * INPUT_TOKENS]
    assert found["gen_ai.client.inference.operation.output_tokens"][:2] == [2, 2 * OUTPUT_TOKENS]
    assert found["gen_ai.client.inference.usage.input_tokens"][1] == 2 * INPUT_TOKENS
    assert found["gen_ai.client.inference.usage.output_tokens"][1] == 2 * OUTPUT_TOKENS
    assert found["gen_ai.client.inference.usage.input_tokens"][2]["gen_ai.token.modality"] == "unknown"
    assert found["gen_ai.client.inference.duration"][0] == 2
    assert found["gen_ai.client.inference.time_to_first_chunk"][0] == 1
    assert found["sessiontrace.llm.cost_usd"][1] == pytest.approx(
        2 * (INPUT_TOKENS * 0.15 + OUTPUT_TOKENS * 0.6) / 1e6
    )
    assert "gen_ai.client.token.usage" not in found  # replaced in the current GenAI conventions
    attrs = found["gen_ai.client.inference.duration"][2]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
