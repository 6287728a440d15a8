"""The session across processes: HTTP services, process pools, multiprocessing and os.fork().

Every process exports to one loopback OTLP receiver; the tests check every span that arrives.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import otlp_receiver as receiver_module
import pytest
from opentelemetry import trace
from otlp_receiver import OTLPReceiver, ReceivedSpan

import sdk
from sdk import runtime
from sdk.state import STATE

pytestmark = [
    pytest.mark.subprocess,
    # Python 3.12+ warns when a process with threads forks; forking such a process is what is tested.
    pytest.mark.filterwarnings(r"ignore:.*use of fork\(\) may lead to deadlocks:DeprecationWarning"),
]

TRACER = "tests.processes"
FORKS = 20
TREE = (Path(__file__).resolve().parent.parent).as_posix()


def _child_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update(
        SESSIONTRACE_ENDPOINT=receiver.url,
        SESSIONTRACE_EXPORT_INTERVAL="0.05",
        SESSIONTRACE_CONSOLE_SUMMARY="false",
        SESSIONTRACE_RAISE_INTERNAL_ERRORS="1",
        PYTHONPATH=os.pathsep.join([TREE, env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def _init_caller(receiver: OTLPReceiver, **settings: object) -> None:
    defaults: dict[str, object] = {
        "service_name": "caller",
        "export_interval": 0.05,
        "console_summary": False,
    }
    sdk.init(endpoint=receiver.url, **{**defaults, **settings})


def _wait_for_spans(
    receiver: OTLPReceiver, names: Sequence[str], timeout: float = 10.0
) -> list[ReceivedSpan]:
    """Wait until each name has arrived; return every received span with one of these names."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in receiver.spans if s.name in names]
        if {s.name for s in spans} >= set(names) or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _one_each(receiver: OTLPReceiver, names: Sequence[str]) -> dict[str, ReceivedSpan]:
    """The received spans with these names: exactly one each (none lost, none doubled)."""
    spans = _wait_for_spans(receiver, names)
    assert sorted(s.name for s in spans) == sorted(names)
    return {s.name: s for s in spans}


def _exactly(receiver: OTLPReceiver, names: Sequence[str]) -> dict[str, ReceivedSpan]:
    """`_one_each`, and nothing else arrived: every span the test's processes exported is checked
    (but for live-session markers, which a session running over a second gets: docs/export.md)."""
    got = _one_each(receiver, names)
    time.sleep(0.1)  # a straggler would come from an export interval (0.05 s) or a flush
    exported = [s for s in receiver.spans if s.attributes.get("sessiontrace.span.kind") != "session.start"]
    assert sorted(s.name for s in exported) == sorted(names)
    return got


def _hex_span_id(span: trace.Span) -> str:
    return f"{span.get_span_context().span_id:016x}"


def _session_span_id(session: sdk.Session) -> str:
    return _hex_span_id(session.span)


def assert_in_session(spans: Sequence[ReceivedSpan], session: sdk.Session, parent_span_id: str) -> None:
    """Every span sits in the session's trace under `parent_span_id` and carries its session.id."""
    assert spans
    for span in spans:
        assert span.trace_id == session.trace_id, span.name
        assert span.parent_span_id == parent_span_id, span.name
        assert span.attributes.get("session.id") == session.id, span.name


# -- other services over HTTP ----------------------------------------------------------------------

