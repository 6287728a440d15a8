"""Runs inside one peer's virtual environment: its span API against raw OpenTelemetry, same process.

    python worker.py PEER SINK_URL ROUNDS WARMUP OPS THREADS SPANS_PER_THREAD

Standalone on purpose (standard library and OpenTelemetry only): it runs under each peer's own
interpreter, with whatever OpenTelemetry version that peer pins. Prints one JSON object.

- per span: ``OPS`` calls of a trivial function under the peer's decorator, inside the peer's own
  session / trace scope, against ``with tracer.start_as_current_span(...)`` around the same plain
  function on a local raw ``TracerProvider`` + ``BatchSpanProcessor(OTLPSpanExporter(sink))``
  inside one parent span; both export over OTLP/HTTP to the same loopback sink; interleaved
  rounds (the order alternating), GC collected before and off during each sample.
- attribution: ``THREADS`` threads released together, each in its own session / trace (its root
  named ``root_<i>``), each calling its own decorated function (``att_<i>``) ``SPANS_PER_THREAD``
  times. A span processor added to the peer's provider records every span; a span is
  misattributed when its trace is not its thread's root's trace, or when the peer has a session
  attribute and it is not its thread's session.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

R = TypeVar("R")


class Recorder(SpanProcessor):
    """Keeps (name, trace id, attributes) of the spans that end while `on` is set."""

    def __init__(self) -> None:
        self.on = False
        self.spans: list[tuple[str, int, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            ctx = span.get_span_context()
            item = (span.name, ctx.trace_id if ctx else 0, dict(span.attributes or {}))
            with self.lock:
                self.spans.append(item)


class Peer:
    """One SDK under test: set up, its decorator, its session scope, where its session id goes."""

    session_attribute: str | None = None
    dist = ""  # the distribution name, for its version

    def setup(self, sink: str, recorder: Recorder) -> None:
        raise NotImplementedError

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        raise NotImplementedError

    def session(self, i: int) -> contextlib.AbstractContextManager[str | None]:
        """The peer's session / trace for worker i; yields the session value spans must carry."""
        raise NotImplementedError

    def in_session(self, i: int, body: Callable[[str | None], R]) -> R:
        """Run `body(session value)` inside the peer's session / trace for worker i."""
        with self.session(i) as value:
            return body(value)

    def flush(self) -> None:
        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()

    @staticmethod
    def attach(recorder: Recorder) -> None:
        provider = trace.get_tracer_provider()
        provider.add_span_processor(recorder)  # type: ignore[attr-defined]

    @staticmethod
    def version(dist: str) -> str:
        from importlib import metadata

        return metadata.version(dist)


class SessionTrace(Peer):
    session_attribute = "session.id"

    def setup(self, sink: str, recorder: Recorder) -> None:
        import sdk

        sdk.init(endpoint=sink, service_name="bench", span_processors=[recorder])
        self.sdk = sdk
        self.dist = "sessiontrace"

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        fn.__name__ = fn.__qualname__ = name
        return self.sdk.tool(fn)

    @contextlib.contextmanager
    def session(self, i: int) -> Iterator[str | None]:
        with self.sdk.session(f"root_{i}") as s:
            yield s.id

    def flush(self) -> None:
        self.sdk.flush(30.0)


class AgentOps(Peer):
    def setup(self, sink: str, recorder: Recorder) -> None:
        import agentops

        agentops.init(
            api_key="00000000-0000-4000-8000-000000000000",
            endpoint=sink,
            app_url=sink,
            exporter_endpoint=sink + "/v1/traces",
            auto_start_session=False,
            instrument_llm_calls=False,
            env_data_opt_out=True,
            log_session_replay_url=False,
        )
        self.agentops = agentops
        self.dist = "agentops"
        self.attach(recorder)

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        fn.__name__ = fn.__qualname__ = name
        return self.agentops.operation(name=name)(fn)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def session(self, i: int) -> Iterator[str | None]:
        ctx = self.agentops.start_trace(f"root_{i}")
        try:
            yield None
        finally:
            self.agentops.end_trace(ctx)


class Traceloop(Peer):
    session_attribute = "traceloop.association.properties.session_id"

    def setup(self, sink: str, recorder: Recorder) -> None:
        from traceloop.sdk import Traceloop as T
        from traceloop.sdk.decorators import task, workflow

        T.init(app_name="bench", api_endpoint=sink, telemetry_enabled=False)
        self.T, self.task, self.workflow = T, task, workflow
        self.dist = "traceloop-sdk"
        self.attach(recorder)

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        fn.__name__ = fn.__qualname__ = name
        return self.task(name=name)(fn)  # type: ignore[no-any-return]

    def in_session(self, i: int, body: Callable[[str | None], R]) -> R:
        # Traceloop's session scope is a @workflow function with association properties set in it.
        value = f"s{i}"

        def root() -> R:
            self.T.set_association_properties({"session_id": value})
            return body(value)

        root.__name__ = root.__qualname__ = f"root_{i}"
        return self.workflow(name=f"root_{i}")(root)()  # type: ignore[no-any-return]


class Logfire(Peer):
    def setup(self, sink: str, recorder: Recorder) -> None:
        import logfire

        logfire.configure(
            send_to_logfire=False,
            console=False,
            service_name="bench",
            additional_span_processors=[BatchSpanProcessor(OTLPSpanExporter(endpoint=sink + "/v1/traces"))],
        )
        self.logfire = logfire
        self.dist = "logfire"
        self.attach(recorder)

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        fn.__name__ = fn.__qualname__ = name
        return self.logfire.instrument(name, span_name=name, extract_args=False)(fn)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def session(self, i: int) -> Iterator[str | None]:
        with self.logfire.span(f"root_{i}", _span_name=f"root_{i}"):
            yield None

    def flush(self) -> None:
        self.logfire.force_flush()


