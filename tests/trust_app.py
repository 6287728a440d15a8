"""A multi-tenant service for the trust tests, built the way docs/integrations.md shows.

    python tests/trust_app.py fastapi      # FastAPI under uvicorn, FastAPI instrumentation on
    python tests/trust_app.py http         # the standard library's http.server

Prints ``port=<port>`` once it listens on 127.0.0.1. Settings come from the environment
(``SESSIONTRACE_*``: endpoint, data folder, ``SESSIONTRACE_ACCEPT_SESSION_FROM``, ...). Log lines go
to stderr as ``LOG|<session_id>|<message>`` (`log_correlation` on).

Endpoints (both kinds):

- ``POST /victim`` — open the victim's conversation ``conv-live`` (user ``u-victim``, tag ``vip``)
  and leave it running; answers its id, trace id and counters.
- ``GET /victim`` — the live victim session's state and counters now.
- ``POST /chat`` — a handler continuing the caller's session: ``sdk.session("chat",
  parent=request headers, peer=client address)``, one span inside; answers the session it ran in.
- ``GET /lookup`` — zero-code: one span under the context the instrumentation extracted
  (FastAPI), or under ``sdk.context.extract(headers, peer=...)`` (http.server).
- ``POST /flush`` — ``sdk.flush()``.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime, and
# `Request` is imported inside serve_fastapi().
import json
import logging
import socket
import sys
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

import sdk

tracer = trace.get_tracer("trust-app")
log = logging.getLogger("trust-app")
live: dict[str, sdk.Session] = {}


def open_victim() -> dict[str, Any]:
    session = sdk.context.run(
        lambda: sdk.start_session("victim-chat", session_id="conv-live", user_id="u-victim", tags=["vip"])
    )
    live["victim"] = session
    with session.use():
        for n in range(3):
            with tracer.start_as_current_span(f"victim-work-{n}"):
                pass
    return victim_status()


def victim_status() -> dict[str, Any]:
    session = live["victim"]
    return {
        "id": session.id,
        "trace_id": session.trace_id,
        "state": session.state.value,
        "spans": session.span_count,
        "usage": session.usage._asdict(),
        "last_active_ns": session.last_active_ns,
    }


def chat(headers: Any, peer: str | None) -> dict[str, Any]:
    with sdk.session("chat", parent=headers, peer=peer) as session:
        with tracer.start_as_current_span("answer"):
            log.info("chat handled")
    return {"session_id": session.id, "trace_id": session.trace_id, "continued": session.continued}


def lookup_work() -> dict[str, Any]:
    with tracer.start_as_current_span("kb.lookup"):
        log.info("looked up")
        current = sdk.current_session()
    return {"session": current.id if current is not None else None}


def serve_fastapi(sock: socket.socket) -> None:
    import uvicorn
    from fastapi import FastAPI, Request
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.post("/victim")
    def victim_open() -> dict[str, Any]:
        return open_victim()

    @app.get("/victim")
    def victim_get() -> dict[str, Any]:
        return victim_status()

    @app.post("/chat")
    async def chat_endpoint(request: Request) -> dict[str, Any]:
        return chat(request.headers, request.client.host if request.client is not None else None)

    @app.get("/lookup")
    async def lookup() -> dict[str, Any]:
        return lookup_work()

    @app.post("/flush")
    def flush() -> dict[str, bool]:
        return {"flushed": sdk.flush()}

    FastAPIInstrumentor.instrument_app(app)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def serve_http(sock: socket.socket) -> None:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/victim":
                self._reply(victim_status())
                return
            token = otel_context.attach(sdk.context.extract(self.headers, peer=self.client_address[0]))
            try:
                self._reply(lookup_work())
            finally:
                otel_context.detach(token)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/victim":
                self._reply(open_victim())
            elif self.path == "/flush":
                self._reply({"flushed": sdk.flush()})
            else:
                self._reply(chat(self.headers, self.client_address[0]))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket = sock
    server.serve_forever()


def main() -> None:
    kind = sys.argv[1]
    sdk.init(service_name=f"trust-{kind}", log_correlation=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("LOG|%(session_id)s|%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"port={sock.getsockname()[1]}", flush=True)
    try:
        (serve_fastapi if kind == "fastapi" else serve_http)(sock)
    except KeyboardInterrupt:
        pass
    finally:
        sdk.shutdown()


if __name__ == "__main__":
    main()
