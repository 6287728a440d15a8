"""A FastAPI service whose spans land in the session of the caller that called it.

    python examples/fastapi_service/service.py --port 8000        # --port 0 picks a free port

It prints ``fastapi-service: listening on http://127.0.0.1:<port> port=<port>`` and serves until
Ctrl-C or SIGTERM (uvicorn's graceful shutdown runs the app's lifespan, which calls
``sdk.shutdown()``: uvicorn then ends the process by the signal, which runs no exit handler).

The recipe (docs/integrations.md):

1. ``sdk.init(accept_session_from="loopback")`` and ``FastAPIInstrumentor.instrument_app(app)``
   (opentelemetry-instrumentation-fastapi). The instrumentation reads ``traceparent`` and
   ``baggage`` from each request; every span of the request is then in the caller's trace. A
   ``session.id`` in the baggage is a claim by whoever sent the request: sessiontrace adopts it
   only from the peers `accept_session_from` names (here: callers on this host; by default
   nobody, see docs/security.md), and then stamps it on the request's spans. ``GET /lookup``
   needs nothing more.
2. When the handler wants a `Session` object of its own (usage counters, a summary, LLM calls
   counted in the session), it continues the caller's session from the request headers:
   ``with sdk.session("chat", parent=request.headers, peer=request.client.host) as s:``, as
   ``POST /chat`` does. Same ``session.id``, spans in the caller's trace; a request without a
   session, or from an untrusted peer, gets a new session of its own.

The caller (caller.py) instruments httpx and requests; sessiontrace adds ``session.id`` to the
baggage they send to hosts on the caller's own networks (the `propagate_session` and
`send_session_to` settings; by default loopback, private addresses and single-label names).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import BaseModel

import sdk
from sdk.logs import SessionLogFilter

SERVICE_NAME = "fastapi-service"
HOST = "127.0.0.1"
tracer = trace.get_tracer("examples.fastapi_service")
log = logging.getLogger("fastapi_service")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Flush at shutdown: uvicorn ends a SIGTERM'd process by the signal, which runs no exit handler."""
    yield
    sdk.shutdown()


app = FastAPI(title=SERVICE_NAME, lifespan=lifespan)

ARTICLES = {"refunds": "Refunds take 5 business days.", "shipping": "We ship within 24 hours."}


class ChatIn(BaseModel):
    """A question for the service's (fake, deterministic) model."""

    question: str


@app.get("/lookup")
async def lookup(topic: str) -> dict[str, str | None]:
    """Zero-code: this span is in the caller's trace, and in its session when the caller is trusted."""
    with tracer.start_as_current_span("kb.lookup") as span:
        span.set_attribute("kb.topic", topic)
        log.info("looked up %s", topic)
        return {"topic": topic, "article": ARTICLES.get(topic)}


@app.post("/chat")
async def chat(body: ChatIn, request: Request) -> dict[str, str]:
    """Continues the caller's session to count this request's model call in it."""
    peer = request.client.host if request.client is not None else None
    with sdk.session("chat", parent=request.headers, peer=peer) as session:
        with tracer.start_as_current_span("chat fake-model", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "fake-model-1")
            answer = f"You asked: {body.question}"
        session.add_llm_usage(input_tokens=len(body.question.split()), output_tokens=len(answer.split()))
        log.info("answered in session %s", session.id)
    return {"answer": answer, "session_id": session.id, "trace_id": session.trace_id}


FastAPIInstrumentor.instrument_app(app)


def main() -> None:
    parser = argparse.ArgumentParser(description="A FastAPI service that continues its callers' sessions.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # Endpoint and the rest from the environment (OTEL_EXPORTER_OTLP_ENDPOINT, SESSIONTRACE_*).
    # Callers on this host may continue their sessions here; anyone else's session id is ignored.
    sdk.init(service_name=SERVICE_NAME, accept_session_from="loopback")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(session_id)s] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(SessionLogFilter())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    print(f"{SERVICE_NAME}: listening on http://{HOST}:{port} port={port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])  # the lifespan's shutdown calls sdk.shutdown()


if __name__ == "__main__":
    main()