class Langfuse(Peer):
    session_attribute = "session.id"

    def setup(self, sink: str, recorder: Recorder) -> None:
        from langfuse import Langfuse as L
        from langfuse import observe, propagate_attributes

        self.client = L(public_key="pk-lf-bench", secret_key="sk-lf-bench", base_url=sink)
        self.observe, self.propagate = observe, propagate_attributes
        self.dist = "langfuse"
        self.attach(recorder)

    def decorate(self, fn: Callable[[], None], name: str) -> Callable[[], None]:
        fn.__name__ = fn.__qualname__ = name
        return self.observe(name=name)(fn)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def session(self, i: int) -> Iterator[str | None]:
        value = f"s{i}"
        with (
            self.client.start_as_current_observation(as_type="span", name=f"root_{i}"),
            self.propagate(session_id=value),
        ):
            yield value

    def flush(self) -> None:
        self.client.flush()


PEERS: dict[str, type[Peer]] = {
    "sessiontrace": SessionTrace,
    "agentops": AgentOps,
    "traceloop-sdk": Traceloop,
    "logfire": Logfire,
    "langfuse": Langfuse,
}


def plain() -> None:
    return None


def timed(body: Callable[[int], None], ops: int) -> tuple[float, float]:
    gc.collect()
    gc.disable()
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        body(ops)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        gc.enable()
    return (t1 - t0) / ops, (c1 - c0) / ops


def per_span(peer: Peer, sink: str, rounds: int, warmup: int, ops: int) -> dict[str, Any]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink + "/v1/traces")))
    raw = provider.get_tracer("bench.raw")
    op = peer.decorate(lambda: None, "bench_op")

    def peer_body(n: int) -> None:
        for _ in range(n):
            op()

    def raw_body(n: int) -> None:
        start = raw.start_as_current_span
        for _ in range(n):
            with start("bench_op"):
                plain()

    def peer_sample() -> tuple[float, float]:
        result = peer.in_session(0, lambda _: timed(peer_body, ops))
        peer.flush()
        return result

    def raw_sample() -> tuple[float, float]:
        with raw.start_as_current_span("parent"):
            result = timed(raw_body, ops)
        provider.force_flush()
        return result

    out: dict[str, list[tuple[float, float]]] = {"peer": [], "raw": []}
    for i in range(warmup + rounds):
        order = [("peer", peer_sample), ("raw", raw_sample)]
        if i % 2:
            order.reverse()
        for name, sample in order:
            value = sample()
            if i >= warmup:
                out[name].append(value)
    provider.shutdown()
    return {"samples": out}


def attribution(peer: Peer, recorder: Recorder, threads: int, per_thread: int) -> dict[str, Any]:
    functions = [peer.decorate(lambda: None, f"att_{i}") for i in range(threads)]
    expected: dict[int, str | None] = {}
    errors: list[str] = []
    barrier = threading.Barrier(threads)

    def work(i: int, value: str | None) -> None:
        expected[i] = value
        barrier.wait(60)  # a thread that failed to start its session breaks it (no hang)
        fn = functions[i]
        for _ in range(per_thread):
            fn()

    def worker(i: int) -> None:
        try:
            peer.in_session(i, lambda value: work(i, value))
        except Exception:
            errors.append(traceback.format_exc(limit=3))
            barrier.abort()

    recorder.on = True
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    peer.flush()
    recorder.on = False
    root_trace: dict[int, int] = {}
    spans: list[tuple[int, int, dict[str, Any]]] = []
    for name, trace_id, attrs in recorder.spans:
        m = re.search(r"(root|att)_(\d+)", name)
        if m is None:
            continue
        if m.group(1) == "root":
            root_trace[int(m.group(2))] = trace_id
        else:
            spans.append((int(m.group(2)), trace_id, attrs))
    wrong_trace = wrong_session = 0
    for i, trace_id, attrs in spans:
        if trace_id != root_trace.get(i):
            wrong_trace += 1
        if peer.session_attribute is not None and attrs.get(peer.session_attribute) != expected.get(i):
            wrong_session += 1
    return {
        "expected": threads * per_thread,
        "recorded": len(spans),
        "roots": len(root_trace),
        "wrong_trace": wrong_trace,
        "wrong_session": wrong_session,
        "session_attribute": peer.session_attribute,
        "errors": errors[:3],
    }


def main() -> None:
    name, sink = sys.argv[1], sys.argv[2]
    rounds, warmup, ops, threads, per_thread = (int(x) for x in sys.argv[3:8])
    result: dict[str, Any] = {"peer": name}
    peer = PEERS[name]()
    recorder = Recorder()
    t0 = time.perf_counter()
    peer.setup(sink, recorder)
    result["setup_seconds"] = time.perf_counter() - t0
    result["version"] = peer.version(peer.dist)
    result["opentelemetry_sdk"] = peer.version("opentelemetry-sdk")
    try:
        result["per_span"] = per_span(peer, sink, rounds, warmup, ops)
    except Exception:
        result["per_span_error"] = traceback.format_exc(limit=4)
    try:
        result["attribution"] = attribution(peer, recorder, threads, per_thread)
    except Exception:
        result["attribution_error"] = traceback.format_exc(limit=4)
    sys.stdout.write("\nBENCH-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
