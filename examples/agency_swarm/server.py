"""An Agency Swarm chat service for many users: one sessiontrace session per conversation, across restarts.

    python examples/agency_swarm/server.py --port 8080 --data ./agency-data     # 0 picks a free port

Needs Python >= 3.12 and ``pip install 'sessiontrace[agency-swarm]'`` (Agency Swarm 1.x, on the
OpenAI Agents SDK). A FastAPI service on 127.0.0.1 whose agency has two agents: a ``CEO`` that
talks to users and hands work to a ``Worker`` (Agency Swarm's ``send_message`` tool), which has
a tool, ``lookup_order``.

API:

- ``POST /chats/{chat_id}/messages`` with JSON ``{"user": ..., "message": ..., "stream": true}``:
  answers ``{"chat_id", "user", "turn", "reply", "session_id", "trace_id", "segment"}``.

A chat belongs to the user who posted its first message; anyone else gets 403.

How the sessions line up
------------------------
Agency Swarm keeps no user or chat id: a multi-user service builds one ``Agency`` per request
(as its FastAPI integration does), whose thread callbacks load and save that chat's messages —
here a JSON file per chat under ``--data``. Each request runs with
``RunConfig(group_id=chat_id)``, and sessiontrace's ``session_from=["openai_agents.group_id"]``
makes that group id the session: every span of the request — both agents, the hand-off, the tool,
each model call, the user's own spans — lands in the chat's session, with no session code here.
The session stays open from one message to the next (one chat, one trace).

After a restart (a deploy, a crash), the chat's next message loads its thread from the file and
*resumes* its session from sessiontrace's session store (SQLite in ``$SESSIONTRACE_DIR``, by
default ./.sessiontrace/): same ``session.id``, same trace, ``session.segment`` 2, linked to the
segment before. The chat's history and its trace continue together.

The model is ``$AGENCY_MODEL`` (default ``gpt-4o-mini``) at ``$OPENAI_BASE_URL`` with
``$OPENAI_API_KEY``. The Agents SDK exports its own traces to OpenAI's platform unless told
otherwise; this server turns that off (``agents.set_trace_processors([])``) unless
``--openai-trace-export`` is given. Telemetry settings come from the environment
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``SESSIONTRACE_*``); with no endpoint, spans go to OTLP-JSON
lines under ./.sessiontrace/traces/. On SIGINT or SIGTERM it answers what is in flight, then
``sdk.shutdown()`` flushes every span (open chat sessions end as ``indeterminate``, reason
``sdk.shutdown()``; the next message resumes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import sdk

SERVICE_NAME = "agency-swarm-chat"
HOST = "127.0.0.1"
CHAT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_MESSAGE_LENGTH = 4000


@sdk.tool(name="orders.lookup")
def find_order(order: str) -> str:
    """The application's own code under the agent's tool: its span lands in the chat's session too."""
    sdk.event("orders.lookup", query=order[:200])
    return f"order {order[:80]!r}: shipped"


def make_agency(chat_id: str, store: ThreadStore, model: str) -> Any:
    """One Agency per request: agents and thread callbacks bound to this chat (Agency Swarm's multi-user pattern)."""
    from agency_swarm import Agency, Agent, function_tool

    @function_tool
    def lookup_order(order: str) -> str:
        """Look an order up by its number or the customer's words."""
        return find_order(order)

    ceo = Agent(
        name="CEO", description="Talks to customers.", instructions="Delegate order questions.", model=model
    )
    worker = Agent(
        name="Worker",
        description="Looks orders up.",
        instructions="Use lookup_order.",
        model=model,
        tools=[lookup_order],
    )
    return Agency(
        ceo,
        communication_flows=[ceo > worker],
        load_threads_callback=lambda: store.load(chat_id),
        save_threads_callback=lambda messages: store.save(chat_id, messages),
    )


