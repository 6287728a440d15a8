"""The OpenAI Agents SDK, real, against the loopback model server: its runs as spans in their conversation's session."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from frameworks import check_sessions, children, llm_spans, loopback_only, open_traces, work_spans
from llm_server import LLMServer, answer_for

import sdk
from sdk.instrumentation import agents as bridge
from sdk.testing import capture

agents = pytest.importorskip("agents")
from agents import (  # noqa: E402
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    ModelSettings,
    RunConfig,
    RunContextWrapper,
    Runner,
    SQLiteSession,
    function_tool,
    input_guardrail,
)
from openai import AsyncOpenAI  # noqa: E402

GROUP = ["openai_agents.group_id"]
SETTINGS = ModelSettings(include_usage=True)  # chat completions streams report usage only when asked


@sdk.tool(name="user.weather_lookup")
def lookup(city: str, conversation: str) -> str:
    """The user's own span inside the tool, naming the conversation it works for."""
    sdk.event("lookup", conversation=conversation)
    return f"sunny in {city}"


@function_tool
def get_weather(ctx: RunContextWrapper[dict], city: str) -> str:
    """The weather in a city."""
    return lookup(city, ctx.context["conversation"])


@input_guardrail
async def polite(ctx: RunContextWrapper[dict], agent: Agent, text: object) -> GuardrailFunctionOutput:
    """Trips on the word 'rude'."""
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="rude" in str(text))


