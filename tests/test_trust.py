"""Inbound is untrusted: forged baggage and traceparent headers against a real multi-tenant service.

The service (tests/trust_app.py: FastAPI under uvicorn with the FastAPI instrumentation, and the
standard library's http.server) runs in a child process with the default SQLite session store and
exports to a loopback OTLP receiver. A victim's conversation is stored (two ended segments) and
another is open in the service. An attacker on 127.0.0.1 sends ``baggage: session.id=<victim>``
with a forged ``traceparent`` to a handler that continues the caller's session
(``sdk.session(parent=request.headers)``) and to a zero-code endpoint.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import OTLPReceiver, ReceivedSpan

import sdk

pytestmark = pytest.mark.subprocess

APP = Path(__file__).with_name("trust_app.py")
ROOT = APP.parent.parent
STORED_VICTIM = "conv-victim"
LIVE_VICTIM = "conv-live"


def forged_headers(session_id: str) -> dict[str, str]:
    """What an attacker sends: a victim's session id in baggage, a traceparent of its own making."""
    return {
        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
        "baggage": f"session.id={session_id}",
    }


class TrustApp:
    """tests/trust_app.py in a child process, exporting to `receiver`, storing under `data_dir`."""

    def __init__(self, kind: str, receiver: OTLPReceiver, data_dir: Path, **env: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
        environ.update(
            SESSIONTRACE_ENDPOINT=receiver.url,
            SESSIONTRACE_DIR=str(data_dir),
            SESSIONTRACE_EXPORT_INTERVAL="0.05",
            SESSIONTRACE_CONSOLE_SUMMARY="false",
            SESSIONTRACE_LIVE_SESSIONS="false",
            SESSIONTRACE_METRICS="false",
            SESSIONTRACE_RAISE_INTERNAL_ERRORS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]),
            **env,
        )
        self.process = subprocess.Popen(
            [sys.executable, str(APP), kind],
            cwd=data_dir.parent,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("port="):
            self.process.kill()
            pytest.fail(f"the service did not start: {line!r} {self.process.communicate()[1]}")
        self.url = f"http://127.0.0.1:{int(line.strip()[5:])}"
        self.stderr = ""

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path, data=b"{}" if method == "POST" else None, method=method, headers=headers or {}
        )
        if method == "POST":
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())

    def stop(self) -> str:
        """Flush, stop, and return what the service wrote to stderr (its log lines)."""
        if self.process.poll() is None:
            self.call("POST", "/flush")
            self.process.send_signal(signal.SIGINT)
        try:
            _, self.stderr = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, self.stderr = self.process.communicate()
        return self.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder holding the stored victim: two ended segments, user u-victim, tag vip."""
    folder = tmp_path / "data"
    sdk.init(exporter="none", data_dir=str(folder))
    with sdk.session("victim-chat", session_id=STORED_VICTIM, user_id="u-victim", tags=["vip"]):
        pass
    with sdk.session("victim-chat", session_id=STORED_VICTIM, user_id="u-victim", tags=["vip"], resume=True):
        pass
    sdk.shutdown()
    record = stored_row(folder, STORED_VICTIM)
    assert record is not None
    assert json.loads(record)[3:5] == ["u-victim", ["vip"]]
    return folder


def stored_row(data_dir: Path, session_id: str) -> str | None:
    """The stored record of a session exactly as the SQLite file holds it."""
    with sqlite3.connect(data_dir / "sessions.db") as conn:
        row = conn.execute("SELECT record FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else str(row[0])


def served_spans(receiver: OTLPReceiver, service_name: str) -> list[ReceivedSpan]:
    return [s for s in receiver.spans if s.resource.get("service.name") == service_name]


@pytest.mark.parametrize("kind", ["fastapi", "http"])
def test_forged_headers_change_nothing_of_another_users_session(kind, receiver, data_dir):
    """With the defaults, forged baggage and traceparent headers leave the victim's stored record byte for byte, its live session's state and counters as they were, and no server span with the victim's session.id."""
    app = TrustApp(kind, receiver, data_dir)
    try:
        victim = app.call("POST", "/victim")
        app.call("POST", "/flush")
        time.sleep(0.2)  # the store writer writes starts within ~50 ms
        before = {sid: stored_row(data_dir, sid) for sid in (STORED_VICTIM, LIVE_VICTIM)}
        replies = []
        for target in (STORED_VICTIM, LIVE_VICTIM):
            for _ in range(3):
                replies.append(app.call("POST", "/chat", forged_headers(target)))
                replies.append(app.call("GET", "/lookup", forged_headers(target)))
        after_status = app.call("GET", "/victim")
        app.call("POST", "/flush")
        time.sleep(0.2)
        after = {sid: stored_row(data_dir, sid) for sid in (STORED_VICTIM, LIVE_VICTIM)}
    finally:
        app.stop()
    for reply in replies:
        assert reply.get("session_id", reply.get("session")) not in (STORED_VICTIM, LIVE_VICTIM), reply
    for chat in (r for r in replies if "continued" in r):
        assert chat["continued"] is False
    assert after_status == victim, "the live victim session's state and counters changed"
    assert after == before, "a stored record changed"
    spans = served_spans(receiver, f"trust-{kind}")
    attacked = [s for s in spans if not s.name.startswith(("victim-work", "victim-chat"))]
    assert len(attacked) >= 12
    for span in attacked:
        assert span.attributes.get("session.id") not in (STORED_VICTIM, LIVE_VICTIM), span.name
        assert span.trace_id != victim["trace_id"], span.name
    chats = [s for s in spans if s.name == "chat"]
    assert len(chats) == 6
    assert {s.attributes["sessiontrace.inbound.session_id"] for s in chats} == {STORED_VICTIM, LIVE_VICTIM}
    for span in chats:  # a session of its own, linked to (not under) the caller's span
        assert span.parent_span_id == ""
        assert "session.continued" not in span.attributes
    assert "LOG|conv-" not in app.stderr


