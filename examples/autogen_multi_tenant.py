"""Many users' conversations through one autogen-core runtime, each in its own session.

    pip install 'sessiontrace[autogen]'
    python examples/autogen_multi_tenant.py                 # sessions opened by the caller
    python examples/autogen_multi_tenant.py --from-topic    # sessions from the topic source

One `SingleThreadedAgentRuntime` serves every user. Each conversation has its own topic source
(``TopicId("chat", source=conversation_id)``): autogen-core gives each source its own agent
instances, and sessiontrace keeps each conversation's spans in its own session:

- an ``assistant`` agent (subscribed to ``chat``) answers each user message with a call to a
  model client, then publishes the answer to ``TopicId("reply", source=...)``;
- a ``courier`` agent (subscribed to ``reply``) hands the answer back to the waiting caller.

The model client is a deterministic fake (no network, no key): it implements autogen-core's
`ChatCompletionClient` and records one GenAI span per call, as an LLM instrumentation would.

Two ways to put a conversation in a session:

- default: the caller opens ``sdk.session(session_id=conversation_id)`` and publishes inside it;
  every handler that the message causes, however many hops away, runs in that session;
- ``--from-topic`` (the `session_from_topic` setting): the caller opens no session; a message to
  topic source X is handled in session X, started on first use and ended when the runtime stops.

At the end it prints one line per conversation: its session, trace, spans and LLM usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autogen_core import (
    CancellationToken,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    message_handler,
    type_subscription,
)
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, SpanKind

import sdk

MODEL = "fake-model-1"
INPUT_TOKENS = 7
OUTPUT_TOKENS = 3
tracer = trace.get_tracer("examples.autogen_multi_tenant")


@dataclass
class UserText:
    """A user's message in a conversation."""

    user: str
    turn: int
    text: str


@dataclass
class AssistantText:
    """The assistant's answer to one user message."""

    user: str
    turn: int
    text: str


class FakeModelClient(ChatCompletionClient):
    """A deterministic model: answers ``"echo: <last user message>"`` and records a GenAI span."""

    def __init__(self) -> None:
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: Any = None,
        extra_create_args: Mapping[str, Any] = {},  # the interface's own default
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        last = str(messages[-1].content) if messages else ""
        with tracer.start_as_current_span(f"chat {MODEL}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", "fake")
            span.set_attribute("gen_ai.request.model", MODEL)
            span.set_attribute("fake.prompt", last)
            await asyncio.sleep(0)  # a real call awaits the network: let other conversations run
            span.set_attribute("gen_ai.usage.input_tokens", INPUT_TOKENS)
            span.set_attribute("gen_ai.usage.output_tokens", OUTPUT_TOKENS)
        session = sdk.current_session()
        if session is not None:
            session.add_llm_usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
        usage = RequestUsage(prompt_tokens=INPUT_TOKENS, completion_tokens=OUTPUT_TOKENS)
        self._usage = RequestUsage(
            prompt_tokens=self._usage.prompt_tokens + INPUT_TOKENS,
            completion_tokens=self._usage.completion_tokens + OUTPUT_TOKENS,
        )
        return CreateResult(finish_reason="stop", content=f"echo: {last}", usage=usage, cached=False)

    def create_stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[str | CreateResult, None]:
        async def stream() -> AsyncGenerator[str | CreateResult, None]:
            yield await self.create(*args, **kwargs)

        return stream()

    async def close(self) -> None:
        pass

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._usage

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return INPUT_TOKENS

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return 4096

    @property
    def capabilities(self) -> ModelCapabilities:
        return {"vision": False, "function_calling": False, "json_output": False}

    @property
    def model_info(self) -> ModelInfo:
        return {
            "vision": False,
            "function_calling": False,
            "json_output": False,
            "family": "unknown",
            "structured_output": False,
        }


@type_subscription(topic_type="chat")
class Assistant(RoutedAgent):
    """Answers each user message with one model call; one instance per conversation (topic source)."""

    def __init__(self, model: ChatCompletionClient) -> None:
        super().__init__("assistant")
        self._model = model
        self._history: list[LLMMessage] = []

    @message_handler
    async def on_user_text(self, message: UserText, ctx: MessageContext) -> None:
        with tracer.start_as_current_span("assistant.turn") as span:
            span.set_attribute("chat.user", message.user)
            span.set_attribute("chat.turn", message.turn)
            self._history.append(UserMessage(content=message.text, source=message.user))
            result = await self._model.create(self._history)
            assert ctx.topic_id is not None
            reply = AssistantText(message.user, message.turn, str(result.content))
            await self.publish_message(reply, TopicId("reply", source=ctx.topic_id.source))


