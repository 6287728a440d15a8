"""The session across in-process boundaries: asyncio, executors, threads, sdk.context, W3C headers.

Each boundary is checked by default and with its setting changed, on every span it produces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.process  # noqa: F401 - imported, so ProcessPoolExecutor.submit is patched at init()
import email.message
import sys
import threading
import types
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan

import sdk
from sdk.instrumentation import base as instrument
from sdk.instrumentation.threads import EXECUTOR_PATCH, PROCESS_POOL_PATCH, THREAD_PATCH
from sdk.testing import CapturedSpans, capture

TRACEPARENT_REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def context_patches() -> list[str]:
    """The context-propagation patches in place (the LLM client patches are not this file's concern)."""
    return sorted(n for n in instrument.applied() if n in (EXECUTOR_PATCH, PROCESS_POOL_PATCH, THREAD_PATCH))


def _span_id(session: sdk.Session) -> int:
    return session.span.get_span_context().span_id


def _traceparent(span_context: trace.SpanContext) -> str:
    """The traceparent header W3C trace context writes for this span context."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def _work_spans(captured: CapturedSpans, names: Sequence[str]) -> list[ReadableSpan]:
    """The ended spans with these names, exactly one each."""
    spans = [s for s in captured.spans() if s.name in names]
    assert sorted(s.name for s in spans) == sorted(names)
    return spans


def assert_in_session(spans: Sequence[ReadableSpan], session: sdk.Session) -> None:
    """Every span carries the session's id, sits in its trace, and is a child of the session's span."""
    assert spans
    for span in spans:
        assert span.attributes is not None
        assert span.attributes.get("session.id") == session.id, span.name
        assert f"{span.context.trace_id:032x}" == session.trace_id, span.name
        assert span.parent is not None, span.name
        assert span.parent.span_id == _span_id(session), span.name


def assert_in_no_session(spans: Sequence[ReadableSpan]) -> None:
    """Every span is the root of a new trace and carries no session.id."""
    assert spans
    for span in spans:
        assert span.attributes is not None
        assert "session.id" not in span.attributes, span.name
        assert span.parent is None, span.name


def _traced(name: str) -> None:
    with trace.get_tracer("tests.context").start_as_current_span(name):
        pass


async def _traced_async(name: str) -> None:
    await asyncio.sleep(0)
    _traced(name)


# -- asyncio tasks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("propagate_executors", [True, False])
async def test_create_task_and_gather_continue_the_session_whatever_the_setting(propagate_executors):
    """asyncio copies the context into every task, so create_task and gather carry the session with or without the executor patch."""
    captured = capture(propagate_executors=propagate_executors)
    async with sdk.session("tasks") as s:
        await asyncio.create_task(_traced_async("created"))
        await asyncio.gather(_traced_async("gathered-1"), _traced_async("gathered-2"))
    names = ["created", "gathered-1", "gathered-2"]
    assert_in_session(_work_spans(captured, names), s)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
async def test_taskgroup_tasks_continue_the_session(captured):
    """Tasks of an asyncio.TaskGroup opened inside a session carry it (each task copies the context)."""
    async with sdk.session("group") as s:
        async with asyncio.TaskGroup() as group:
            for i in range(3):
                group.create_task(_traced_async(f"member-{i}"))
    assert_in_session(_work_spans(captured, ["member-0", "member-1", "member-2"]), s)


async def test_task_created_outside_any_session_has_none(captured):
    """A task created outside every session (and no auto session) starts no session of its own."""
    await asyncio.create_task(_traced_async("orphan-task"))
    assert_in_no_session(_work_spans(captured, ["orphan-task"]))


@pytest.mark.parametrize("propagate_executors", [True, False])
async def test_to_thread_carries_the_session_whatever_the_setting(propagate_executors):
    """asyncio.to_thread runs the function in a copy of the caller's context, so it stays in the session even with the patch off."""
    captured = capture(propagate_executors=propagate_executors)
    async with sdk.session("to-thread") as s:
        await asyncio.to_thread(_traced, "in-to-thread")
    assert_in_session(_work_spans(captured, ["in-to-thread"]), s)


# -- executors -------------------------------------------------------------------------------------


async def test_run_in_executor_carries_the_session_by_default(captured):
    """loop.run_in_executor, with the default executor and with an explicit ThreadPoolExecutor, continues the session by default."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as pool:
        async with sdk.session("executor") as s:
            await loop.run_in_executor(None, _traced, "default-executor")
            await loop.run_in_executor(pool, _traced, "explicit-executor")
    assert_in_session(_work_spans(captured, ["default-executor", "explicit-executor"]), s)


def test_thread_pool_submit_and_map_carry_the_session_by_default(captured):
    """ThreadPoolExecutor.submit and .map continue the caller's session by default (propagate_executors=True)."""
    with ThreadPoolExecutor(3) as pool:
        with sdk.session("pool") as s:
            pool.submit(_traced, "submitted").result()
            list(pool.map(_traced, ["mapped-0", "mapped-1", "mapped-2"]))
    assert_in_session(_work_spans(captured, ["submitted", "mapped-0", "mapped-1", "mapped-2"]), s)


def test_pool_carries_each_submitters_own_session(captured):
    """One shared pool fed by many sessions at once puts each task's spans in the session that submitted it."""
    barrier = threading.Barrier(4)
    made: dict[str, list[str]] = {}

    def client(pool: ThreadPoolExecutor, i: int) -> None:
        with sdk.session(f"client-{i}") as s:
            barrier.wait()
            names = [f"c{i}-task{j}" for j in range(10)]
            for future in [pool.submit(_traced, name) for name in names]:
                future.result()
            made[s.id] = names

    with ThreadPoolExecutor(3) as pool:
        clients = [threading.Thread(target=client, args=(pool, i)) for i in range(4)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
    assert sdk.sessions() == []
    roots = {span.attributes["session.id"]: span for span in captured.spans() if span.parent is None}
    for sid, names in made.items():
        root = roots[sid]
        for span in _work_spans(captured, names):
            assert span.attributes["session.id"] == sid
            assert span.context.trace_id == root.context.trace_id
            assert span.parent.span_id == root.context.span_id
    assert len(captured.spans()) == 4 + 40


@pytest.mark.parametrize("auto", [False, True], ids=["no-auto-session", "auto-session"])
async def test_executors_not_carried_with_propagate_executors_off(auto):
    """With propagate_executors=False, submit/map/run_in_executor work leaves the session: it goes to the auto session when one runs, else to none."""
    captured = capture(propagate_executors=False, auto_start_session=auto)
    assert context_patches() == []
    loop = asyncio.get_running_loop()
    names = ["submitted", "mapped", "default-executor", "explicit-executor"]
    with ThreadPoolExecutor(2) as pool:
        async with sdk.session("left-behind"):
            pool.submit(_traced, "submitted").result()
            list(pool.map(_traced, ["mapped"]))
            await loop.run_in_executor(None, _traced, "default-executor")
            await loop.run_in_executor(pool, _traced, "explicit-executor")
    spans = _work_spans(captured, names)
    if auto:
        auto_session = sdk.current_session()
        assert auto_session is not None
        assert auto_session.auto
        assert_in_session(spans, auto_session)
    else:
        assert_in_no_session(spans)


# -- threads ---------------------------------------------------------------------------------------


class TracingThread(threading.Thread):
    """A Thread subclass that overrides run() instead of taking a target."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.span_name = name

    def run(self) -> None:
        _traced(self.span_name)


def _run_threads(*threads: threading.Thread) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("auto", [False, True], ids=["no-auto-session", "auto-session"])
def test_threads_not_carried_by_default(auto):
    """A new Thread (target or run() subclass) starts outside the session by default: in the auto session when one runs, else in none."""
    captured = capture(auto_start_session=auto)
    with sdk.session("starter"):
        _run_threads(
            threading.Thread(target=_traced, args=("target-thread",)), TracingThread("subclass-thread")
        )
    spans = _work_spans(captured, ["target-thread", "subclass-thread"])
    if auto:
        auto_session = sdk.current_session()
        assert auto_session is not None
        assert_in_session(spans, auto_session)
    else:
        assert_in_no_session(spans)


def test_threads_carried_with_propagate_threads():
    """With propagate_threads=True a Thread, a Thread subclass overriding run() and a Timer continue the session of the code that started them."""
    captured = capture(propagate_threads=True)
    assert context_patches() == sorted([EXECUTOR_PATCH, PROCESS_POOL_PATCH, THREAD_PATCH])
    with sdk.session("starter") as s:
        timer = threading.Timer(0.0, _traced, args=("timer-thread",))
        _run_threads(
            threading.Thread(target=_traced, args=("target-thread",)), TracingThread("subclass-thread"), timer
        )
    assert_in_session(_work_spans(captured, ["target-thread", "subclass-thread", "timer-thread"]), s)


def test_thread_started_outside_sessions_with_propagate_threads_has_none():
    """With propagate_threads=True a thread started where there is nothing to carry runs in no session."""
    captured = capture(propagate_threads=True)
    _run_threads(threading.Thread(target=_traced, args=("plain",)))
    assert_in_no_session(_work_spans(captured, ["plain"]))


def test_thread_binding_is_dropped_when_run_returns():
    """The propagate_threads binding lives only while run() runs: a finished Thread object holds no session."""
    captured = capture(propagate_threads=True)
    release = threading.Event()

    def work() -> None:
        release.wait(5)
        _traced("bound")

    with sdk.session("starter") as s:
        t = threading.Thread(target=work)
        t.start()
        assert "run" in t.__dict__
    release.set()
    t.join()
    assert "run" not in t.__dict__
    assert_in_session(_work_spans(captured, ["bound"]), s)


def test_pool_workers_do_not_keep_the_session_that_started_them():
    """With both patches on, a pool worker thread started inside session A does not put later work from elsewhere into A."""
    captured = capture(propagate_threads=True)
    with ThreadPoolExecutor(1) as pool:
        with sdk.session("a") as a:
            pool.submit(_traced, "in-a").result()  # the pool's one worker starts here
        pool.submit(_traced, "outside").result()
        with sdk.session("b") as b:
            pool.submit(_traced, "in-b").result()
    assert_in_session(_work_spans(captured, ["in-a"]), a)
    assert_in_no_session(_work_spans(captured, ["outside"]))
    assert_in_session(_work_spans(captured, ["in-b"]), b)


def test_context_wrap_carries_into_a_thread(captured):
    """sdk.context.wrap binds a function to the caller's session and span: a Thread running it stays in the session."""
    with sdk.session("wrapped") as s:
        with trace.get_tracer("tests").start_as_current_span("handing-off") as parent:
            t = threading.Thread(target=sdk.context.wrap(_traced), args=("wrapped-thread",))
        t.start()  # started after the span ended: wrap captured the context when it was called
        t.join()
    (span,) = _work_spans(captured, ["wrapped-thread"])
    assert span.attributes["session.id"] == s.id
    assert f"{span.context.trace_id:032x}" == s.trace_id
    assert span.parent.span_id == parent.get_span_context().span_id


def test_wrap_restores_the_calling_threads_own_context(captured):
    """A wrapped function called in a thread that has its own session runs in the wrapped one, then the thread's own is current again."""
    with sdk.session("origin") as origin:
        wrapped = sdk.context.wrap(_traced)
    with sdk.session("caller") as caller:
        wrapped("via-wrap")
        assert sdk.current_session() is caller
        _traced("caller-own")
    assert_in_session(_work_spans(captured, ["via-wrap"]), origin)
    assert_in_session(_work_spans(captured, ["caller-own"]), caller)


# -- sdk.context.run -------------------------------------------------------------------------------


def test_context_run_keeps_a_session_started_inside_from_the_caller(captured):
    """sdk.context.run calls a function in a copy of the context: a start_session() inside it is current there, never in the caller."""

    def callback() -> sdk.Session:
        started = sdk.start_session("callback-session")
        assert sdk.current_session() is started
        _traced("inside-callback")
        return started

    inner = sdk.context.run(callback)
    assert sdk.current_session() is None
    _traced("caller-after")
    assert inner.state is sdk.SessionState.RUNNING
    inner.end()
    assert_in_session(_work_spans(captured, ["inside-callback"]), inner)
    assert_in_no_session(_work_spans(captured, ["caller-after"]))


def test_start_session_without_context_run_leaks_into_the_caller(captured):
    """Without sdk.context.run, a callback's start_session() stays current in the code that called the callback."""

    def callback() -> sdk.Session:
        return sdk.start_session("leaky")

    leaked = callback()
    assert sdk.current_session() is leaked
    _traced("caller-after")
    leaked.end()
    assert_in_session(_work_spans(captured, ["caller-after"]), leaked)


# -- W3C headers -----------------------------------------------------------------------------------


def test_inject_extract_round_trip(trusting):
    """inject() writes traceparent and baggage with session.id; extract() gives a context whose spans join that trace, span and session."""
    captured = trusting
    with sdk.session("caller") as s:
        with trace.get_tracer("tests").start_as_current_span("client-call") as call:
            headers = sdk.context.inject()
    assert headers == {"traceparent": _traceparent(call.get_span_context()), "baggage": f"session.id={s.id}"}
    assert headers["traceparent"].split("-")[1] == s.trace_id

    ctx = sdk.context.extract(headers)
    assert sdk.context.session_id_from(ctx) == s.id
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.is_remote
    assert (remote.trace_id, remote.span_id) == (int(s.trace_id, 16), call.get_span_context().span_id)

    # A span started under the extracted context (here in a thread with no session) joins it.
    def handler() -> None:
        with trace.get_tracer("tests").start_as_current_span("server-side", context=ctx):
            pass

    _run_threads(threading.Thread(target=handler))
    (server,) = _work_spans(captured, ["server-side"])
    assert server.attributes["session.id"] == s.id
    assert f"{server.context.trace_id:032x}" == s.trace_id
    assert server.parent.span_id == call.get_span_context().span_id


def test_extract_matches_header_names_case_insensitively(trusting):
    """extract() finds Traceparent/BAGGAGE in any letter case, and a span under it carries the remote session.id."""
    captured = trusting
    for headers in (
        {"Traceparent": TRACEPARENT_REMOTE, "Baggage": "session.id=remote-1"},
        {"TRACEPARENT": TRACEPARENT_REMOTE, "BAGGAGE": "session.id=remote-1"},
    ):
        ctx = sdk.context.extract(headers)
        assert sdk.context.session_id_from(ctx) == "remote-1"
        assert trace.get_current_span(ctx).get_span_context().trace_id == int(TRACEPARENT_REMOTE[3:35], 16)
    message = email.message.Message()  # http.server's request.headers is one of these
    message["TraceParent"] = TRACEPARENT_REMOTE
    message["baggage"] = "session.id=remote-1,other=x"
    ctx = sdk.context.extract(message)  # type: ignore[arg-type]
    assert sdk.context.session_id_from(ctx) == "remote-1"
    with trace.get_tracer("tests").start_as_current_span("under-remote", context=ctx):
        pass
    (span,) = _work_spans(captured, ["under-remote"])
    assert span.attributes["session.id"] == "remote-1"
    assert f"{span.context.trace_id:032x}" == TRACEPARENT_REMOTE[3:35]
    assert f"{span.parent.span_id:016x}" == TRACEPARENT_REMOTE[36:52]


@pytest.mark.parametrize("auto", [False, True], ids=["no-auto-session", "auto-session"])
def test_bare_remote_traceparent_carries_the_trace_not_the_session(auto):
    """A traceparent from another process without baggage puts spans in the remote trace but not in the remote session: they get this process's auto session's id, or none."""
    captured = capture(auto_start_session=auto)
    ctx = sdk.context.extract({"traceparent": TRACEPARENT_REMOTE})
    with trace.get_tracer("tests").start_as_current_span("bare", context=ctx):
        pass
    (span,) = _work_spans(captured, ["bare"])
    assert f"{span.context.trace_id:032x}" == TRACEPARENT_REMOTE[3:35]
    assert f"{span.parent.span_id:016x}" == TRACEPARENT_REMOTE[36:52]
    auto_session = sdk.current_session()
    assert span.attributes.get("session.id") == (auto_session.id if auto_session else None)
    assert (auto_session is not None) is auto


def test_inject_outside_a_span_uses_the_session_span(captured):
    """Outside any span, inject() makes the current session's own span the parent (explicit and auto sessions alike)."""
    with sdk.session("no-span-yet") as s:
        assert sdk.context.inject() == {
            "traceparent": _traceparent(s.span.get_span_context()),
            "baggage": f"session.id={s.id}",
        }
    capture(auto_start_session=True)
    auto = sdk.current_session()
    assert auto is not None
    assert trace.get_current_span().get_span_context().is_valid is False
    headers = sdk.context.inject()
    assert headers == {
        "traceparent": _traceparent(auto.span.get_span_context()),
        "baggage": f"session.id={auto.id}",
    }


def test_inject_with_no_session_writes_only_the_ambient_context(captured):
    """With no session, inject() writes nothing outside a span, only traceparent inside one, and the application's own baggage unchanged."""
    assert sdk.context.inject() == {}
    with trace.get_tracer("tests").start_as_current_span("plain") as span:
        headers = sdk.context.inject()
        assert headers == {"traceparent": _traceparent(span.get_span_context())}
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        assert sdk.context.inject() == {"baggage": "tenant=acme"}
    finally:
        otel_context.detach(token)
    carrier = {"x-existing": "kept"}
    assert sdk.context.inject(carrier) is carrier
    assert carrier == {"x-existing": "kept"}


def test_inject_passes_on_the_session_of_the_trace_not_the_auto_session():
    """inject() names the session that owns the current trace (or the trusted remote one the context came with), never the auto session instead."""
    capture(auto_start_session=True, accept_session_from="all")
    auto = sdk.current_session()
    assert auto is not None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # A consumer that received only traceparent from a session of this process.
    bare: dict[str, str] = {}
    forwarded: dict[str, str] = {}
    with sdk.session("producer") as producer:
        TraceContextTextMapPropagator().inject(bare)

        def consumer() -> None:
            ctx = TraceContextTextMapPropagator().extract(bare)
            with trace.get_tracer("tests").start_as_current_span("consume", context=ctx):
                forwarded.update(sdk.context.inject())

        _run_threads(threading.Thread(target=consumer))
    assert forwarded["baggage"] == f"session.id={producer.id}"
    assert forwarded["traceparent"].split("-")[1] == producer.trace_id

    # A service continuing a remote session and calling further downstream.
    incoming = {"traceparent": TRACEPARENT_REMOTE, "tracestate": "vendor=x", "baggage": "session.id=remote-7"}
    token = otel_context.attach(sdk.context.extract(incoming))
    try:
        downstream = sdk.context.inject()
    finally:
        otel_context.detach(token)
    assert downstream == incoming


def test_session_parent_accepts_injected_headers(trusting):
    """sdk.session(parent=headers) continues the caller's session, even one still open in this process: same session.id, a child of the caller's span in its trace."""
    captured = trusting

    def serve(headers: dict[str, str]) -> None:
        with sdk.session("handle", parent=headers) as continued:
            assert continued.id == caller.id
            _traced("handler-work")

    with sdk.session("caller") as caller:
        with trace.get_tracer("tests").start_as_current_span("call") as call:
            # Served in this process while the caller's session is open: both share the id.
            _run_threads(threading.Thread(target=serve, args=(sdk.context.inject(),)))
    handle = next(s for s in captured.spans() if s.name == "handle")
    assert handle.attributes["session.id"] == caller.id
    assert handle.attributes["session.continued"] is True
    assert f"{handle.context.trace_id:032x}" == caller.trace_id
    assert handle.parent.span_id == call.get_span_context().span_id
    (work,) = _work_spans(captured, ["handler-work"])
    assert work.attributes["session.id"] == caller.id
    assert work.parent.span_id == handle.context.span_id


@pytest.mark.usefixtures("trusting")
def test_session_parent_accepts_http_server_headers():
    """sdk.session(parent=request.headers) accepts the header object http.server hands a handler, as extract() does."""
    message = email.message.Message()
    message["traceparent"] = TRACEPARENT_REMOTE
    message["baggage"] = "session.id=remote-2"
    with sdk.session("handle", parent=message) as s:  # type: ignore[call-overload]
        assert s.id == "remote-2"


# -- the patches themselves ------------------------------------------------------------------------


def _submit_attribute() -> object:
    return ThreadPoolExecutor.__dict__["submit"]


def test_patches_applied_once_removed_by_shutdown_reapplied_by_init():
    """However many init() calls, ThreadPoolExecutor.submit is wrapped once; shutdown() restores the original; the next init() wraps it again."""
    sdk.init(exporter="none")
    sdk.init(exporter="none")
    sdk.init(exporter="none", service_name="changed")  # a new pipeline: patches stay as they are
    sdk.init(exporter="none", propagate_threads=True)
    sdk.init(exporter="none", propagate_threads=True, service_name="again")
    assert context_patches() == sorted([EXECUTOR_PATCH, PROCESS_POOL_PATCH, THREAD_PATCH])
    patched = _submit_attribute()
    original = patched.__wrapped__  # type: ignore[attr-defined]
    assert isinstance(original, types.FunctionType)
    assert not hasattr(original, "__wrapped__")  # one layer of wrapping, not one per init()
    assert isinstance(threading.Thread.__dict__["start"].__wrapped__, types.FunctionType)

    sdk.init(exporter="none", propagate_threads=False)
    assert context_patches() == sorted([EXECUTOR_PATCH, PROCESS_POOL_PATCH])
    assert isinstance(threading.Thread.__dict__["start"], types.FunctionType)

    sdk.shutdown()
    assert context_patches() == []
    assert _submit_attribute() is original

    sdk.init(exporter="none")
    assert context_patches() == sorted([EXECUTOR_PATCH, PROCESS_POOL_PATCH])
    again = _submit_attribute()
    assert again.__wrapped__ is original  # type: ignore[attr-defined]

    sdk.init(exporter="none", enabled=False)
    assert context_patches() == []
    assert _submit_attribute() is original