@pytest.mark.parametrize("kind", ["fastapi", "http"])
def test_a_trusted_caller_continues_its_session_and_the_victims_record_is_still_untouched(
    kind, receiver, data_dir
):
    """With accept_session_from=loopback, a legitimate client's session reaches the service (same session.id and trace on the server's spans); a continued session never rewrites the stored record of the session it continues, nor ends a session open in the service."""
    app = TrustApp(kind, receiver, data_dir, SESSIONTRACE_ACCEPT_SESSION_FROM="loopback")
    before = stored_row(data_dir, STORED_VICTIM)
    sdk.init(service_name="client", endpoint=receiver.url, export_interval=0.05, console_summary=False)
    try:
        with sdk.session("client-chat", user_id="u-client") as client:
            chat = app.call("POST", "/chat", sdk.context.inject())
            lookup = app.call("GET", "/lookup", sdk.context.inject())
        continued_stored = app.call("POST", "/chat", forged_headers(STORED_VICTIM))
        victim = app.call("POST", "/victim")
        continued_live = app.call("POST", "/chat", forged_headers(LIVE_VICTIM))
        live_after = app.call("GET", "/victim")
        app.call("POST", "/flush")
        time.sleep(0.2)
        live_row = stored_row(data_dir, LIVE_VICTIM)
    finally:
        sdk.shutdown()
        app.stop()
    assert chat == {"session_id": client.id, "trace_id": client.trace_id, "continued": True}
    assert lookup == {"session": None}  # the handler has no Session object: its spans carry the id
    assert continued_stored["continued"] is True  # trusted: this peer may name the session
    assert stored_row(data_dir, STORED_VICTIM) == before
    assert continued_live["continued"] is True
    assert live_after == victim, "a continued session changed the open session it continued"
    assert live_row is not None
    assert json.loads(live_row)[5][0][5] == "running"
    server = served_spans(receiver, f"trust-{kind}")
    mine = [s for s in server if s.trace_id == client.trace_id]
    assert {s.name for s in mine} >= {"chat", "answer", "kb.lookup"}
    for span in mine:
        assert span.attributes.get("session.id") == client.id, span.name


def test_forged_ids_with_control_characters_never_reach_logs_or_spans(receiver, data_dir):
    """A forged session.id with CR, LF and ESC (and one of 362 characters) is refused even from a trusted peer: no log line or span carries it."""
    app = TrustApp("fastapi", receiver, data_dir, SESSIONTRACE_ACCEPT_SESSION_FROM="all")
    forged = ["x%0D%0ALOG|conv-victim|FORGED%1B[2J", "a" * 362, "%1B]0;pwned%07"]
    try:
        for value in forged:
            for path, method in (("/chat", "POST"), ("/lookup", "GET")):
                app.call(method, path, forged_headers(value))
    finally:
        err = app.stop()
    assert "\x1b" not in err
    assert "\r" not in err
    assert "FORGED" not in err
    assert "pwned" not in err
    log_lines = [line for line in err.splitlines() if line.startswith("LOG|")]
    assert len(log_lines) == 6
    assert all(line.split("|")[1] != "a" * 362 for line in log_lines)
    for span in served_spans(receiver, "trust-fastapi"):
        for value in span.attributes.values():
            text = str(value)
            assert "\x1b" not in text, span.name
            assert "\n" not in text, span.name
            assert "a" * 300 not in text, span.name