SDK_SERVICE = """
    import http.server, json
    from opentelemetry import context as otel_context, trace
    import sdk

    # Endpoint and the rest from SESSIONTRACE_* in the environment; callers on this host are trusted
    # with their session ids (the peer address is checked on each request).
    sdk.init(service_name="callee", accept_session_from="loopback")
    tracer = trace.get_tracer("callee")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/session":  # the handler continues the caller's session
                with sdk.session("handle", parent=dict(self.headers), peer=self.client_address[0]) as s:
                    with tracer.start_as_current_span("callee-work"):
                        pass
                reply = {"session": s.id, "continued": s.id}
            else:  # raw OpenTelemetry spans under the extracted context, no session of its own
                token = otel_context.attach(sdk.context.extract(self.headers, peer=self.client_address[0]))
                try:
                    with tracer.start_as_current_span("raw-handle"):
                        with tracer.start_as_current_span("raw-work"):
                            pass
                finally:
                    otel_context.detach(token)
                reply = {}
            sdk.flush()
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""

PLAIN_OTEL_SERVICE = """
    import http.server, sys
    from opentelemetry import baggage, propagate
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    class BaggageSessionId(SpanProcessor):
        # What a baggage span processor does: copy session.id from the context's baggage to the span.
        def on_start(self, span, parent_context=None):
            value = baggage.get_baggage("session.id", parent_context)
            if value:
                span.set_attribute("session.id", value)

    def provider(name, *processors):
        p = TracerProvider(resource=Resource({"service.name": name}))
        for processor in processors:
            p.add_span_processor(processor)
        p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1] + "/v1/traces")))
        return p.get_tracer("plain")

    tracers = {"/plain": provider("plain-callee"), "/baggage": provider("baggage-callee", BaggageSessionId())}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ctx = propagate.extract(self.headers)  # W3C tracecontext + baggage: OpenTelemetry's default
            with tracers[self.path].start_as_current_span("plain-handle" + self.path.replace("/", "-"), context=ctx):
                pass
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""


class Service:
    """A callee process serving HTTP on 127.0.0.1."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str], *args: str) -> None:
        path = cwd / "service.py"
        path.write_text(textwrap.dedent(script))
        self.process = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"the service did not start: {err}")
        self.url = f"http://127.0.0.1:{int(line)}"

    def get(self, path: str, headers: dict[str, str]) -> dict[str, str]:
        request = urllib.request.Request(self.url + path, headers=headers)  # sent as Traceparent, Baggage
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def sdk_service(receiver, tmp_path) -> Iterator[Service]:
    service = Service(SDK_SERVICE, tmp_path, _child_env(receiver))
    yield service
    service.stop()


def test_callee_session_with_parent_headers_joins_the_callers_trace_and_session(receiver, sdk_service):
    """A service that opens sdk.session("handle", parent=headers) records its spans in the caller's trace, under the caller's span, with the caller's session.id."""
    _init_caller(receiver)
    tracer = trace.get_tracer(TRACER)
    with sdk.session("caller") as s:
        with tracer.start_as_current_span("call-session") as call:
            reply = sdk_service.get("/session", sdk.context.inject())
    assert reply["session"] == s.id
    sdk.flush()
    got = _exactly(receiver, ["caller", "call-session", "handle", "callee-work"])
    assert {got[n].resource["service.name"] for n in ("handle", "callee-work")} == {"callee"}
    assert_in_session([got["call-session"]], s, _session_span_id(s))
    assert_in_session([got["handle"]], s, _hex_span_id(call))
    assert_in_session([got["callee-work"]], s, got["handle"].span_id)
    assert got["handle"].attributes["session.continued"] is True
    assert got["handle"].attributes["session.state"] == "success"
    assert got["caller"].parent_span_id == ""


def test_callee_raw_spans_under_extract_join_the_callers_trace_and_session(receiver, sdk_service):
    """Raw OpenTelemetry spans a service starts under sdk.context.extract(request headers) sit in the caller's trace and carry its session.id."""
    _init_caller(receiver)
    with sdk.session("caller") as s:
        with trace.get_tracer(TRACER).start_as_current_span("call-raw") as call:
            sdk_service.get("/raw", sdk.context.inject())
    sdk.flush()
    got = _exactly(receiver, ["caller", "call-raw", "raw-handle", "raw-work"])
    assert_in_session([got["raw-handle"]], s, _hex_span_id(call))
    assert_in_session([got["raw-work"]], s, got["raw-handle"].span_id)
    assert got["raw-handle"].resource["service.name"] == "callee"


