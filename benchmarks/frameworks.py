"""Per model call: what the agent framework bridges add (OpenAI Agents SDK, LangGraph).

Each framework runs the same agent work over and over — the Agents SDK a triage agent handing off
to a weather agent that calls its tool, then answers (3 model calls a turn); LangGraph a model
node, a tool node, the model again (2 model calls an invocation) — against the scripted model of
tests/llm_server.py answered *in process* (httpx2's MockTransport: no socket, no server thread,
whose noise would swamp these costs). Three sides, interleaved in one process, rotating order:

- **bare**: sessiontrace's patches of the framework and of openai removed: the framework's own cost;
- **client**: the openai instrumentation only, inside ``sdk.session(...)``: an instrumented model
  call, as without the bridge;
- **bridge**: the framework's bridge too, the session from `session_from` (the conversation's id).

Rows (informational, no budget), per model call: bridge against client — the bridge's own cost
(its spans for the workflow, agents, nodes and tools, the session lookup, the model-call mark) —
and bridge against bare — all of sessiontrace for a framework's model call against the framework
alone. The checks: every model call made on the client and bridge sides is recorded exactly once.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import pipelines
from benchmarks.harness import Result, Settings, Timing, cpus, interleave_many, time_loop, walls

NAME = "frameworks"
TESTS = Path(__file__).resolve().parent.parent / "tests"
SIDES = ("bare", "client", "bridge")
SESSION_FROM = ["openai_agents.group_id", "langgraph.thread_id"]


class Model:
    """The scripted model in process: an httpx2 transport answering chat completions, counting requests."""

    def __init__(self) -> None:
        sys.path.insert(0, str(TESTS))
        try:
            import llm_server
        finally:
            sys.path.remove(str(TESTS))
        import httpx2

        self.requests = 0
        reply, completion = llm_server.chat_reply, llm_server.chat_completion

        def handle(request: Any) -> Any:
            self.requests += 1
            body = json.loads(request.content)
            return httpx2.Response(200, json=completion(str(body["model"]), *reply(body)))

        self.transport = httpx2.MockTransport(handle)


def _configure(side: str, framework: str) -> None:
    """Patch (or unpatch) openai and the framework for one side (untimed, before each sample)."""
    import sdk

    if side == "bare":
        sdk.uninstrument("openai", framework)
    elif side == "client":
        sdk.instrument("openai")
        sdk.uninstrument(framework)
    else:
        sdk.instrument("openai", framework)


def _per_call(timing: Timing, calls: int) -> Timing:
    return Timing(timing.wall / calls, None if timing.cpu is None else timing.cpu / calls)


def _measure(
    settings: Settings, framework: str, work: Callable[[int], None], calls_per_op: int, ops: int, model: Model
) -> tuple[dict[str, list[Timing]], dict[str, str], bool]:
    """Interleaved samples per side (seconds per model call) and the recording checks."""
    import sdk

    p = pipelines()
    made = dict.fromkeys(SIDES, 0)
    recorded = dict.fromkeys(SIDES, 0)

    def sample(side: str) -> Callable[[], Timing]:
        def run() -> Timing:
            _configure(side, framework)
            p.flush()
            calls, llm_calls = model.requests, sdk.stats().llm_calls
            if side == "client":
                with sdk.session("bench-framework"):
                    timing = time_loop(settings, work, ops)
            else:
                timing = time_loop(settings, work, ops)
            made[side] += model.requests - calls
            recorded[side] += sdk.stats().llm_calls - llm_calls
            return _per_call(timing, calls_per_op)

        return run

    samples = interleave_many({side: sample(side) for side in SIDES}, settings.rounds, settings.warmup)
    sdk.instrument("openai", framework)
    checks = {
        f"model calls recorded / made ({side})": f"{recorded[side]} / {made[side]}"
        for side in ("client", "bridge")
    }
    ok = recorded["client"] == made["client"] > 0 and recorded["bridge"] == made["bridge"] > 0
    return samples, checks, ok and recorded["bare"] == 0


def _rows(
    name: str, title: str, samples: dict[str, list[Timing]], checks: dict[str, str], ok: bool, ops: int
) -> list[Result]:
    bridge, client, bare = samples["bridge"], samples["client"], samples["bare"]

    def added(a: list[Timing], b: list[Timing]) -> str:
        wall = statistics.median(walls(a)) - statistics.median(walls(b))
        cpu_a, cpu_b = cpus(a), cpus(b)
        cpu = statistics.median(cpu_a) - statistics.median(cpu_b) if cpu_a and cpu_b else None
        return f"{wall * 1e6:.0f} µs wall" + ("" if cpu is None else f", {cpu * 1e6:.0f} µs CPU")

    common = {"ops_per_sample": ops, "checks": checks, "checks_ok": ok, "informational": True}
    return [
        Result(
            name=f"{name}_bridge",
            title=f"{title}: bridge, per model call",
            sdk_label="bridge + openai instrumentation, session from session_from",
            sdk=walls(bridge),
            sdk_cpu=cpus(bridge),
            ref_label="openai instrumentation only, inside sdk.session()",
            ref=walls(client),
            ref_cpu=cpus(client),
            notes=[
                f"the bridge's own cost per model call (difference of the medians): {added(bridge, client)}"
            ],
            **common,
        ),
        Result(
            name=f"{name}_total",
            title=f"{title}: all of sessiontrace, per model call",
            sdk_label="bridge + openai instrumentation, session from session_from",
            sdk=walls(bridge),
            sdk_cpu=cpus(bridge),
            ref_label="the framework alone (sessiontrace's patches removed)",
            ref=walls(bare),
            ref_cpu=cpus(bare),
            notes=[f"sessiontrace's cost per model call (difference of the medians): {added(bridge, bare)}"],
            **common,
        ),
    ]


def _agents(settings: Settings, model: Model) -> list[Result]:
    import agents
    import httpx2
    from agents import Agent, RunConfig, Runner, function_tool
    from openai import AsyncOpenAI

    agents.set_trace_processors([])  # no export to OpenAI's platform (the bridge stays)
    loop = asyncio.new_event_loop()
    client = AsyncOpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="bench",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=model.transport),
    )
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_default_openai_api("chat_completions")

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    weather = Agent(name="weather", instructions="Weather.", model="script", tools=[get_weather])
    triage = Agent(name="triage", instructions="Route.", model="script", handoffs=[weather])

    async def turns(n: int) -> None:
        for i in range(n):
            await Runner.run(triage, f"turn {i}", run_config=RunConfig(group_id="bench-conversation"))

    def work(n: int) -> None:
        loop.run_until_complete(turns(n))

    try:
        work(2)  # warm the SDK's caches up
        ops = 6 if settings.quick else 20
        samples, checks, ok = _measure(settings, "openai_agents", work, 3, ops, model)
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    return _rows(f"{NAME}_openai_agents", "OpenAI Agents SDK turn", samples, checks, ok, ops)


def _langgraph(settings: Settings, model: Model) -> list[Result]:
    import httpx2
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    chat = ChatOpenAI(
        model="script",
        base_url="http://127.0.0.1:9/v1",
        api_key="bench",
        max_retries=0,
        http_client=httpx2.Client(transport=model.transport),
    ).bind_tools([get_weather])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [chat.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    graph = builder.compile()
    config = {"configurable": {"thread_id": "bench-thread"}}

    def work(n: int) -> None:
        for i in range(n):
            graph.invoke({"messages": [HumanMessage(f"invocation {i}")]}, config)

    work(2)
    ops = 8 if settings.quick else 30
    samples, checks, ok = _measure(settings, "langgraph", work, 2, ops, model)
    return _rows(f"{NAME}_langgraph", "LangGraph invocation", samples, checks, ok, ops)


def run(settings: Settings) -> list[Result]:
    import sdk

    p = pipelines()
    p.reinit(session_from=SESSION_FROM)
    model = Model()
    try:
        return _agents(settings, model) + _langgraph(settings, model)
    finally:
        for info in sdk.sessions():
            info.session.end()
        p.reinit()  # as pipelines() left it