# -- the other server instrumentations, in this process: WSGI (wsgiref) and aiohttp ----------------


def _wsgi_get(headers: dict[str, str]) -> None:
    import threading
    import wsgiref.simple_server

    from opentelemetry import trace
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with trace.get_tracer("wsgi-app").start_as_current_span("wsgi-work"):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, OpenTelemetryMiddleware(app), handler_class=Quiet
    )
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b"ok"
    thread.join(10)
    server.server_close()


async def _aiohttp_get(headers: dict[str, str]) -> None:
    import aiohttp
    from aiohttp import web
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    async def handle(request: web.Request) -> web.Response:
        with trace.get_tracer("aiohttp-app").start_as_current_span("aiohttp-work"):
            pass
        return web.Response(text="ok")

    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # The instrumentation subclasses web.Application, which aiohttp discourages (their issue).
        warnings.filterwarnings("ignore", "Inheritance class _InstrumentedApplication", DeprecationWarning)
        instrumentor.instrument()
        try:
            app = web.Application()
        finally:
            instrumentor.uninstrument()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/", headers=headers) as r,
        ):
            assert await r.text() == "ok"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("server", ["wsgi", "aiohttp"])
@pytest.mark.parametrize("trust", [None, "loopback", "10.0.0.0/8"])
async def test_server_instrumentations_adopt_the_inbound_id_only_from_trusted_peers(server, trust):
    """WSGI and aiohttp server spans take the inbound session.id only when accept_session_from trusts the peer address the server saw (here 127.0.0.1)."""
    from sdk.testing import capture

    captured = capture(**({"accept_session_from": trust} if trust else {}))
    headers = forged_headers(STORED_VICTIM)
    if server == "wsgi":
        _wsgi_get(headers)
    else:
        await _aiohttp_get(headers)
    spans = [s for s in captured.spans() if s.name != "session"]
    work = [s for s in spans if s.name.endswith("-work")]
    assert len(work) == 1
    assert len(spans) >= 2  # the server span and the handler's
    adopted = trust == "loopback"
    for span in spans:
        assert (span.attributes.get("session.id") == STORED_VICTIM) is adopted, span.name
    assert sdk.stats().inbound_rejected == (0 if adopted else 1)


def test_accept_session_from_a_callable_decides_with_the_id_and_the_peer():
    """A callable given as accept_session_from gets (session_id, peer) and decides; one that raises adopts nothing, is counted and warned about once."""
    from sdk.testing import capture

    seen: list[tuple[str, str | None]] = []

    def decide(session_id: str, peer: str | None) -> bool:
        seen.append((session_id, peer))
        return session_id.startswith("tenant-a-")

    capture(accept_session_from=decide)
    good = sdk.context.extract({"baggage": "session.id=tenant-a-1"}, peer="10.0.0.7")
    bad = sdk.context.extract({"baggage": "session.id=tenant-b-1"})
    assert sdk.context.session_id_from(good) == "tenant-a-1"
    assert sdk.context.session_id_from(bad) is None
    assert seen == [("tenant-a-1", "10.0.0.7"), ("tenant-b-1", None)]

    def broken(session_id: str, peer: str | None) -> bool:
        raise RuntimeError("boom")

    capture(accept_session_from=broken)
    for _ in range(2):
        assert sdk.context.session_id_from(sdk.context.extract({"baggage": "session.id=x-1"})) is None
    assert sdk.stats().callback_errors == 2


@pytest.mark.parametrize(
    ("value", "error"),
    [("10.0.0.0/33", "not a keyword"), ("none,all", "cannot be combined"), ("evil.example", "not a keyword")],
)
def test_accept_session_from_rejects_what_it_cannot_understand(value, error):
    """A network rule that does not parse (host names are not peers) is a ConfigError naming the setting."""
    from sdk.settings import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"accept_session_from.*{error}"):
        load_config({"accept_session_from": value})