def test_plain_opentelemetry_callee_joins_the_trace_session_id_only_with_a_baggage_processor(
    receiver, tmp_path
):
    """A service using only OpenTelemetry (W3C propagators, its own TracerProvider) puts its spans in the caller's trace; they carry session.id only with a baggage span processor."""
    service = Service(PLAIN_OTEL_SERVICE, tmp_path, _child_env(receiver), receiver.url)
    try:
        _init_caller(receiver)
        tracer = trace.get_tracer(TRACER)
        with sdk.session("caller") as s:
            with tracer.start_as_current_span("call-plain") as plain_call:
                service.get("/plain", sdk.context.inject())
            with tracer.start_as_current_span("call-baggage") as baggage_call:
                service.get("/baggage", sdk.context.inject())
    finally:
        service.stop()
    sdk.flush()
    got = _exactly(
        receiver, ["caller", "call-plain", "call-baggage", "plain-handle-plain", "plain-handle-baggage"]
    )
    plain, with_processor = got["plain-handle-plain"], got["plain-handle-baggage"]
    assert (plain.trace_id, plain.parent_span_id) == (s.trace_id, _hex_span_id(plain_call))
    assert "session.id" not in plain.attributes
    assert_in_session([with_processor], s, _hex_span_id(baggage_call))
    assert plain.resource["service.name"] == "plain-callee"


# -- process pools and multiprocessing ------------------------------------------------------------


def traced_task(name: str) -> int:
    """A task for a process pool: one span named `name`; returns the pid it ran in."""
    with trace.get_tracer(TRACER).start_as_current_span(name):
        pass
    return os.getpid()


def traced_task_flushed(name: str) -> int:
    """`traced_task`, then flush: a pool worker may leave by os._exit(), which flushes nothing."""
    pid = traced_task(name)
    sdk.flush()
    return pid


def process_main(name: str) -> None:
    """A multiprocessing target: start the SDK from the environment (spawn), then make one span."""
    sdk.init()
    traced_task(name)


