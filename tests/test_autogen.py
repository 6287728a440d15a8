"""autogen-core's SingleThreadedAgentRuntime: every handler span in the session of the message's publisher.

The runtime is the real one; the model client is the example's deterministic fake, which records
one GenAI span per call as an LLM instrumentation does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NoOpTracerProvider

import sdk
from sdk.instrumentation import autogen as autogen_patch
from sdk.instrumentation import base as instrument
from sdk.state import STATE
from sdk.testing import capture

autogen_core = pytest.importorskip("autogen_core")
from autogen_core import (  # noqa: E402
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    message_handler,
    type_subscription,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "autogen_multi_tenant.py"
USERS = 10
MESSAGES = 20


def _load_example():
    spec = importlib.util.spec_from_file_location("autogen_multi_tenant", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["autogen_multi_tenant"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


example = _load_example()


def _user_of(span: ReadableSpan) -> str | None:
    """The user a span works for, from what the span itself records (not from the SDK)."""
    attrs = span.attributes or {}
    if "chat.user" in attrs:
        return str(attrs["chat.user"])
    if "fake.prompt" in attrs:  # the model's prompt: "<user> says hello #<turn>"
        return str(attrs["fake.prompt"]).split(" ", 1)[0]
    return None


def check_every_span(spans, sessions: dict[str, sdk.Session], messages: int) -> None:
    """Each span: in a user's session and its trace; user-level spans in their own user's session;
    every child in its parent's session; and each user's turns all there, none doubled."""
    by_id = {session.id: session for session in sessions.values()}
    span_ids = {s.context.span_id: s for s in spans}
    work = [s for s in spans if (s.attributes or {}).get("sessiontrace.span.kind") != "session"]
    assert work
    for span in work:
        session_id = (span.attributes or {}).get("session.id")
        assert session_id in by_id, (span.name, session_id)
        assert span.context.trace_id == by_id[session_id].trace_id_int, span.name
        user = _user_of(span)
        if user is not None:
            assert session_id == sessions[user].id, (span.name, user, session_id)
        if span.parent is not None and span.parent.span_id in span_ids:
            parent = span_ids[span.parent.span_id]
            assert parent.attributes.get("session.id") == session_id, (span.name, parent.name)
    for name in ("assistant.turn", f"chat {example.MODEL}", "courier.deliver"):
        per_user = Counter(_user_of(s) for s in work if s.name == name)
        assert per_user == dict.fromkeys(sessions, messages), name


@pytest.mark.parametrize("autogen_tracing", [True, False], ids=["autogen-tracing", "no-autogen-tracing"])
async def test_example_ten_users_twenty_messages_each_in_their_own_sessions(autogen_tracing):
    """10 concurrent conversations x 20 messages through one runtime, each inside its caller's sdk.session(): every handler span and every LLM span is in its user's session."""
    captured = capture(service_name="tests")
    outcome = await example.run(USERS, MESSAGES, autogen_tracing=autogen_tracing)
    sdk.flush()
    assert {user: len(texts) for user, texts in outcome.replies.items()} == {
        f"user-{i}": MESSAGES for i in range(USERS)
    }
    assert outcome.handler_sessions == {user: {s.id} for user, s in outcome.sessions.items()}
    spans = captured.spans()
    check_every_span(spans, outcome.sessions, MESSAGES)
    if autogen_tracing:
        assert any(s.name.startswith("autogen process") for s in spans)
    else:
        assert not any(s.name.startswith("autogen") for s in spans)
    for session in outcome.sessions.values():
        assert session.usage.llm_calls == MESSAGES


@pytest.mark.parametrize("autogen_tracing", [True, False], ids=["autogen-tracing", "no-autogen-tracing"])
async def test_example_with_session_from_topic_needs_no_session_in_user_code(autogen_tracing):
    """With session_from_topic, the same 10 x 20 conversations with no sdk.session() in user code: each topic source is one session holding all of its conversation's spans, ended when the runtime stops."""
    captured = capture(service_name="tests", session_from_topic=True)
    outcome = await example.run(USERS, MESSAGES, from_topic=True, autogen_tracing=autogen_tracing)
    sdk.flush()
    assert sorted(outcome.sessions) == [f"user-{i}" for i in range(USERS)]
    for user, session in outcome.sessions.items():
        assert session.id == example.conversation_id(user)
        assert session.name == "chat"
        assert session.state is sdk.SessionState.SUCCESS
        assert session.reason == autogen_patch.STOPPED_REASON
        assert outcome.handler_sessions[user] == {session.id}
    check_every_span(captured.spans(), outcome.sessions, MESSAGES)
    assert sdk.sessions() == []


