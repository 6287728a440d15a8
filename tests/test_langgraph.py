"""LangGraph, real, against the loopback model server: graph runs, nodes and tools as spans, a thread as a session."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from frameworks import (
    check_sessions,
    children,
    llm_spans,
    loopback_only,
    open_traces,
    work_spans,
)
from llm_server import LLMServer, answer_for
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import sdk
from sdk.instrumentation import langgraph as langgraph_patch
from sdk.testing import capture

pytest.importorskip("langgraph")
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

THREAD = ["langgraph.thread_id"]
TESTS = Path(__file__).resolve().parent


@sdk.tool(name="user.weather_lookup")
def lookup(city: str) -> str:
    """The user's own span inside the tool."""
    return f"sunny in {city}"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return lookup(city)


@tool
def broken(city: str) -> str:
    """A tool that fails."""
    raise RuntimeError("no weather today")


def build(model, tools=(get_weather,), checkpointer=None, handle_tool_errors=False):
    """The usual agent graph: a model node, a tool node, back to the model until it answers."""

    def agent(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", RunnableLambda(agent, afunc=aagent))  # sync or async, as the graph is invoked
    graph.add_node("tools", ToolNode(list(tools), handle_tool_errors=handle_tool_errors))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())


def chat(fresh_llm_server: LLMServer, *, stream: bool = True, responses: bool = False, tools=(get_weather,)):
    """ChatOpenAI on the loopback server, with tools bound."""
    model = ChatOpenAI(
        model="script",
        base_url=fresh_llm_server.openai_url,
        api_key="test",
        max_retries=0,
        streaming=stream,
        stream_usage=True,
        use_responses_api=responses,
    )
    return model.bind_tools(list(tools))


@pytest.fixture(autouse=True)
def offline():
    with loopback_only():
        yield


def config(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


def test_a_graph_run_is_a_workflow_of_nodes_with_their_model_and_tool_spans(fresh_llm_server):
    """Inside a session: workflow -> node agent -> chat, node tools -> execute_tool -> the user's span; one model span per request."""
    captured = capture(service_name="tests")
    graph = build(chat(fresh_llm_server, stream=False))
    with sdk.session("s") as session:
        out = graph.invoke({"messages": [HumanMessage("weather?")]}, config("t"))
    assert out["messages"][-1].text == answer_for("weather?")
    spans = captured.spans()
    check_sessions(spans, {session.id: session.trace_id_int})
    workflow = captured.named("invoke_workflow LangGraph")
    assert workflow.parent.span_id == session.span.get_span_context().span_id
    assert children(spans, workflow) == ["node agent", "node tools", "node agent"]
    nodes = [s for s in spans if s.name.startswith("node ")]
    assert [children(spans, n) for n in nodes] == [
        ["chat script"],
        ["execute_tool get_weather"],
        ["chat script"],
    ]
    assert children(spans, captured.named("execute_tool get_weather")) == ["execute_tool user.weather_lookup"]
    model = llm_spans(spans)
    assert len(model) == len(fresh_llm_server.requests) == 2
    assert all(s.attributes["gen_ai.usage.input_tokens"] > 0 for s in model)  # with_raw_response is recorded
    assert workflow.attributes["langgraph.thread_id"] == "t"
    assert workflow.attributes["gen_ai.conversation.id"] == "t"
    assert {n.attributes["langgraph.node"] for n in nodes} == {"agent", "tools"}


def test_thread_ids_are_no_sessions_by_default_and_a_session_wins_when_inside_one(fresh_llm_server):
    """Without session_from a thread's run is in no session; inside a session it stays there whatever its thread."""
    captured = capture(service_name="tests")
    graph = build(chat(fresh_llm_server))
    graph.invoke({"messages": [HumanMessage("one")]}, config("t"))
    assert sdk.sessions() == []
    assert all("session.id" not in s.attributes for s in captured.spans())
    captured = capture(service_name="tests", session_from=THREAD)
    with sdk.session("mine") as mine:
        graph.invoke({"messages": [HumanMessage("two")]}, config("t"))
    assert {s.attributes["session.id"] for s in work_spans(captured.spans())} == {mine.id}


def expected_history(k: int) -> int:
    """Messages in a thread after invocation k: human, tool call, tool result, answer per invocation."""
    return 4 * (k + 1)


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_ten_threads_five_invocations_concurrently_on_one_graph(fresh_llm_server, responses):
    """Acceptance: one compiled graph, 10 threads x 5 streamed ainvoke at once, session_from thread_id, no session code: every span in its thread's session."""
    captured = capture(service_name="tests", session_from=THREAD, session_store="none")
    graph = build(chat(fresh_llm_server, stream=True, responses=responses))

    async def thread(i: int) -> None:
        for k in range(5):
            text = f"t{i} invocation {k}"
            out = await graph.ainvoke({"messages": [HumanMessage(text)]}, config(f"t{i}"))
            assert out["messages"][-1].text == answer_for(text)
            assert len(out["messages"]) == expected_history(k)  # the thread's checkpoints carry on

    async def main() -> None:
        await asyncio.gather(*(thread(i) for i in range(10)))

    asyncio.run(main())
    traces = open_traces()
    assert set(traces) == {f"t{i}" for i in range(10)}
    spans = captured.spans()
    per_session = check_sessions(spans, traces)
    assert set(per_session.values()) == {5 * 8}
    names = Counter(s.name for s in work_spans(spans) if s.attributes["session.id"] == "t7")
    assert names == {
        "invoke_workflow LangGraph": 5,
        "node agent": 10,
        "chat script": 10,
        "node tools": 5,
        "execute_tool get_weather": 5,
        "execute_tool user.weather_lookup": 5,
    }
    assert len(llm_spans(spans)) == len(fresh_llm_server.requests) == 100


def test_ten_threads_invoking_from_a_thread_pool_stay_apart(fresh_llm_server):
    """The same with sync invoke from 10 OS threads (nodes in LangGraph's own pool): every span in its thread's session."""
    captured = capture(service_name="tests", session_from=THREAD, session_store="none")
    graph = build(chat(fresh_llm_server, stream=False))

    def thread(i: int) -> None:
        for k in range(5):
            out = graph.invoke({"messages": [HumanMessage(f"t{i} {k}")]}, config(f"t{i}"))
            assert len(out["messages"]) == expected_history(k)

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(thread, range(10)))
    per_session = check_sessions(captured.spans(), open_traces())
    assert len(per_session) == 10
    assert set(per_session.values()) == {5 * 8}


