"""A multi-tenant chat service: many users, one process, every span in the right conversation.

    python examples/multi_tenant_server/server.py --port 8080      # 0 picks a free port

An asyncio HTTP service (aiohttp.web) on 127.0.0.1. Each conversation is one sessiontrace session
(``session.id`` = the conversation id, ``user.id`` = its owner), kept open across that
conversation's requests and ended after an idle period (and at shutdown). A fake, deterministic
"model" and two tools run in a ``ThreadPoolExecutor`` through ``loop.run_in_executor``; the SDK
carries the conversation's session into the pool by itself, with no helper in this file.

API:

- ``POST /conversations/{conversation_id}/messages`` with JSON ``{"user": ..., "message": ...}``:
  answers ``{"conversation_id", "user", "turn", "reply", "history", "request_id", "session_id",
  "trace_id", "segment"}``; ``history`` is the conversation's user messages so far, this one last.
- ``GET /conversations/{conversation_id}/messages?user=...``: the conversation's history.

A conversation belongs to the user who posted its first message; anyone else gets 403.

Design: one worker task per live conversation
----------------------------------------------
Two open sessions may not share an id in one process, and concurrent requests for the same
conversation must not interleave its history. So each live conversation has one worker task (an
``asyncio.Task`` with an inbox queue) that runs ``async with sdk.session(..., session_id=conversation_id)``
and handles the conversation's turns one at a time, in arrival order. Request handlers only put
the turn in the inbox and await its reply. Consequences:

- the whole conversation is one session and one trace (one ``chat.turn`` span per request, with
  ``chat.conversation_id`` and ``chat.request_id``), visible in a backend while it runs;
- every span a turn causes is created in the worker's context, so it belongs to that
  conversation's session, including spans in the thread pool; no two requests ever share a
  context, and a context never holds two conversations (the worker starts in a fresh context, and
  its ``chat.turn`` span links to the HTTP request's span when a server instrumentation made one);
- concurrent requests for one conversation are serialized (a chat turn depends on the previous
  ones), while different conversations run concurrently;
- after ``--idle-timeout`` seconds without a message the worker ends the session (``success``)
  and exits; the next message *resumes* it (``resume=True``): a new segment of the same session,
  same ``session.id`` and same trace, linked to the previous segment (``session.segment`` counts
  them). The check-and-remove happens without an ``await`` in between, so a message is never put
  in the inbox of a worker that is leaving;
- the same holds across a restart of the server (a deploy, a crash): the session store (SQLite
  under ./.sessiontrace/ by default; ``SESSIONTRACE_SESSION_STORE=redis://...`` for several
  servers) remembers each conversation's trace, so its next message continues it. The chat
  history itself is this demo's in-memory state and starts over after a restart.

On SIGINT or SIGTERM the server stops accepting connections, lets every worker finish the turns
already queued, ends each session as ``success``, shuts the pool down and calls
``sdk.shutdown()`` so that every span is flushed before the process exits.

Telemetry settings come from the environment (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``SESSIONTRACE_*``); with no endpoint, spans go to OTLP-JSON lines
under ./.sessiontrace/traces/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import os
import re
import signal
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry import trace

import sdk

SERVICE_NAME = "multi-tenant-chat"
HOST = "127.0.0.1"
CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_USER_LENGTH = 128
MAX_MESSAGE_LENGTH = 4000

tracer = trace.get_tracer("multi_tenant_server")


# -- the fake model and its tools (run in the thread pool) ----------------------------------------


def _latency() -> None:
    time.sleep(float(os.environ.get("CHAT_MODEL_LATENCY", "0.005")))


@sdk.tool
def lookup_order(order_id: str) -> str:
    """Look an order up (fake, deterministic)."""
    sdk.event("tool.input", argument=order_id, thread=threading.current_thread().name)
    _latency()
    status = ("shipped", "in transit", "refund pending", "delivered")[zlib.crc32(order_id.encode()) % 4]
    return f"order {order_id} is {status}"


@sdk.tool
def count_words(text: str) -> str:
    """Count the words of a message (fake, deterministic)."""
    sdk.event("tool.input", argument=text, thread=threading.current_thread().name)
    _latency()
    return f"your message has {len(text.split())} words"


TOOLS = {"lookup_order": lookup_order, "count_words": count_words}
ORDER_ID = re.compile(r"\bA-[0-9]+(?:-[0-9]+)*\b")


@dataclass(frozen=True)
class Decision:
    """What the fake model decided: which tool to call with which argument."""

    tool: str
    argument: str


@sdk.task(name="fake_model")
def fake_model(history: list[str], message: str) -> Decision:
    """A deterministic stand-in for an LLM: an order id means lookup_order, anything else count_words."""
    sdk.event(
        "model.input",
        message=message,
        history_length=len(history),
        thread=threading.current_thread().name,
    )
    _latency()
    order = ORDER_ID.search(message)
    if order:
        return Decision("lookup_order", order.group(0))
    return Decision("count_words", message)


@sdk.agent(name="chat-agent")
async def chat_agent(pool: ThreadPoolExecutor, history: list[str], message: str) -> str:
    """One turn: ask the model (in the pool), run the tool it picked (in the pool), answer."""
    loop = asyncio.get_running_loop()
    decision = await loop.run_in_executor(pool, fake_model, history, message)
    return await loop.run_in_executor(pool, TOOLS[decision.tool], decision.argument)


# -- conversations --------------------------------------------------------------------------------


class ServiceClosing(Exception):
    """The server is shutting down and takes no new turns."""


@dataclass
class Turn:
    """One request's message, waiting in its conversation's inbox for the worker to answer it."""

    request_id: str
    message: str
    reply: asyncio.Future[dict[str, Any]]
    caller: trace.SpanContext  # the request's span, when an HTTP server instrumentation made one


_STOP = object()  # put in an inbox at shutdown: finish what is queued, then end the session


@dataclass
class Conversation:
    id: str
    user: str
    history: list[str] = field(default_factory=list)
    inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None


class ChatService:
    """Conversations in memory, one worker task per live conversation (see the module docstring)."""

    def __init__(self, pool: ThreadPoolExecutor, idle_timeout: float) -> None:
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.conversations: dict[str, Conversation] = {}
        self.closing = False

    # Everything from the lookup to put_nowait() runs without an await: no other request, and no
    # worker deciding to leave, can run in between. That is what guards the dict.
    def submit(self, conversation_id: str, user: str, message: str) -> asyncio.Future[dict[str, Any]]:
        if self.closing:
            raise ServiceClosing()
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = self.conversations[conversation_id] = Conversation(conversation_id, user)
        elif conversation.user != user:
            raise PermissionError(conversation_id)
        loop = asyncio.get_running_loop()
        if conversation.worker is None:
            # A fresh context: the worker outlives this request and must not inherit its context.
            conversation.worker = contextvars.Context().run(
                loop.create_task, self._work(conversation), name=f"conversation-{conversation_id}"
            )
        caller = trace.get_current_span().get_span_context()
        turn = Turn(uuid.uuid4().hex, message, loop.create_future(), caller)
        conversation.inbox.put_nowait(turn)
        return turn.reply

    async def _work(self, conversation: Conversation) -> None:
        """Run the conversation's session and answer its turns, one at a time, until idle or shutdown."""
        pending: Any = None
        while True:
            async with sdk.session(
                "chat",
                session_id=conversation.id,
                user_id=conversation.user,
                tags=[SERVICE_NAME],
                attributes={"chat.conversation_id": conversation.id},
                resume=True,
            ) as session:
                while True:
                    item, pending = pending, None
                    if item is None:
                        try:
                            item = await asyncio.wait_for(conversation.inbox.get(), self.idle_timeout)
                        except asyncio.TimeoutError:
                            if conversation.inbox.empty():
                                conversation.worker = None  # no await until the session has ended
                                return
                            continue
                    if item is _STOP:
                        conversation.worker = None
                        self._refuse_queued(conversation)
                        return
                    if session.ended:
                        # Ended from outside (SESSIONTRACE_SESSION_IDLE_TIMEOUT, max_open_sessions):
                        # answer this turn in a new session with the same id.
                        pending = item
                        break
                    await self._answer(conversation, session, item)

    async def _answer(self, conversation: Conversation, session: sdk.Session, turn: Turn) -> None:
        history_before = list(conversation.history)
        conversation.history.append(turn.message)
        number = len(conversation.history)
        attributes: dict[str, str | int] = {
            "chat.conversation_id": conversation.id,
            "chat.request_id": turn.request_id,
            "chat.turn": number,
            "chat.user": conversation.user,
        }
        try:
            links = [trace.Link(turn.caller)] if turn.caller.is_valid else []
            with tracer.start_as_current_span("chat.turn", attributes=attributes, links=links) as span:
                reply = await chat_agent(self.pool, history_before, turn.message)
                span.set_attribute("chat.reply", reply)
        except Exception as exc:  # recorded on the span; the request gets a 500, the session goes on
            if not turn.reply.done():
                turn.reply.set_exception(exc)
            return
        if not turn.reply.done():  # the client may have gone away
            turn.reply.set_result(
                {
                    "conversation_id": conversation.id,
                    "user": conversation.user,
                    "turn": number,
                    "reply": reply,
                    "history": list(conversation.history),
                    "request_id": turn.request_id,
                    "session_id": session.id,
                    "trace_id": session.trace_id,
                    "segment": session.segment,
                }
            )

    @staticmethod
    def _refuse_queued(conversation: Conversation) -> None:
        while not conversation.inbox.empty():
            item = conversation.inbox.get_nowait()
            if isinstance(item, Turn) and not item.reply.done():
                item.reply.set_exception(ServiceClosing())

    async def close(self) -> None:
        """Take no new turns; let every worker answer what is queued and end its session."""
        self.closing = True
        workers = []
        for conversation in self.conversations.values():
            if conversation.worker is not None:
                conversation.inbox.put_nowait(_STOP)
                workers.append(conversation.worker)
        await asyncio.gather(*workers, return_exceptions=True)