# -- smaller behaviours -----------------------------------------------------------------------------


@dataclass
class Ping:
    text: str


@dataclass
class Pong:
    text: str
    session_id: str | None


@type_subscription(topic_type="ping")
class Recorder(RoutedAgent):
    """Records the session each handler ran in; answers RPCs with it."""

    seen: list[tuple[str, str | None]]

    def __init__(self, seen: list[tuple[str, str | None]]) -> None:
        super().__init__("recorder")
        self.seen = seen

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Pong:
        with trace.get_tracer("tests.autogen").start_as_current_span("recorder.handle") as span:
            span.set_attribute("ping.text", message.text)
        session = sdk.current_session()
        self.seen.append((message.text, session.id if session is not None else None))
        return Pong(message.text, session.id if session is not None else None)


async def _runtime(seen: list[tuple[str, str | None]], **options) -> SingleThreadedAgentRuntime:
    runtime = SingleThreadedAgentRuntime(**options)
    await Recorder.register(runtime, "recorder", lambda: Recorder(seen))
    return runtime


async def test_send_message_rpc_is_handled_in_the_senders_session(captured):
    """runtime.send_message() from inside a session: the handler and its spans run in that session and the answer comes back."""
    seen: list[tuple[str, str | None]] = []
    runtime = await _runtime(seen)
    runtime.start()
    async with sdk.session("caller") as s:
        pong = await runtime.send_message(Ping("rpc"), AgentId("recorder", "k"))
    await runtime.stop_when_idle()
    assert pong == Pong("rpc", s.id)
    handled = captured.named("recorder.handle")
    assert handled.attributes["session.id"] == s.id
    assert handled.context.trace_id == s.trace_id_int


async def test_handlers_follow_the_publisher_not_the_context_the_runtime_was_started_in(captured):
    """A runtime started inside session a handles a message published from session b in b, and one published outside any session in none."""
    seen: list[tuple[str, str | None]] = []
    runtime = await _runtime(seen)
    async with sdk.session("a") as a:
        runtime.start()
    async with sdk.session("b") as b:
        await runtime.publish_message(Ping("from-b"), TopicId("ping", "x"))
        await runtime.stop_when_idle()
    runtime.start()
    await runtime.publish_message(Ping("from-nowhere"), TopicId("ping", "x"))
    await runtime.stop_when_idle()
    assert dict(seen) == {"from-b": b.id, "from-nowhere": None}
    spans = {s.attributes["ping.text"]: s for s in captured.spans() if s.name == "recorder.handle"}
    assert spans["from-b"].attributes["session.id"] == b.id != a.id
    assert "session.id" not in spans["from-nowhere"].attributes


async def test_session_from_topic_is_off_by_default(captured):
    """Without session_from_topic, a message published outside any session is handled outside any session."""
    seen: list[tuple[str, str | None]] = []
    runtime = await _runtime(seen)
    runtime.start()
    await runtime.publish_message(Ping("p"), TopicId("ping", "conversation-1"))
    await runtime.stop_when_idle()
    assert seen == [("p", None)]
    assert sdk.sessions() == []


async def test_topic_session_is_resumed_from_the_store_after_the_runtime_stopped():
    """session_from_topic with the session store: a second runtime's message to the same source resumes the session (same id and trace, next segment)."""
    captured = capture(service_name="tests", session_from_topic=True, session_store="memory")
    seen: list[tuple[str, str | None]] = []
    for text in ("first", "second"):
        runtime = await _runtime(seen)
        runtime.start()
        await runtime.publish_message(Ping(text), TopicId("ping", "conversation-7"))
        await runtime.stop_when_idle()
    assert seen == [("first", "conversation-7"), ("second", "conversation-7")]
    roots = [s for s in captured.spans() if s.attributes.get("sessiontrace.span.kind") == "session"]
    assert [(r.attributes["session.id"], r.attributes.get("session.segment")) for r in roots] == [
        ("conversation-7", 1),
        ("conversation-7", 2),
    ]
    assert len({r.context.trace_id for r in roots}) == 1
    assert all(r.attributes["session.state"] == "success" for r in roots)