@pytest.fixture
def env_to_receiver(receiver, monkeypatch) -> OTLPReceiver:
    """SESSIONTRACE_* in this process's environment pointing at the receiver (spawned children inherit it)."""
    for key, value in _child_env(receiver).items():
        if key.startswith("SESSIONTRACE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("SESSIONTRACE_SERVICE_NAME", "processes")
    return receiver


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_tasks_wrapped_with_context_wrap_join_the_session(env_to_receiver, method):
    """ProcessPoolExecutor (fork and spawn, sdk.init as the spawn initializer): tasks submitted or mapped as sdk.context.wrap(fn) inside a session are in its trace with its session.id, even in workers forked in another session."""
    receiver = env_to_receiver
    sdk.init()
    wrapped = sdk.context.wrap(traced_task)  # outside any session: wrap captures when it is called
    options = {} if method == "fork" else {"initializer": sdk.init}
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(1, mp_context=context, **options) as pool:  # type: ignore[arg-type]
        with sdk.session("a") as a:
            pids = {pool.submit(sdk.context.wrap(traced_task), "a-submitted").result()}
        with sdk.session("b") as b:  # the worker was started inside a
            pids.add(pool.submit(sdk.context.wrap(traced_task), "b-submitted").result())
            pids.update(pool.map(sdk.context.wrap(traced_task), ["b-mapped-0", "b-mapped-1"]))
        pids.add(pool.submit(wrapped, "no-session").result())
    assert len(pids) == 1
    assert os.getpid() not in pids
    sdk.flush()
    got = _exactly(
        receiver, ["a", "b", "a-submitted", "b-submitted", "b-mapped-0", "b-mapped-1", "no-session"]
    )
    assert_in_session([got["a-submitted"]], a, _session_span_id(a))
    assert_in_session([got[n] for n in ("b-submitted", "b-mapped-0", "b-mapped-1")], b, _session_span_id(b))
    assert "session.id" not in got["no-session"].attributes
    assert got["no-session"].parent_span_id == ""


def test_unwrapped_task_in_a_fork_pool_does_not_land_in_the_session_that_forked_the_workers(env_to_receiver):
    """An unwrapped task submitted from session b to a fork pool whose workers were forked inside session a is not recorded in a."""
    receiver = env_to_receiver
    sdk.init()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        with sdk.session("a") as a:
            pool.submit(sdk.context.wrap(traced_task), "a-first").result()  # the worker forks here
        with sdk.session("b") as b:
            pool.submit(traced_task_flushed, "b-unwrapped").result()
    got = _one_each(receiver, ["b-unwrapped"])
    assert got["b-unwrapped"].attributes.get("session.id") == b.id != a.id  # carried by the submit patch


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_process_with_context_wrap_joins_the_session(env_to_receiver, method):
    """multiprocessing.Process(target=sdk.context.wrap(fn)) with fork and spawn: the child's spans are in the session's trace, under the span that started it, with its session.id."""
    receiver = env_to_receiver
    sdk.init()
    name = f"child-{method}"
    with sdk.session("parent") as s:
        with trace.get_tracer(TRACER).start_as_current_span("starting") as starting:
            child = multiprocessing.get_context(method).Process(
                target=sdk.context.wrap(process_main), args=(name,)
            )
            child.start()
        child.join(30)
    assert child.exitcode == 0
    sdk.flush()
    got = _exactly(receiver, ["parent", "starting", name])
    assert_in_session([got[name]], s, _hex_span_id(starting))


# -- os.fork() ---------------------------------------------------------------------------------------


def _fork(child: object, timeout: float = 15.0) -> dict[str, object]:
    """Fork; the child runs `child()` (returns a JSON-able dict) and leaves by os._exit.

    Returns what the child returned; fails if the child did not finish within `timeout` (a deadlock).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            result = child()  # type: ignore[operator]
            os.write(write_end, json.dumps(result).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail(f"forked child {pid} did not finish within {timeout}s (deadlocked)")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, object] = json.loads(output)
    return result


def _export_worker_alive() -> bool:
    return all(batch._worker.is_alive() for batch in runtime.current().batches)


def test_forked_child_exports_its_spans_and_the_parents_queue_is_not_sent_twice(receiver):
    """After os.fork() inside a session in a process that has exported, the child's export worker is alive, its spans arrive (in the inherited session and its own), and spans the parent had queued arrive once."""
    _init_caller(receiver, export_interval=60.0)  # the parent's spans stay queued until flush()
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span("warm-up"):
        pass
    assert sdk.flush()
    assert _wait_for_spans(receiver, ["warm-up"])
    for i in range(3):
        with tracer.start_as_current_span(f"queued-{i}"):
            pass
    assert len(receiver.spans) == 1  # the three are in the parent's queue at fork time

    def child() -> dict[str, object]:
        alive = _export_worker_alive()
        with tracer.start_as_current_span("inherited-span"):  # in the session the parent forked in
            pass
        with sdk.session("child-session") as s:  # nested in the inherited one: its own trace
            with tracer.start_as_current_span("child-span"):
                pass
        return {"alive": alive, "flushed": sdk.flush(), "session": s.id, "trace": s.trace_id}

    with sdk.session("forking") as forking:
        result = _fork(child)
    assert result["alive"] is True
    assert result["flushed"] is True
    assert sdk.flush()
    names = ["warm-up", "queued-0", "queued-1", "queued-2", "forking"]
    names += ["inherited-span", "child-session", "child-span"]
    got = _exactly(receiver, names)
    assert_in_session([got["inherited-span"]], forking, _session_span_id(forking))
    assert got["child-session"].attributes["session.parent_id"] == forking.id
    assert got["child-session"].parent_span_id == ""
    assert got["child-span"].attributes["session.id"] == result["session"]
    assert got["child-span"].trace_id == result["trace"]
    assert got["child-span"].parent_span_id == got["child-session"].span_id
    assert len({s.span_id for s in receiver.spans}) == len(receiver.spans) == len(names)


def test_forking_while_another_thread_starts_and_ends_sessions_never_deadlocks_the_child(receiver):
    """Forking repeatedly while a thread spins sessions and spans (holding SDK locks at random moments): every child exports its own session and span and exits."""
    # The parent exports nothing during the loop (interval 60 s; a batch larger than the queue never
    # fills, the spinner's surplus is dropped): the children's exports never overlap the parent's.
    _init_caller(receiver, export_interval=60.0, max_queue_size=100, max_export_batch_size=1000)
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span("warm-up"):
        pass
    assert sdk.flush()
    stop = threading.Event()
    spun = [0]

    def spin() -> None:
        while not stop.is_set():
            with sdk.session("spinner") as s:
                s.set_tag("spinning")
                with tracer.start_as_current_span("spin"):
                    pass
            spun[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    children: list[dict[str, object]] = []
    try:
        for i in range(FORKS):
            while spun[0] < 3 * (i + 1):  # fork while the spinner is mid-loop
                time.sleep(0.001)

            def child(i: int = i) -> dict[str, object]:
                alive = _export_worker_alive()
                with sdk.session(f"forked-{i}") as s:
                    with tracer.start_as_current_span(f"forked-span-{i}"):
                        pass
                return {"alive": alive, "flushed": sdk.flush(), "session": s.id}

            children.append(_fork(child, timeout=10.0))
    finally:
        stop.set()
        spinner.join()
    assert [(c["alive"], c["flushed"]) for c in children] == [(True, True)] * FORKS
    names = [f"forked-{i}" for i in range(FORKS)] + [f"forked-span-{i}" for i in range(FORKS)]
    got = _one_each(receiver, names)
    for i, result in enumerate(children):
        assert got[f"forked-{i}"].attributes["session.id"] == result["session"]
        assert got[f"forked-span-{i}"].attributes["session.id"] == result["session"]
        assert got[f"forked-span-{i}"].parent_span_id == got[f"forked-{i}"].span_id


def _sdk_locks() -> list[tuple[str, threading.Lock | threading.RLock]]:
    """Every lock of the SDK's own that a forked child may need (the exporter's aside, see below)."""
    from sdk import reaper

    batch = runtime.current().batches[0]
    return [
        ("session registry", STATE.registry.lock),
        ("runtime swap", STATE.runtime_lock),
        ("init/shutdown", STATE.lifecycle_lock),
        ("log-once guard", STATE.warned_lock),
        ("patches", STATE.patches_lock),
        ("idle reaper", reaper.reaper()._lock),
        ("export queue", batch._append_lock),
        ("flush waiters", batch._flush_lock),
        ("batch in flight", batch._inflight_lock),
        ("console summaries", STATE.summary_lock),
        ("counters", STATE.counters.spans_dropped._lock),
    ]


def test_fork_while_another_thread_holds_every_sdk_lock_child_still_works(receiver):
    """A child forked while another thread holds each of the SDK's locks has its idle reaper running, re-inits, starts a session, exports and shuts down without blocking."""
    _init_caller(receiver, session_idle_timeout=60.0)
    with trace.get_tracer(TRACER).start_as_current_span("warm-up"):
        pass
    assert sdk.flush()
    locks = _sdk_locks()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for _, lock in locks:
            lock.acquire()
        held.set()
        release.wait(30)
        for _, lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:

        def child() -> dict[str, object]:
            from sdk.reaper import reaper as the_reaper

            reaper_running = the_reaper().running
            sdk.init(endpoint=receiver.url, service_name="forked", export_interval=0.05)
            with sdk.session("locked-out") as s:
                with trace.get_tracer(TRACER).start_as_current_span("after-fork"):
                    pass
            flushed = sdk.flush()
            sdk.shutdown(timeout=2.0)
            return {"flushed": flushed, "session": s.id, "reaper": reaper_running}

        result = _fork(child, timeout=10.0)
    finally:
        release.set()
        holder.join()
    assert result["flushed"] is True
    assert result["reaper"] is True
    got = _exactly(receiver, ["warm-up", "locked-out", "after-fork"])
    assert got["after-fork"].attributes["session.id"] == result["session"]
    assert got["after-fork"].resource["service.name"] == "forked"
    assert got["after-fork"].parent_span_id == got["locked-out"].span_id


class _PeerHandler(receiver_module._Handler):
    def do_POST(self) -> None:
        self.headers["x-peer"] = f"{self.client_address[0]}:{self.client_address[1]}"
        super().do_POST()


class PeerReceiver(OTLPReceiver):
    """An OTLPReceiver that also records which client connection each request came on (x-peer)."""

    def start(self) -> PeerReceiver:
        super().start()
        assert self._server is not None
        self._server.RequestHandlerClass = _PeerHandler
        return self


def test_forked_child_exports_over_its_own_connection():
    """A forked child's exporter opens its own connection instead of writing on the parent's kept-alive socket."""
    with PeerReceiver() as receiver:
        _init_caller(receiver)
        tracer = trace.get_tracer(TRACER)
        with tracer.start_as_current_span("parent-before"):
            pass
        assert sdk.flush()

        def child() -> dict[str, object]:
            with tracer.start_as_current_span("child-export"):
                pass
            return {"flushed": sdk.flush()}

        assert _fork(child)["flushed"] is True
        with tracer.start_as_current_span("parent-after"):
            pass
        assert sdk.flush()
        peers = {
            span.name: request.headers["x-peer"] for request in receiver.requests for span in request.spans
        }
    assert peers["parent-before"] == peers["parent-after"]
    assert peers["child-export"] != peers["parent-before"]


def test_forked_child_does_not_end_or_export_the_parents_open_session(receiver):
    """A forked child that shuts the SDK down does not end the parent's open session: its span is exported once, by the parent, as success."""
    _init_caller(receiver)
    s = sdk.start_session("parent-open")
    _fork(lambda: {"shutdown": sdk.shutdown(timeout=2.0)})
    s.end()
    assert sdk.flush()
    spans = _wait_for_spans(receiver, ["parent-open"])
    assert [x.attributes["session.state"] for x in spans] == ["success"]


def test_forked_child_spans_carry_the_childs_process_pid(receiver):
    """Spans a forked child exports carry the child's process.pid in their resource."""
    _init_caller(receiver)

    def child() -> dict[str, object]:
        with trace.get_tracer(TRACER).start_as_current_span("pid-span"):
            pass
        return {"pid": os.getpid(), "flushed": sdk.flush()}

    result = _fork(child)
    got = _one_each(receiver, ["pid-span"])
    assert got["pid-span"].resource["process.pid"] == result["pid"]


FORK_IN_FRESH_PROCESS = """
    import json, os, sys, time
    from opentelemetry import trace
    assert "concurrent.futures.thread" not in sys.modules  # nothing imported it before sdk
    import sdk

    sdk.init()  # the SDK's TracerProvider is created here
    with trace.get_tracer("t").start_as_current_span("warm-up"):
        pass
    assert sdk.flush()
    pid = os.fork()  # the provider's at-fork handler runs resource detectors in a ThreadPoolExecutor
    if pid == 0:
        with trace.get_tracer("t").start_as_current_span("child-span"):
            pass
        os._exit(0 if sdk.flush() else 3)
    deadline = time.monotonic() + 10
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            print(json.dumps({"child": "deadlocked"}))
            sys.exit(0)
        time.sleep(0.01)
    print(json.dumps({"child": "exited"}))
"""


def test_fork_in_a_fresh_process_after_init_does_not_deadlock_the_child(receiver, tmp_path):
    """In a process where nothing imported concurrent.futures before sdk, a child forked after init() gets through OpenTelemetry's at-fork handler and exports."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_IN_FRESH_PROCESS)],
        cwd=tmp_path,
        env=_child_env(receiver),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"child": "exited"}
    assert sorted(s.name for s in _wait_for_spans(receiver, ["warm-up", "child-span"])) == [
        "child-span",
        "warm-up",
    ]


FORK_DURING_EXPORTER_BUILD = """
    import json, os, time
    from opentelemetry import trace
    import sdk
    from sdk import runtime

    sdk.init(flush_timeout=1.5)
    deferred = runtime.current().batches[0].exporter
    deadline = time.monotonic() + 5
    while not deferred._lock.locked() and deferred.built is None and time.monotonic() < deadline:
        pass  # the export worker is building the exporter (importing requests, protobuf, ...)
    pid = os.fork()
    if pid == 0:
        with trace.get_tracer("t").start_as_current_span("child-span"):
            pass
        os._exit(0 if sdk.flush() else 3)
    print(json.dumps({"child_exit": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}))
"""


def test_fork_right_after_init_child_still_exports(receiver, tmp_path):
    """A process forked right after init(), while the exporter is still being built, exports the child's spans."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_DURING_EXPORTER_BUILD)],
        cwd=tmp_path,
        env=_child_env(receiver),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"child_exit": 0}
    assert [s.name for s in _wait_for_spans(receiver, ["child-span"], timeout=2)] == ["child-span"]