# -- HTTP -----------------------------------------------------------------------------------------

SERVICE = web.AppKey("service", ChatService)


def _conversation_id(request: web.Request) -> str:
    conversation_id = request.match_info["conversation_id"]
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise web.HTTPBadRequest(text="conversation id: 1-128 of A-Z a-z 0-9 . _ : -")
    return conversation_id


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise web.HTTPBadRequest(text=f"{name}: a non-empty printable string of at most {limit} characters")
    return value


async def post_message(request: web.Request) -> web.Response:
    conversation_id = _conversation_id(request)
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='the body must be {"user": ..., "message": ...}')
    user = _text(body.get("user"), "user", MAX_USER_LENGTH)
    message = _text(body.get("message"), "message", MAX_MESSAGE_LENGTH)
    service = request.app[SERVICE]
    try:
        reply = await service.submit(conversation_id, user, message)
    except PermissionError:
        raise web.HTTPForbidden(text="this conversation belongs to another user") from None
    except ServiceClosing:
        raise web.HTTPServiceUnavailable(text="shutting down") from None
    return web.json_response(reply)


async def get_messages(request: web.Request) -> web.Response:
    conversation_id = _conversation_id(request)
    user = _text(request.query.get("user"), "user", MAX_USER_LENGTH)
    conversation = request.app[SERVICE].conversations.get(conversation_id)
    if conversation is None:
        raise web.HTTPNotFound(text="no such conversation")
    if conversation.user != user:
        raise web.HTTPForbidden(text="this conversation belongs to another user")
    return web.json_response(
        {"conversation_id": conversation_id, "user": user, "history": list(conversation.history)}
    )