async def test_topic_session_joins_an_open_session_with_that_id_and_leaves_it_open():
    """A message to source X while the application has session X open is handled in it; the runtime's stop does not end it."""
    sdk.init(service_name="tests", session_from_topic=True, exporter="none")
    seen: list[tuple[str, str | None]] = []
    runtime = await _runtime(seen)
    runtime.start()
    mine = sdk.start_session("mine", session_id="conversation-9")
    await asyncio.create_task(
        _publish_outside_sessions(runtime, Ping("joined"), TopicId("ping", "conversation-9"))
    )
    await runtime.stop_when_idle()
    assert seen == [("joined", "conversation-9")]
    assert not mine.ended
    mine.end()


async def _publish_outside_sessions(
    runtime: SingleThreadedAgentRuntime, message: Ping, topic: TopicId
) -> None:

    STATE.current_session.set(None)  # this task's copy of the context: no session, no span
    from opentelemetry import context as otel_context

    otel_context.attach(otel_context.Context())
    await runtime.publish_message(message, topic)


async def test_publishing_inside_a_session_wins_over_the_topic_source():
    """With session_from_topic, a message published inside session s to another source is handled in s."""
    capture(service_name="tests", session_from_topic=True)
    seen: list[tuple[str, str | None]] = []
    runtime = await _runtime(seen, tracer_provider=NoOpTracerProvider())
    runtime.start()
    async with sdk.session("outer") as s:
        await runtime.publish_message(Ping("inside"), TopicId("ping", "someone-else"))
        await runtime.stop_when_idle()
    assert seen == [("inside", s.id)]


def test_patches_applied_once_by_init_removed_by_shutdown_and_setting():
    """init() applies the autogen patches once however often it runs; shutdown() and instrument_autogen=False remove them."""
    names = {f"autogen_core.{owner}.{method}" for owner, method, _ in autogen_patch._PATCHES}
    original = SingleThreadedAgentRuntime.__dict__["publish_message"]
    sdk.init(exporter="none")
    sdk.init(exporter="none", service_name="again")
    assert names <= set(instrument.applied())
    assert SingleThreadedAgentRuntime.__dict__["publish_message"] is not original
    sdk.shutdown()
    assert not names & set(instrument.applied())
    assert SingleThreadedAgentRuntime.__dict__["publish_message"] is original
    sdk.init(exporter="none", instrument_autogen=False)
    assert not names & set(instrument.applied())
    sdk.init(exporter="none")
    assert names <= set(instrument.applied())


@dataclass
class Question:
    text: str


@type_subscription(topic_type="ask")
class OpenAIAgent(RoutedAgent):
    """Answers with a real openai client call (instrumented by the SDK) against the loopback LLM server."""

    def __init__(self, base_url: str, answered: dict[str, asyncio.Future[str]]) -> None:
        super().__init__("openai-agent")
        import openai

        self._client = openai.AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0)
        self._answered = answered

    @message_handler
    async def on_question(self, message: Question, ctx: MessageContext) -> None:
        reply = await self._client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": message.text}]
        )
        self._answered[message.text].set_result(reply.choices[0].message.content or "")

    async def close(self) -> None:
        await self._client.close()


async def test_real_openai_calls_inside_handlers_are_in_the_publishers_sessions():
    """Handlers calling the real openai client (instrumented by the SDK): each LLM span, and the session's LLM usage, belongs to the session that published the question."""
    pytest.importorskip("openai")
    from llm_server import LLMServer

    captured = capture(service_name="tests", capture_content=True)
    answered: dict[str, asyncio.Future[str]] = {}
    with LLMServer() as server:
        runtime = SingleThreadedAgentRuntime()
        await OpenAIAgent.register(runtime, "openai-agent", lambda: OpenAIAgent(server.openai_url, answered))
        runtime.start()

        async def ask(name: str) -> sdk.Session:
            async with sdk.session(name) as session:
                texts = [f"{name} question {i}" for i in range(3)]
                for text in texts:
                    answered[text] = asyncio.get_running_loop().create_future()
                    await runtime.publish_message(Question(text), TopicId("ask", "shared-source"))
                await asyncio.gather(*(answered[text] for text in texts))
            return session

        sessions = dict(zip(("alpha", "beta"), await asyncio.gather(ask("alpha"), ask("beta")), strict=True))
        await runtime.stop_when_idle()
        await runtime.close()  # closes the agents, and so their clients
    llm = [s for s in captured.spans() if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert len(llm) == 6
    for span in llm:
        asker = next(
            name for name in sessions if f"{name} question" in str(span.attributes["gen_ai.input.messages"])
        )
        assert span.attributes["session.id"] == sessions[asker].id
        assert span.context.trace_id == sessions[asker].trace_id_int
    assert {name: s.usage.llm_calls for name, s in sessions.items()} == {"alpha": 3, "beta": 3}
