"""init() is idempotent and re-entrant: one provider, a swapped pipeline, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import sdk
from sdk import runtime, tracing


class CountingExporter(SpanExporter):
    """Records every span it is given, and whether it was shut down."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.lock = threading.Lock()
        self.shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True

    def names(self) -> list[str]:
        return [s.name for s in self.spans]


def _init(exporter: SpanExporter, **kw) -> sdk.Config:
    return sdk.init(exporter=exporter, export_interval=0.05, **kw)


def test_three_inits_with_different_exporters_each_span_exported_once(tracer):
    """Three init() calls with three exporters: each span goes to the exporter current at its end, once."""
    first, second, third = CountingExporter(), CountingExporter(), CountingExporter()
    _init(first)
    with tracer.start_as_current_span("one"):
        pass
    _init(second)
    with tracer.start_as_current_span("two"):
        pass
    _init(third)
    with tracer.start_as_current_span("three"):
        pass
    sdk.flush()
    assert first.names() == ["one"]
    assert second.names() == ["two"]
    assert third.names() == ["three"]
    assert len(tracing.installed_provider()._active_span_processor._span_processors) == 0
    assert len(runtime.current().processors) == 1


def test_span_open_across_reinit_is_exported_once_by_new_pipeline(tracer):
    """A span started before a re-init and ended after it is exported exactly once, by the new pipeline."""
    old, new = CountingExporter(), CountingExporter()
    _init(old)
    with sdk.session("long") as s:
        span = tracer.start_span("straddles")
        _init(new)
        span.end()
    sdk.flush()
    everything = old.names() + new.names()
    assert everything.count("straddles") == 1
    assert everything.count("long") == 1
    assert new.names() == ["straddles", "long"]
    straddler = new.spans[0]
    assert straddler.attributes["session.id"] == s.id


def test_old_pipeline_is_flushed_and_closed_on_reinit(tracer):
    """Spans queued in the old pipeline are delivered, and its exporter is shut down, after a re-init."""
    old, new = CountingExporter(), CountingExporter()
    sdk.init(exporter=old, export_interval=60)
    for i in range(5):
        with tracer.start_as_current_span(f"queued-{i}"):
            pass
    _init(new)
    closer = [t for t in threading.enumerate() if t.name == "sessiontrace-close"]
    for t in closer:
        t.join(5)
    assert old.names() == [f"queued-{i}" for i in range(5)]
    assert old.shut_down
    assert not new.shut_down


def test_same_settings_twice_changes_nothing(tracer):
    """A second init() with the same settings keeps the same pipeline and exports nothing twice."""
    exporter = CountingExporter()
    _init(exporter, service_name="same")
    pipeline = runtime.current()
    _init(exporter, service_name="same")
    assert runtime.current() is pipeline
    with tracer.start_as_current_span("once"):
        pass
    _init(exporter, service_name="same")
    sdk.flush()
    assert exporter.names() == ["once"]
    assert not exporter.shut_down


def test_same_exporter_instance_with_new_settings_not_closed(tracer):
    """Re-init with the same exporter instance but other settings keeps that exporter open."""
    exporter = CountingExporter()
    _init(exporter, service_name="a")
    _init(exporter, service_name="b")
    for t in [t for t in threading.enumerate() if t.name == "sessiontrace-close"]:
        t.join(5)
    with tracer.start_as_current_span("still-open"):
        pass
    sdk.flush()
    assert not exporter.shut_down
    assert exporter.names() == ["still-open"]


def test_reinit_replaces_resource_for_existing_tracers():
    """A new service_name applies to tracers obtained before the re-init."""
    exporter = CountingExporter()
    _init(exporter, service_name="before")
    early = trace.get_tracer("early.tracer")
    _init(exporter, service_name="after")
    with early.start_as_current_span("late"):
        pass
    sdk.flush()
    assert exporter.spans[0].resource.attributes["service.name"] == "after"


def test_auto_session_survives_reinit_with_changed_settings(tracer):
    """The auto session keeps its id and trace through re-inits with new settings and exporters."""
    first, second = CountingExporter(), CountingExporter()
    _init(first, auto_start_session=True, service_name="one")
    auto = sdk.current_session()
    assert auto is not None
    with tracer.start_as_current_span("before"):
        pass
    _init(second, auto_start_session=True, service_name="two", max_queue_size=999)
    assert sdk.current_session() is auto
    assert auto.state is sdk.SessionState.RUNNING
    with tracer.start_as_current_span("after"):
        pass
    sdk.flush()
    assert first.spans[0].attributes["session.id"] == auto.id
    assert second.spans[0].attributes["session.id"] == auto.id
    assert first.spans[0].context.trace_id == second.spans[0].context.trace_id


def test_reinit_without_auto_session_ends_it(tracer):
    """init(auto_start_session=False) after True ends the auto session as success."""
    exporter = CountingExporter()
    _init(exporter, auto_start_session=True)
    auto = sdk.current_session()
    _init(exporter, auto_start_session=False)
    assert auto.state is sdk.SessionState.SUCCESS
    assert sdk.current_session() is None
    sdk.flush()
    roots = [s for s in exporter.spans if s.attributes.get("session.auto")]
    assert len(roots) == 1
    assert roots[0].attributes["session.state"] == "success"


