"""OpenTelemetry's httpx, requests and FastAPI instrumentations: two processes on 127.0.0.1, one session.

The caller (this process) instruments httpx and requests and calls the example FastAPI service
(examples/fastapi_service/service.py, a uvicorn child process instrumented with
opentelemetry-instrumentation-fastapi) from inside a session. Both export to one loopback OTLP
receiver; every span that arrives is checked.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace as sdk_trace
from otlp_receiver import OTLPReceiver, ReceivedSpan

import sdk

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: E402
from opentelemetry.instrumentation.requests import RequestsInstrumentor  # noqa: E402

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "examples" / "fastapi_service" / "service.py"
CALLER_SERVICE = "caller"
SERVER_SERVICE = "fastapi-service"


class Service:
    """The example FastAPI service in a child process, exporting to the receiver."""

    def __init__(self, receiver: OTLPReceiver, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
        env.update(
            SESSIONTRACE_ENDPOINT=receiver.url,
            SESSIONTRACE_EXPORT_INTERVAL="0.05",
            SESSIONTRACE_CONSOLE_SUMMARY="false",
            SESSIONTRACE_RAISE_INTERNAL_ERRORS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        )
        self.process = subprocess.Popen(
            [sys.executable, str(SERVICE), "--port", "0"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if "port=" not in line:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"the service did not start: {line!r} {err}")
        self.url = f"http://127.0.0.1:{int(line.rsplit('port=', 1)[1])}"

    def stop(self) -> str:
        """SIGTERM (uvicorn's graceful shutdown, then sdk.shutdown() flushes); returns its stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


@pytest.fixture
def service(receiver, tmp_path) -> Iterator[Service]:
    running = Service(receiver, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def instrumented_clients() -> Iterator[None]:
    """httpx and requests instrumented in this process for the test, uninstrumented after."""
    HTTPXClientInstrumentor().instrument()
    RequestsInstrumentor().instrument()
    yield
    HTTPXClientInstrumentor().uninstrument()
    RequestsInstrumentor().uninstrument()


def _init_caller(receiver: OTLPReceiver, **settings: object) -> None:
    sdk.init(
        service_name=CALLER_SERVICE,
        endpoint=receiver.url,
        export_interval=0.05,
        console_summary=False,
        **settings,
    )


async def _call_everything(base_url: str) -> dict[str, object]:
    """httpx (sync and async) and requests calls to both endpoints."""
    first = httpx.get(f"{base_url}/lookup", params={"topic": "refunds"}, timeout=10).json()
    async with httpx.AsyncClient(timeout=10) as client:
        second = (await client.get(f"{base_url}/lookup", params={"topic": "shipping"})).json()
    third = requests.get(f"{base_url}/lookup", params={"topic": "refunds"}, timeout=10).json()
    chat = requests.post(f"{base_url}/chat", json={"question": "where is my refund?"}, timeout=10).json()
    return {"lookups": [first, second, third], "chat": chat}


def _all_spans(receiver: OTLPReceiver, service: Service, expected_server_spans: int) -> list[ReceivedSpan]:
    """Stop the service (it flushes at exit), flush this process; every span both exported."""
    err = service.stop()
    assert service.process.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal
    assert "Traceback" not in err, err
    sdk.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = receiver.spans
        served = [s for s in spans if s.resource.get("service.name") == SERVER_SERVICE]
        if len(served) >= expected_server_spans:
            break
        time.sleep(0.05)
    time.sleep(0.1)  # a straggler would come from an export interval
    return receiver.spans


async def test_httpx_requests_and_fastapi_spans_of_both_processes_are_in_one_session(
    receiver, service, instrumented_clients
):
    """A caller in a session calls a FastAPI service with httpx and requests: every span of both processes (client spans, ASGI server spans, the service's own spans, its continued session) is in the caller's session and trace, server spans under the client spans."""
    _init_caller(receiver)
    with sdk.session("support-chat") as s:
        replies = await _call_everything(service.url)
    assert replies["chat"]["session_id"] == s.id
    assert replies["chat"]["trace_id"] == s.trace_id
    spans = _all_spans(receiver, service, expected_server_spans=8)
    caller = [x for x in spans if x.resource.get("service.name") == CALLER_SERVICE]
    served = [x for x in spans if x.resource.get("service.name") == SERVER_SERVICE]
    assert {x.scope for x in caller} >= {
        "opentelemetry.instrumentation.httpx",
        "opentelemetry.instrumentation.requests",
    }
    assert "opentelemetry.instrumentation.fastapi" in {x.scope for x in served}
    for span in spans:  # every span both processes exported: one session, one trace
        assert span.attributes.get("session.id") == s.id, (span.resource["service.name"], span.name)
        assert span.trace_id == s.trace_id, span.name
    client_span_ids = {x.span_id for x in caller if x.kind == 3}  # SPAN_KIND_CLIENT
    server_roots = [x for x in served if x.kind == 2]  # SPAN_KIND_SERVER
    assert len(client_span_ids) == len(server_roots) == 4
    assert {x.parent_span_id for x in server_roots} == client_span_ids
    lookups = [x for x in served if x.name == "kb.lookup"]
    assert len(lookups) == 3
    continued = [x for x in served if x.attributes.get("sessiontrace.span.kind") == "session"]
    assert [(x.name, x.attributes.get("session.continued")) for x in continued] == [("chat", True)]


async def test_without_propagate_session_the_service_gets_the_trace_but_not_the_session(
    receiver, service, instrumented_clients
):
    """propagate_session=False: the instrumentations send only traceparent, so the service's spans are in the caller's trace without session.id."""
    _init_caller(receiver, propagate_session=False)
    with sdk.session("support-chat") as s:
        httpx.get(f"{service.url}/lookup", params={"topic": "refunds"}, timeout=10).raise_for_status()
    spans = _all_spans(receiver, service, expected_server_spans=2)
    served = [x for x in spans if x.resource.get("service.name") == SERVER_SERVICE]
    assert served
    for span in served:
        assert span.trace_id == s.trace_id, span.name
        assert "session.id" not in span.attributes, span.name
    caller = [x for x in spans if x.resource.get("service.name") == CALLER_SERVICE]
    assert {x.attributes.get("session.id") for x in caller} == {s.id}


def test_propagator_wrapped_once_and_restored_by_shutdown():
    """init() wraps OpenTelemetry's global propagator once however often it runs; requests to the application's own networks carry the session, a public host and an unknown destination only traceparent; shutdown() puts the original back."""
    from opentelemetry import propagate

    from sdk.instrumentation.propagation import SessionPropagator

    original = propagate.get_global_textmap()
    sdk.init(exporter="none")
    sdk.init(exporter="none", service_name="again")
    wrapped = propagate.get_global_textmap()
    assert isinstance(wrapped, SessionPropagator)
    assert wrapped.inner is original
    tracer = sdk_trace.get_tracer("tests")
    carriers: dict[str, dict[str, str]] = {}
    with sdk.session("s") as s:
        for host in ("127.0.0.1", "orders", "10.1.2.3", "api.openai.com"):
            with tracer.start_as_current_span("GET", kind=sdk_trace.SpanKind.CLIENT) as call:
                call.set_attribute("server.address", host)
                propagate.inject(carriers.setdefault(host, {}))
        unknown: dict[str, str] = {}
        propagate.inject(unknown)  # no client span says where this goes
    for host in ("127.0.0.1", "orders", "10.1.2.3"):
        assert carriers[host]["baggage"] == f"session.id={s.id}", host
        assert carriers[host]["traceparent"].split("-")[1] == s.trace_id
    assert "baggage" not in carriers["api.openai.com"]  # a public host: traceparent only
    assert carriers["api.openai.com"]["traceparent"].split("-")[1] == s.trace_id
    assert "baggage" not in unknown
    sdk.shutdown()
    assert propagate.get_global_textmap() is original