def make_app(idle_timeout: float, workers: int) -> web.Application:
    """The aiohttp application: the SDK starts with it and is shut down (flushed) with it."""
    app = web.Application()

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        sdk.init(service_name=SERVICE_NAME)  # endpoint, headers, ... from the environment
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat-pool")
        app[SERVICE] = ChatService(pool, idle_timeout)
        yield
        await app[SERVICE].close()
        pool.shutdown(wait=True)
        sdk.shutdown()

    async def on_shutdown(app: web.Application) -> None:
        await app[SERVICE].close()  # before in-flight requests are waited for: they get their replies

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/conversations/{conversation_id}/messages", post_message)
    app.router.add_get("/conversations/{conversation_id}/messages", get_messages)
    return app


async def serve(port: int, idle_timeout: float, workers: int) -> None:
    runner = web.AppRunner(make_app(idle_timeout, workers), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"{SERVICE_NAME}: listening on http://{HOST}:{bound} port={bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises KeyboardInterrupt
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print(f"{SERVICE_NAME}: stopping", flush=True)
    finally:
        await runner.cleanup()  # stop listening, answer queued turns, end sessions, sdk.shutdown()
    stats = sdk.stats()
    print(
        f"{SERVICE_NAME}: stopped; spans_started={stats.spans_started} spans_exported={stats.spans_exported} "
        f"spans_dropped={stats.spans_dropped} export_errors={stats.export_errors} "
        f"sessions_started={stats.sessions_started} sessions_ended={stats.sessions_ended} "
        f"internal_errors={stats.internal_errors}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CHAT_PORT", "8080")),
        help="TCP port on 127.0.0.1; 0 picks a free one (default: $CHAT_PORT or 8080)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get("CHAT_IDLE_TIMEOUT", "60")),
        help="seconds without a message before a conversation's session ends (default: 60)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("CHAT_POOL_WORKERS", "4")),
        help="threads in the pool that runs the model and the tools (default: 4)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # only where signal handlers are not available
        asyncio.run(serve(args.port, args.idle_timeout, args.workers))


if __name__ == "__main__":
    main()