@type_subscription(topic_type="reply")
class Courier(RoutedAgent):
    """Hands each answer to the caller waiting for it."""

    def __init__(self, inboxes: dict[str, asyncio.Queue[AssistantText]], seen: dict[str, set[str]]) -> None:
        super().__init__("courier")
        self._inboxes = inboxes
        self._seen = seen

    @message_handler
    async def on_reply(self, message: AssistantText, ctx: MessageContext) -> None:
        with tracer.start_as_current_span("courier.deliver") as span:
            span.set_attribute("chat.user", message.user)
            span.set_attribute("chat.turn", message.turn)
            session = sdk.current_session()
            self._seen.setdefault(message.user, set()).add(session.id if session is not None else "")
            await self._inboxes[message.user].put(message)


def conversation_id(user: str) -> str:
    """The conversation (topic source, session id) of a user in this demo."""
    return f"conversation-{user}"


@dataclass
class Outcome:
    """What one run did: each user's replies, and the sessions their handlers ran in."""

    replies: dict[str, list[str]]
    handler_sessions: dict[str, set[str]]
    sessions: dict[str, sdk.Session]


async def run(
    users: int = 3, messages: int = 4, *, from_topic: bool = False, autogen_tracing: bool = True
) -> Outcome:
    """Run `users` conversations of `messages` turns each, all at once, through one runtime.

    Call `sdk.init()` first (with ``session_from_topic=True`` for ``from_topic=True``).
    """
    names = [f"user-{i}" for i in range(users)]
    inboxes: dict[str, asyncio.Queue[AssistantText]] = {name: asyncio.Queue() for name in names}
    seen: dict[str, set[str]] = {}
    sessions: dict[str, sdk.Session] = {}
    runtime = SingleThreadedAgentRuntime(tracer_provider=None if autogen_tracing else NoOpTracerProvider())
    model = FakeModelClient()
    await Assistant.register(runtime, "assistant", lambda: Assistant(model))
    await Courier.register(runtime, "courier", lambda: Courier(inboxes, seen))
    runtime.start()

    async def converse(user: str) -> list[str]:
        topic = TopicId("chat", source=conversation_id(user))
        answers: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            if not from_topic:
                session = await stack.enter_async_context(
                    sdk.session("conversation", session_id=conversation_id(user), user_id=user)
                )
                sessions[user] = session
            for turn in range(messages):
                await runtime.publish_message(UserText(user, turn, f"{user} says hello #{turn}"), topic)
                answers.append((await inboxes[user].get()).text)
        return answers

    results = await asyncio.gather(*(converse(name) for name in names))
    if from_topic:  # the sessions the runtime opened, before it stops and ends them
        open_now = {info.id: info.session for info in sdk.sessions()}
        sessions = {
            name: open_now[conversation_id(name)] for name in names if conversation_id(name) in open_now
        }
    await runtime.stop_when_idle()
    return Outcome(dict(zip(names, results, strict=True)), seen, sessions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--messages", type=int, default=4)
    parser.add_argument("--from-topic", action="store_true", help="sessions from the topic source")
    parser.add_argument("--no-autogen-tracing", action="store_true", help="autogen-core's own spans off")
    args = parser.parse_args()
    sdk.init(service_name="autogen-multi-tenant", session_from_topic=args.from_topic, console_summary=False)
    outcome = asyncio.run(
        run(
            args.users,
            args.messages,
            from_topic=args.from_topic,
            autogen_tracing=not args.no_autogen_tracing,
        )
    )
    for user, session in sorted(outcome.sessions.items()):
        summary = session.summary()
        print(
            f"{user}: session {summary.id} ({summary.state}) trace {session.trace_id} "
            f"spans={summary.spans} llm_calls={summary.llm_calls} "
            f"tokens={summary.input_tokens}+{summary.output_tokens} "
            f"replies={len(outcome.replies[user])} handler sessions={sorted(outcome.handler_sessions[user])}"
        )
    sdk.shutdown()


if __name__ == "__main__":
    main()