def test_new_auto_session_after_user_ended_it():
    """After the user ends the auto session, the next init(auto_start_session=True) starts a new one."""
    exporter = CountingExporter()
    _init(exporter, auto_start_session=True)
    first = sdk.current_session()
    sdk.end_session()
    sdk.end_session()  # ending twice is silent: the auto session already ended
    _init(exporter, auto_start_session=True)
    second = sdk.current_session()
    assert second is not None
    assert second is not first
    assert second.id != first.id


def test_disabled_is_same_api_nothing_recorded(tracer):
    """init(enabled=False): sessions, decorators and events work and nothing is exported."""
    exporter = CountingExporter()
    _init(exporter)
    _init(CountingExporter(), enabled=False)

    @sdk.tool
    def t() -> int:
        sdk.event("e")
        return 1

    with sdk.session("off") as s:
        assert t() == 1
        with tracer.start_as_current_span("raw"):
            pass
    assert s.state is sdk.SessionState.SUCCESS
    assert not trace.get_current_span().is_recording()
    sdk.flush()
    assert exporter.spans == []


def test_reenable_after_disabled(tracer):
    """Turning the SDK off and on again restores recording through the same provider."""
    exporter = CountingExporter()
    _init(CountingExporter(), enabled=False)
    _init(exporter)
    with tracer.start_as_current_span("back"):
        pass
    sdk.flush()
    assert exporter.names() == ["back"]


def test_reinit_under_concurrent_spans_loses_and_doubles_nothing(tracer):
    """Re-init while threads create spans: every span is exported exactly once across all exporters."""
    exporters = [CountingExporter() for _ in range(4)]
    dropped_before = sdk.stats().spans_dropped
    _init(exporters[0], max_queue_size=1_000_000)  # the queue cap is not what this tests
    stop = threading.Event()
    made: list[int] = []

    def spin(n: int) -> None:
        count = 0
        with sdk.session(f"worker-{n}"):
            while not stop.is_set() or count < 200:
                with tracer.start_as_current_span(f"w{n}-{count}"):
                    pass
                count += 1
        made.append(count)

    threads = [threading.Thread(target=spin, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for exporter in exporters[1:]:
        _init(exporter, max_queue_size=1_000_000)
    stop.set()
    for t in threads:
        t.join()
    sdk.flush()
    for t in [t for t in threading.enumerate() if t.name == "sessiontrace-close"]:
        t.join(5)
    names = [n for e in exporters for n in e.names()]
    worker_spans = [n for n in names if n.startswith("w") and not n.startswith("worker-")]
    assert len(worker_spans) == len(set(worker_spans)) == sum(made)
    assert sdk.stats().spans_dropped == dropped_before


@pytest.mark.subprocess
def test_application_provider_installed_first_gets_sdk_processing(tmp_path):
    """An app's own TracerProvider installed before init() keeps its exporter and also feeds the SDK's."""
    script = textwrap.dedent(
        """
        import json, sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        app_exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(app_exporter))
        trace.set_tracer_provider(provider)
        import sdk
        sdk.init(exporter="file", console_summary=False)
        sdk.init(exporter="file", console_summary=False, service_name="again")
        tracer = trace.get_tracer("app")
        with sdk.session("s") as s:
            with tracer.start_as_current_span("app-span"):
                pass
        sdk.shutdown()
        app = [(sp.name, sp.attributes.get("session.id")) for sp in app_exporter.get_finished_spans()]
        print(json.dumps({"sid": s.id, "app": app}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert ["app-span", out["sid"]] in out["app"]
    assert "already installed" in proc.stderr
    from sdk.export.jsonl import read_otlp_json_spans

    exported = read_otlp_json_spans(tmp_path / ".sessiontrace" / "traces")
    names = sorted(s["name"] for s in exported)
    assert names == ["app-span", "s"]


@pytest.mark.subprocess
def test_import_sdk_loads_no_optional_or_heavy_modules(tmp_path):
    """`import sdk` imports no IPython, grpc, redis, openai, anthropic, requests or exporter modules, nor wrapt, beyond what OpenTelemetry's API and SDK import themselves (1.30's API imports wrapt)."""
    script = (
        "import sys, json; import opentelemetry.trace, opentelemetry.sdk.trace; before = set(sys.modules); "
        "import sdk; print(json.dumps(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "{'IPython', 'grpc', 'redis', 'openai', 'anthropic', 'requests', 'google', 'wrapt'} "
        "or m.startswith('opentelemetry.exporter'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_tracers_check_for_orphans_only_while_an_auto_session_runs():
    """Tracers are switched to the adopting class when the auto session starts and back when it ends."""
    exporter = CountingExporter()
    _init(exporter)
    plain = trace.get_tracer("switching")
    assert type(plain) is tracing.Tracer
    _init(exporter, auto_start_session=True)
    assert type(plain) is tracing.SessionTracer
    assert type(trace.get_tracer("new.one")) is tracing.SessionTracer
    sdk.end_session()
    assert type(plain) is tracing.Tracer