WEATHER = Agent(
    name="weather", instructions="Weather.", model="script", tools=[get_weather], model_settings=SETTINGS
)
TRIAGE = Agent(
    name="triage",
    instructions="Route.",
    model="script",
    handoffs=[WEATHER],
    model_settings=SETTINGS,
    input_guardrails=[polite],
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No OpenAI platform export: no key, and the SDK's default processors replaced (ours is kept)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agents.set_trace_processors([])
    with loopback_only():
        yield


def run(fresh_llm_server: LLMServer, work, api: str = "responses"):
    """Run `work()` in a new event loop, the Agents SDK pointed at the loopback server through a client of that loop."""

    async def main():
        async with AsyncOpenAI(base_url=fresh_llm_server.openai_url, api_key="test", max_retries=0) as client:
            agents.set_default_openai_client(client, use_for_tracing=False)
            agents.set_default_openai_api(api)
            return await work()

    return asyncio.run(main())


async def turn(text: str, conversation: str, *, stream: bool, **kwargs) -> str:
    """One user turn through triage -> handoff -> weather tool -> answer."""
    context = {"conversation": conversation}
    if stream:
        result = Runner.run_streamed(TRIAGE, text, context=context, **kwargs)
        async for _event in result.stream_events():
            pass
    else:
        result = await Runner.run(TRIAGE, text, context=context, **kwargs)
    return str(result.final_output)


def test_a_run_is_a_workflow_of_agents_handoff_tool_and_one_span_per_model_call(fresh_llm_server):
    """Inside a session: workflow -> agents -> model calls, handoff, tool (and the user's span in it), all in the session's trace."""
    captured = capture(service_name="tests")
    with sdk.session("support") as session:
        assert run(fresh_llm_server, lambda: turn("weather?", "c", stream=False)) == answer_for("weather?")
    spans = captured.spans()
    check_sessions(spans, {session.id: session.trace_id_int})
    workflow = captured.named("invoke_workflow Agent workflow")
    assert workflow.parent.span_id == session.span.get_span_context().span_id
    assert children(spans, workflow) == ["invoke_agent triage", "invoke_agent weather"]
    triage, weather = captured.named("invoke_agent triage"), captured.named("invoke_agent weather")
    assert children(spans, triage) == ["guardrail polite", "chat script", "handoff weather"]
    assert children(spans, weather) == ["chat script", "execute_tool get_weather", "chat script"]
    assert children(spans, captured.named("execute_tool get_weather")) == ["execute_tool user.weather_lookup"]
    assert len(llm_spans(spans)) == len(fresh_llm_server.requests) == 3
    handoff = captured.named("handoff weather").attributes
    assert (handoff["openai_agents.handoff.from"], handoff["openai_agents.handoff.to"]) == (
        "triage",
        "weather",
    )
    assert captured.named("guardrail polite").attributes["openai_agents.guardrail.triggered"] is False
    tool = captured.named("execute_tool get_weather").attributes
    assert (tool["gen_ai.operation.name"], tool["gen_ai.tool.name"]) == ("execute_tool", "get_weather")
    assert "gen_ai.tool.call.arguments" not in tool  # content is not captured by default
    assert triage.attributes["gen_ai.agent.name"] == "triage"
    assert workflow.attributes["openai_agents.trace_id"].startswith("trace_")


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_model_spans_hold_usage_and_response_ids_in_every_mode(fresh_llm_server, api, stream):
    """Responses and chat completions, streamed or not: one model span per request, each with usage and its response id."""
    captured = capture(service_name="tests")
    with sdk.session("s"):
        run(fresh_llm_server, lambda: turn("weather?", "c", stream=stream), api)
    model = llm_spans(captured.spans())
    assert len(model) == len(fresh_llm_server.requests) == 3
    for span in model:
        assert span.attributes["gen_ai.usage.input_tokens"] > 0
        assert span.attributes["gen_ai.response.id"].startswith(
            "resp_" if api == "responses" else "chatcmpl-"
        )
    assert len({s.attributes["gen_ai.response.id"] for s in model}) == 3


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_ten_conversations_five_turns_concurrently_each_in_its_own_session(fresh_llm_server, api):
    """Acceptance: 10 conversations x 5 streamed turns at once, session_from group_id, no session code: every span in its conversation's session, none doubled."""
    captured = capture(service_name="tests", session_from=GROUP, session_store="none")

    async def conversation(i: int) -> None:
        for k in range(5):
            text = f"c{i} turn {k}"
            config = RunConfig(group_id=f"c{i}", workflow_name="support")
            assert await turn(text, f"c{i}", stream=True, run_config=config) == answer_for(text)

    async def main() -> None:
        await asyncio.gather(*(conversation(i) for i in range(10)))

    run(fresh_llm_server, main, api)
    traces = open_traces()
    assert set(traces) == {f"c{i}" for i in range(10)}
    spans = captured.spans()
    per_session = check_sessions(spans, traces)
    assert len(set(per_session.values())) == 1  # every conversation recorded the same work
    for span in work_spans(spans):
        for event in span.events:
            if event.name == "lookup":
                assert event.attributes["conversation"] == span.attributes["session.id"]
    names = Counter(s.name for s in work_spans(spans) if s.attributes["session.id"] == "c3")
    assert names == {
        "invoke_workflow support": 5,
        "invoke_agent triage": 5,
        "invoke_agent weather": 5,
        "guardrail polite": 5,
        "handoff weather": 5,
        "execute_tool get_weather": 5,
        "execute_tool user.weather_lookup": 5,
        "chat script": 15,
    }
    assert len(llm_spans(spans)) == len(fresh_llm_server.requests) == 150
    workflow = next(s for s in spans if s.name == "invoke_workflow support")
    assert workflow.attributes["gen_ai.conversation.id"] == workflow.attributes["session.id"]
    session = sdk.sessions()[0].session
    assert session.span.attributes["gen_ai.conversation.id"] == session.id
    assert session.span.attributes["sessiontrace.session.source"] == "openai_agents.group_id"


def test_session_objects_and_conversation_ids_are_sources_too(fresh_llm_server, tmp_path):
    """A run with an Agents SDK Session (SQLiteSession) or a conversation_id goes in the session with that id, when its source is on."""
    capture(service_name="tests", session_from=["openai_agents.session", "openai_agents.conversation_id"])
    memory = SQLiteSession("user-42", str(tmp_path / "memory.db"))

    async def main() -> None:
        await turn("one", "user-42", stream=False, session=memory)
        await turn("two", "user-42", stream=True, session=memory)
        await turn("three", "conv-9", stream=False, conversation_id="conv-9")

    run(fresh_llm_server, main)
    traces = open_traces()
    assert set(traces) == {"user-42", "conv-9"}
    assert len(asyncio.run(memory.get_items())) > 2  # the Agents SDK's own memory worked as usual


def test_a_trace_the_user_opens_with_a_group_id_puts_its_runs_in_that_session(fresh_llm_server):
    """`with agents.trace(..., group_id=X)` around several runs outside any session: the trace and all its runs are in session X."""
    captured = capture(service_name="tests", session_from=GROUP)

    async def main() -> None:
        with agents.trace("outer", group_id="conv-outer"):
            await turn("one", "conv-outer", stream=False)
            await turn("two", "conv-outer", stream=True)

    run(fresh_llm_server, main)
    traces = open_traces()
    assert set(traces) == {"conv-outer"}
    spans = captured.spans()
    check_sessions(spans, traces)
    outer = captured.named("invoke_workflow outer")
    assert outer.attributes["gen_ai.conversation.id"] == "conv-outer"
    assert Counter(children(spans, outer)) == {"invoke_agent triage": 2, "invoke_agent weather": 2}


def test_mapping_is_off_by_default_and_inside_a_session_the_session_wins(fresh_llm_server):
    """Without session_from a group's runs are in no session (but name their conversation); inside a session they stay in it."""
    captured = capture(service_name="tests")
    run(fresh_llm_server, lambda: turn("one", "g", stream=False, run_config=RunConfig(group_id="g")))
    assert sdk.sessions() == []
    workflow = captured.named("invoke_workflow Agent workflow")
    assert "session.id" not in workflow.attributes
    assert workflow.attributes["gen_ai.conversation.id"] == "g"
    captured = capture(service_name="tests", session_from=GROUP)
    with sdk.session("mine") as mine:
        run(fresh_llm_server, lambda: turn("two", "g", stream=True, run_config=RunConfig(group_id="g")))
    assert {s.attributes["session.id"] for s in work_spans(captured.spans())} == {mine.id}


def test_a_conversation_resumes_in_its_trace_after_its_session_ended(fresh_llm_server):
    """With a session store, a conversation whose session ended (idle, restart) continues in the same trace, next segment."""
    captured = capture(service_name="tests", session_from=GROUP, session_store="memory")
    run(
        fresh_llm_server, lambda: turn("one", "conv-r", stream=False, run_config=RunConfig(group_id="conv-r"))
    )
    first = sdk.sessions()[0].session
    sdk.end_session("conv-r")
    run(fresh_llm_server, lambda: turn("two", "conv-r", stream=True, run_config=RunConfig(group_id="conv-r")))
    second = sdk.sessions()[0].session
    assert (second.id, second.trace_id, second.segment) == ("conv-r", first.trace_id, 2)
    traces = {"conv-r": first.trace_id_int}
    check_sessions(captured.spans(), traces)


def test_a_tripped_guardrail_is_recorded_and_the_exception_reaches_the_program(fresh_llm_server):
    """A guardrail that trips: its span says triggered, the run's exception reaches the caller unchanged."""
    captured = capture(service_name="tests")
    with sdk.session("s"), pytest.raises(InputGuardrailTripwireTriggered):
        run(fresh_llm_server, lambda: turn("you are rude", "c", stream=False))
    assert captured.named("guardrail polite").attributes["openai_agents.guardrail.triggered"] is True


def test_set_trace_processors_keeps_the_bridge_in_either_order(fresh_llm_server):
    """agents.set_trace_processors([]) (the way to turn off the OpenAI export) after init() keeps our processor, once."""
    captured = capture(service_name="tests")
    agents.set_trace_processors([])
    agents.set_trace_processors([])
    processors = agents.tracing.get_trace_provider()._multi_processor._processors
    assert [type(p).__name__ for p in processors] == ["SessiontraceProcessor"]
    with sdk.session("s"):
        run(fresh_llm_server, lambda: turn("one", "c", stream=False))
    assert len([s for s in captured.spans() if s.name == "invoke_workflow Agent workflow"]) == 1


def test_the_bridge_records_model_calls_no_client_instrumentation_saw(fresh_llm_server):
    """With the openai client not instrumented, the bridge records each model call itself: one span per request, with usage and cost counted."""
    captured = capture(service_name="tests", instrument=["openai_agents"])
    for api in ("responses", "chat_completions"):
        with sdk.session("s") as session:
            run(fresh_llm_server, lambda: turn("one", "c", stream=True), api)
    model = llm_spans(captured.spans())
    assert len(model) == len(fresh_llm_server.requests) == 6
    for span in model:
        assert span.attributes["gen_ai.usage.output_tokens"] > 0
        assert span.attributes["gen_ai.request.model"] == "script"
        assert span.parent is not None
    assert session.usage.llm_calls == 3


def test_tool_content_is_captured_only_when_asked(fresh_llm_server):
    """With capture_content, tool spans record their arguments and result (redacted); without, never."""
    captured = capture(service_name="tests", capture_content=True)
    with sdk.session("s"):
        run(fresh_llm_server, lambda: turn("weather?", "c", stream=False))
    tool = captured.named("execute_tool get_weather").attributes
    assert "Paris" in tool["gen_ai.tool.call.arguments"]
    assert "sunny" in tool["gen_ai.tool.call.result"]


def test_uninstrument_makes_the_bridge_inert(fresh_llm_server):
    """After sdk.uninstrument(), Agents SDK runs make no spans of ours; instrumenting again brings them back."""
    captured = capture(service_name="tests")
    sdk.uninstrument("openai_agents")
    run(fresh_llm_server, lambda: turn("one", "c", stream=False))
    assert not [s for s in captured.spans() if s.name.startswith("invoke_")]
    sdk.instrument("openai_agents")
    run(fresh_llm_server, lambda: turn("two", "c", stream=False))
    assert [s.name for s in captured.spans() if s.name.startswith("invoke_workflow")] == [
        "invoke_workflow Agent workflow"
    ]
    assert bridge.INSTRUMENTOR.supported == bridge.SUPPORTED
