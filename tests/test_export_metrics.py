"""OTLP metrics and live sessions, checked at a real OTLP receiver that decodes the protobuf."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry import metrics, trace
from otlp_receiver import OTLPReceiver

import sdk
from sdk.export.batch import MARKER_NAME
from sdk.export.meters import EarlyMeterProvider, metrics_handle

SCRIPT = textwrap.dedent(
    """
    import os, time
    import sdk
    from opentelemetry import metrics, trace

    sdk.init(service_name="metrics-run", endpoint=os.environ["ENDPOINT"], export_interval=0.05)
    tracer = trace.get_tracer("script")
    for i in range(3):
        with sdk.session("ok"):
            with tracer.start_as_current_span("step"):
                time.sleep(0.01)
    try:
        with sdk.session("broken"):
            raise KeyError("x")
    except KeyError:
        pass
    left_open = sdk.start_session("open")
    indeterminate = sdk.start_session("given-up")
    sdk.end_session(indeterminate, "indeterminate")
    # A library recording through the global MeterProvider (as the GenAI instrumentation does).
    tokens = metrics.get_meter("genai").create_histogram("gen_ai.client.token.usage", unit="{token}")
    tokens.record(42, {"gen_ai.token.type": "input"})
    assert sdk.flush()
    print("FLUSHED", flush=True)
    """
)


def points_by_name(receiver: OTLPReceiver) -> dict[str, list]:
    names = {p.name for p in receiver.points}
    return {name: receiver.latest_points(name) for name in names}


def test_metrics_arrive_with_documented_names_units_and_values(tmp_path, receiver):
    """After a scripted run with known sessions, the receiver gets the documented metrics with the right values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
    child = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**env, "ENDPOINT": receiver.url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert "FLUSHED" in child.stdout
    got = points_by_name(receiver)

    def value(name: str, **attributes: str) -> float:
        matching = [p for p in got[name] if all(p.attributes.get(k) == v for k, v in attributes.items())]
        assert len(matching) == 1, (name, attributes, got.get(name))
        return matching[0].value

    # Exit ended the open session (indeterminate, "process exit"); the last export happened at exit.
    assert value("sessiontrace.sessions.started") == 6
    assert value("sessiontrace.sessions.ended", **{"session.state": "success"}) == 3
    assert value("sessiontrace.sessions.ended", **{"session.state": "fail"}) == 1
    assert value("sessiontrace.sessions.ended", **{"session.state": "indeterminate"}) == 2
    assert value("sessiontrace.sessions.open") == 0
    durations = {p.attributes["session.state"]: p for p in got["sessiontrace.session.duration"]}
    assert durations["success"].count == 3
    assert durations["success"].value >= 0.03
    assert durations["fail"].count == 1
    assert value("sessiontrace.spans.dropped") == 0
    assert value("sessiontrace.export.errors") == 0
    assert value("sessiontrace.spans.exported") >= 9  # the 4 sessions and 3 steps flushed; exit sent the rest
    assert value("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == 42

    units = {name: points[0].unit for name, points in got.items()}
    assert units["sessiontrace.sessions.started"] == "{session}"
    assert units["sessiontrace.session.duration"] == "s"
    assert units["sessiontrace.spans.exported"] == "{span}"
    assert units["sessiontrace.export.errors"] == "{error}"
    kinds = {name: points[0].kind for name, points in got.items()}
    assert kinds["sessiontrace.sessions.started"] == "sum"
    assert got["sessiontrace.sessions.started"][0].monotonic is True
    assert got["sessiontrace.sessions.open"][0].monotonic is False
    assert kinds["sessiontrace.session.duration"] == "histogram"
    assert all(p.resource["service.name"] == "metrics-run" for p in receiver.points)
    assert all(r.path in ("/v1/traces", "/v1/metrics") for r in receiver.requests)


def test_metrics_follow_the_interval_and_the_open_session_count(receiver):
    """With metric_export_interval set, metrics go out on their own; open sessions are reported while running."""
    sdk.init(endpoint=receiver.url, export_interval=0.05, metric_export_interval=0.1)
    session = sdk.start_session("long")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        open_now = receiver.latest_points("sessiontrace.sessions.open")
        if open_now and open_now[0].value == 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail("sessions.open=1 never arrived")
    sdk.end_session(session)
    assert sdk.flush()
    assert receiver.latest_points("sessiontrace.sessions.open")[0].value == 0


def test_metrics_off_sends_no_metrics(receiver):
    """metrics=False: only traces are sent."""
    sdk.init(endpoint=receiver.url, export_interval=0.05, metrics=False)
    with sdk.session("s"):
        pass
    assert sdk.flush()
    assert receiver.wait_for_spans(1)
    assert {r.path for r in receiver.requests} == {"/v1/traces"}


def test_sdk_sets_the_global_meter_provider_once():
    """The SDK's MeterProvider is the global one after an OTLP init, stays the same across re-init, and is
    backed by OpenTelemetry's metrics SDK once that is built (off init()'s thread)."""
    sdk.init(endpoint="http://127.0.0.1:9", metrics=True, export_interval=60)
    first = metrics.get_meter_provider()
    sdk.init(endpoint="http://127.0.0.1:9", metrics=True, service_name="other", export_interval=60)
    assert metrics.get_meter_provider() is first
    assert isinstance(first, EarlyMeterProvider)
    assert metrics_handle().wait_built(10) is not None
    assert type(first.real).__module__.startswith("opentelemetry.sdk.metrics")


# -- live sessions -----------------------------------------------------------------------------


def test_running_session_is_visible_before_it_ends(receiver):
    """A session still running gets a `session.start` marker exported at once: a child of its root span."""
    sdk.init(endpoint=receiver.url, export_interval=0.05, metrics=False)
    session = sdk.start_session("long-job", user_id="u-9", tags=["batch"])
    with session.use(), trace.get_tracer("t").start_as_current_span("first-step"):
        pass
    assert receiver.wait_for_spans(2)
    spans = {s.name: s for s in receiver.accepted_spans}
    marker = spans[MARKER_NAME]
    assert marker.trace_id == session.trace_id
    assert marker.parent_span_id == session.span_id
    assert marker.attributes == {
        "session.id": session.id,
        "session.name": "long-job",
        "session.state": "running",
        "sessiontrace.span.kind": "session.start",
        "user.id": "u-9",
        "session.tags": ["batch"],
        "openinference.span.kind": "CHAIN",  # the default dialect (docs/backends.md)
        "tag.tags": ["batch"],
    }
    assert spans["first-step"].parent_span_id == session.span_id  # finished children go out as usual
    assert "long-job" not in spans

    sdk.end_session(session)
    assert sdk.flush()
    names = [s.name for s in receiver.accepted_spans]
    assert sorted(names) == sorted([MARKER_NAME, "first-step", "long-job"])  # one marker, no duplicates


def test_short_sessions_get_no_marker(receiver):
    """A session that ended before the next export needs no marker: its own span goes out in that export."""
    sdk.init(endpoint=receiver.url, export_interval=0.5, metrics=False)
    for _ in range(5):
        with sdk.session("quick"):
            pass
    assert sdk.flush()
    assert [s.name for s in receiver.accepted_spans] == ["quick"] * 5


def test_live_sessions_off(receiver):
    """live_sessions=False: no marker, the session's span arrives when it ends."""
    sdk.init(endpoint=receiver.url, export_interval=0.05, metrics=False, live_sessions=False)
    session = sdk.start_session("long-job")
    time.sleep(0.3)
    assert sdk.flush()
    assert receiver.accepted_spans == []
    sdk.end_session(session)
    assert sdk.flush()
    assert [s.name for s in receiver.accepted_spans] == ["long-job"]


EXIT_AT_ONCE = textwrap.dedent(
    """
    import os
    import sdk
    from opentelemetry import metrics

    sdk.init(service_name="quick-exit", endpoint=os.environ["ENDPOINT"], export_interval=0.05)
    metrics.get_meter("genai").create_histogram("gen_ai.client.operation.duration").record(0.25)
    with sdk.session("only"):
        pass
    """
)  # no flush: the interpreter exits while the metrics SDK may still be being built


def test_measurements_made_while_the_metrics_sdk_is_built_are_exported_even_at_an_immediate_exit(
    tmp_path, receiver
):
    """A GenAI measurement and a session recorded right after init(), then interpreter exit: both arrive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
    child = subprocess.run(
        [sys.executable, "-c", EXIT_AT_ONCE], env={**env, "ENDPOINT": receiver.url}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr
    got = points_by_name(receiver)
    assert [(p.count, p.value) for p in got["gen_ai.client.operation.duration"]] == [(1, 0.25)]
    assert [p.value for p in got["sessiontrace.sessions.ended"] if p.value] == [1]
    assert [p.count for p in got["sessiontrace.session.duration"]] == [1]


SLOW_BUILD = textwrap.dedent(
    """
    import os, sys, threading
    import sdk
    from opentelemetry import metrics
    from sdk.export import meters

    gate = threading.Event()
    build = meters.MetricsHandle._build
    meters.MetricsHandle._build = lambda self: (gate.wait(10), build(self))[1]  # a very slow build

    sdk.init(service_name="slow-build", endpoint=os.environ["ENDPOINT"], export_interval=0.05)
    assert "opentelemetry.sdk.metrics" not in sys.modules  # init() did not import the metrics SDK
    histogram = metrics.get_meter("genai").create_histogram("gen_ai.client.token.usage")
    for tokens in (10, 20, 30):
        histogram.record(tokens)
    for _ in range(4):
        with sdk.session("early"):
            pass
    assert meters.metrics_handle().wait_built(0) is None  # still being built
    gate.set()
    assert sdk.flush()
    print("FLUSHED", flush=True)
    """
)


def test_init_does_not_build_the_metrics_sdk_and_loses_nothing_meanwhile(tmp_path, receiver):
    """init() returns without importing the metrics SDK; measurements and session ends made before it is built are
    replayed into it and exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
    child = subprocess.run(
        [sys.executable, "-c", SLOW_BUILD], env={**env, "ENDPOINT": receiver.url}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert "FLUSHED" in child.stdout
    got = points_by_name(receiver)
    assert [(p.count, p.value) for p in got["gen_ai.client.token.usage"]] == [(3, 60)]
    assert [p.count for p in got["sessiontrace.session.duration"]] == [4]


def test_a_flush_shorter_than_a_slow_metrics_callback_returns_false_without_an_internal_error(receiver):
    """An application's observable instrument whose callback outlasts `flush(timeout)` makes the flush
    late (False), not broken: no exception reaches the caller and no internal error is counted."""
    sdk.init(endpoint=receiver.url, metrics=True, export_interval=60)
    assert metrics_handle().wait_built(10) is not None

    def slow(options: metrics.CallbackOptions) -> list[metrics.Observation]:
        time.sleep(0.5)
        return [metrics.Observation(1)]

    meter = metrics.get_meter("app")
    meter.create_observable_gauge("app.slow", callbacks=[slow])
    meter.create_observable_gauge("app.after_the_slow_one", callbacks=[slow])  # found past the deadline
    before = sdk.stats().internal_errors
    assert sdk.flush(0.05) is False
    assert sdk.stats().internal_errors == before