RESUME_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from llm_server import LLMServer
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
import sdk
from sdk.testing import capture
from frameworks import check_sessions, loopback_only
import test_langgraph as t

first, last = int(sys.argv[1]), int(sys.argv[2])
captured = capture(service_name="tests", session_from=t.THREAD, session_store="sqlite", data_dir={data!r})
with loopback_only(), LLMServer() as server, SqliteSaver.from_conn_string({checkpoints!r}) as saver:
    graph = t.build(t.chat(server), checkpointer=saver)
    for i in range(10):
        for k in range(first, last):
            out = graph.invoke({{"messages": [HumanMessage(f"t{{i}} {{k}}")]}}, t.config(f"t{{i}}"))
            assert len(out["messages"]) == t.expected_history(k)
    sessions = {{info.id: info.session for info in sdk.sessions()}}
    check_sessions(captured.spans(), {{sid: s.trace_id_int for sid, s in sessions.items()}})
    print(json.dumps({{sid: [s.trace_id, s.segment] for sid, s in sessions.items()}}))
"""


@pytest.mark.frameworks
@pytest.mark.subprocess
def test_a_thread_resumed_from_its_checkpoint_in_a_second_process_continues_its_session_trace(
    tmp_path,
):
    """Acceptance: 10 threads with SqliteSaver checkpoints; a second process resumes each: same session, same trace, next segment, history continued."""
    script = tmp_path / "resume.py"
    script.write_text(
        RESUME_SCRIPT.format(
            tests=str(TESTS), data=str(tmp_path / "data"), checkpoints=str(tmp_path / "checkpoints.sqlite")
        )
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}

    def process(first: int, last: int) -> dict[str, list]:
        done = subprocess.run(
            [sys.executable, str(script), str(first), str(last)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    before = process(0, 2)
    after = process(2, 5)
    assert set(before) == set(after) == {f"t{i}" for i in range(10)}
    for thread, (trace_id, segment) in after.items():
        assert trace_id == before[thread][0]
        assert (before[thread][1], segment) == (1, 2)


def test_a_stream_consumed_in_part_leaves_the_consumer_outside_the_session(fresh_llm_server):
    """graph.stream() steps run in the thread's session; the consumer's code between steps and after a break does not."""
    captured = capture(service_name="tests", session_from=THREAD)
    graph = build(chat(fresh_llm_server))
    raw = trace.get_tracer("tests.consumer")
    for _chunk in graph.stream({"messages": [HumanMessage("one")]}, config("t-s"), stream_mode="updates"):
        assert sdk.current_session() is None
        with raw.start_as_current_span("consumer"):
            pass
        break
    with raw.start_as_current_span("after"):
        pass
    consumer = [s for s in captured.spans() if s.name in ("consumer", "after")]
    assert len(consumer) == 2
    assert all("session.id" not in s.attributes for s in consumer)
    graph_spans = [s for s in captured.spans() if s.name.startswith(("node ", "invoke_workflow"))]
    assert graph_spans
    assert {s.attributes["session.id"] for s in graph_spans} == {"t-s"}


def test_a_chat_model_no_client_instrumentation_records_is_recorded_from_langchain(fresh_llm_server):
    """A model call no instrumented client made (another provider's chat model; openai not instrumented) is one span, from LangChain's result."""
    captured = capture(service_name="tests", instrument=["langgraph"])
    graph = build(chat(fresh_llm_server, stream=True))
    with sdk.session("s") as session:
        graph.invoke({"messages": [HumanMessage("weather?")]}, config("t"))
    model = llm_spans(captured.spans())
    assert len(model) == len(fresh_llm_server.requests) == 2
    for span in model:
        assert span.attributes["gen_ai.provider.name"] == "openai"
        assert span.attributes["gen_ai.request.model"] == "script"
        assert span.attributes["gen_ai.usage.input_tokens"] > 0
        assert span.parent is not None
    assert session.usage.llm_calls == 2
    captured.clear()
    fake = GenericFakeChatModel(messages=iter([AIMessage("hello")]))
    with sdk.session("fake"):
        build(fake, tools=()).invoke({"messages": [HumanMessage("hi")]}, config("f"))
    (span,) = llm_spans(captured.spans())
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.parent is not None


def test_a_failing_tool_marks_its_span_and_the_graph_goes_on(fresh_llm_server):
    """A tool that raises: its span has the error; ToolNode turns it into a message and the graph answers."""
    captured = capture(service_name="tests")
    graph = build(chat(fresh_llm_server, tools=(broken,)), tools=(broken,), handle_tool_errors=True)
    with sdk.session("s"):
        out = graph.invoke({"messages": [HumanMessage("weather?")]}, config("t"))
    assert out["messages"][-1].text == answer_for("weather?")
    span = captured.named("execute_tool broken")
    assert span.status.status_code is StatusCode.ERROR


def test_an_interrupt_is_not_an_error_and_the_resume_joins_the_thread_session():
    """A node that interrupts ends its span without an error; Command(resume=...) continues in the thread's session."""
    captured = capture(service_name="tests", session_from=THREAD)

    def ask(state: MessagesState) -> dict:
        answer = interrupt("name?")
        return {"messages": [AIMessage(f"hello {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=InMemorySaver())
    first = graph.invoke({"messages": [HumanMessage("hi")]}, config("t-i"))
    assert "__interrupt__" in first
    out = graph.invoke(Command(resume="ada"), config("t-i"))
    assert out["messages"][-1].content == "hello ada"
    asks = [s for s in captured.spans() if s.name == "node ask"]
    assert len(asks) == 2
    assert asks[0].attributes["langgraph.interrupted"] is True
    assert asks[0].status.status_code is not StatusCode.ERROR
    check_sessions(captured.spans(), open_traces())
    assert set(open_traces()) == {"t-i"}


def test_uninstrument_leaves_the_graph_unrecorded(fresh_llm_server):
    """After sdk.uninstrument("langgraph") graphs, nodes and tools make no spans of ours; instrument() brings them back."""
    captured = capture(service_name="tests")
    graph = build(chat(fresh_llm_server, stream=False))
    sdk.uninstrument("langgraph")
    graph.invoke({"messages": [HumanMessage("one")]}, config("t"))
    assert [s.name for s in captured.spans()] == [
        "chat script",
        "execute_tool user.weather_lookup",
        "chat script",
    ]
    sdk.instrument("langgraph")
    captured.clear()
    graph.invoke({"messages": [HumanMessage("two")]}, config("t"))
    assert "execute_tool get_weather" in {s.name for s in captured.spans()}
    assert langgraph_patch.INSTRUMENTOR.supported == langgraph_patch.SUPPORTED