class ThreadStore:
    """Each chat's owner and Agency Swarm messages, one JSON file per chat (written whole, then renamed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, chat_id: str) -> Path:
        return self.folder / f"{chat_id}.json"

    def read(self, chat_id: str) -> dict[str, Any]:
        path = self._path(chat_id)
        return json.loads(path.read_text()) if path.exists() else {"user": None, "turns": 0, "messages": []}

    def write(self, chat_id: str, record: dict[str, Any]) -> None:
        path = self._path(chat_id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.chmod(temporary, 0o600)
        temporary.replace(path)

    def load(self, chat_id: str) -> list[dict[str, Any]]:
        """Agency Swarm's load_threads_callback: the chat's messages so far."""
        messages: list[dict[str, Any]] = self.read(chat_id)["messages"]
        return messages

    def save(self, chat_id: str, messages: list[dict[str, Any]]) -> None:
        """Agency Swarm's save_threads_callback: all of the chat's messages."""
        record = self.read(chat_id)
        record["messages"] = messages
        self.write(chat_id, record)


class Message(BaseModel):
    user: str
    message: str
    stream: bool = True


def make_app(data: Path, model: str, openai_trace_export: bool) -> FastAPI:
    """The FastAPI application; the SDK starts and is shut down (flushed) with it."""
    store = ThreadStore(data)
    locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def lifetime(app: FastAPI) -> AsyncIterator[None]:
        sdk.init(service_name=SERVICE_NAME, session_from=["openai_agents.group_id"])
        if not openai_trace_export:
            import agents

            agents.set_trace_processors([])  # the Agents SDK's export to OpenAI's platform: off
        yield
        sdk.shutdown()

    app = FastAPI(lifespan=lifetime)

    @app.post("/chats/{chat_id}/messages")
    async def post_message(chat_id: str, body: Message) -> dict[str, Any]:
        from agents import RunConfig

        if not CHAT_ID.fullmatch(chat_id):
            raise HTTPException(400, "a chat id is 1-128 letters, digits, '.', '_' or '-'")
        if not body.message or len(body.message) > MAX_MESSAGE_LENGTH or not body.user:
            raise HTTPException(400, "user and message are required (a message is at most 4000 characters)")
        lock = locks.setdefault(chat_id, asyncio.Lock())
        async with lock:  # a chat's turns one at a time: each builds on the history before it
            record = store.read(chat_id)
            if record["user"] not in (None, body.user):
                raise HTTPException(403, "this chat belongs to another user")
            record["user"] = body.user
            record["turns"] += 1
            store.write(chat_id, record)
            agency = make_agency(chat_id, store, model)
            config = RunConfig(group_id=chat_id, workflow_name="chat")  # group id = session id
            if body.stream:
                stream = agency.get_response_stream(body.message, run_config_override=config)
                async for _event in stream:
                    pass
                result = stream.final_result
            else:
                result = await agency.get_response(body.message, run_config=config)
            session = _session(chat_id)
            return {
                "chat_id": chat_id,
                "user": body.user,
                "turn": record["turns"],
                "reply": str(result.final_output),
                "session_id": session.id if session else None,
                "trace_id": session.trace_id if session else None,
                "segment": session.segment if session else None,
            }

    return app


def _session(chat_id: str) -> sdk.Session | None:
    """The chat's session (open between messages: session_from started or resumed it)."""
    return next((info.session for info in sdk.sessions() if info.id == chat_id), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("CHAT_PORT", "8080")), help="0: a free port"
    )
    parser.add_argument("--data", type=Path, default=Path("agency-data"), help="the chats' thread files")
    parser.add_argument(
        "--openai-trace-export", action="store_true", help="keep the Agents SDK's OpenAI export"
    )
    args = parser.parse_args(argv)
    model = os.environ.get("AGENCY_MODEL", "gpt-4o-mini")
    config = uvicorn.Config(
        make_app(args.data, model, args.openai_trace_export), host=HOST, port=args.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    for signum in (signal.SIGINT, signal.SIGTERM):
        # uvicorn stops gracefully on these, then raises the signal again once it has: by then
        # there is nothing left to stop, so let the process finish (flushed) with status 0.
        signal.signal(signum, lambda *_: None)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"{SERVICE_NAME}: listening on http://{HOST}:{port} port={port}", flush=True)
        await task
        stats = sdk.stats()
        print(
            f"{SERVICE_NAME}: stopped; spans_exported={stats.spans_exported} spans_dropped={stats.spans_dropped} "
            f"sessions_started={stats.sessions_started} internal_errors={stats.internal_errors}",
            flush=True,
        )

    asyncio.run(serve())


if __name__ == "__main__":
    main()
