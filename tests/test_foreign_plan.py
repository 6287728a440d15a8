"""Where sessiontrace exports beside an application's own pipeline (sdk/foreign.py), and a provider set by hand in a second process.

The real setups (opentelemetry-instrument, Logfire, Traceloop, OpenInference) run in
tests/test_foreign.py, marker `foreign`; these are the plan's rules and the one setup the test
venv has everything for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from types import SimpleNamespace

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sdk import foreign
from sdk.settings import load_config


class Wrapper(SpanProcessor):
    """A processor wrapping another, as Logfire's are."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.processor = inner


class Vendor(SpanExporter):
    """An exporter sessiontrace cannot see into."""


def provider_with(*exporters: SpanExporter) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def plan_for(provider: TracerProvider | None, **settings: object) -> foreign.ExportPlan:
    config = load_config(settings)
    application = None if provider is None else foreign.application_destinations((provider,))
    return foreign.plan(config, application, "test")


def test_no_application_pipeline_exports_every_destination():
    """Without an application pipeline every destination is exported to, whatever export_mode says."""
    for mode in ("auto", "stamp", "own"):
        assert plan_for(None, exporter="otlp,file", export_mode=mode).exported == ("otlp", "file")


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("http://127.0.0.1:4318/v1/traces", "http://localhost:4318"),
        ("http://localhost:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
        ("http://[::1]:4318/v1/traces", "http://localhost:4318/"),
    ],
)
def test_the_same_otlp_endpoint_resolved_is_left_to_the_application(theirs, ours):
    """An OTLP/HTTP exporter of the app to the same place (loopback names made one, a base URL resolved) covers sessiontrace's."""
    plan = plan_for(provider_with(HttpExporter(endpoint=theirs)), endpoint=ours)
    assert plan.exported == ()
    assert plan.skipped[0][0] == "otlp"
    assert "already" in plan.skipped[0][1]
    assert not plan.doubt


def test_grpc_endpoint_compared_by_host_and_port():
    """A gRPC exporter keeps host:port only; the same host and port over gRPC is covered."""
    plan = plan_for(
        provider_with(GrpcExporter(endpoint="http://localhost:4317")), exporter="otlp", protocol="grpc"
    )
    assert plan.exported == ()
    assert plan.application[0].describe() == "otlp grpc localhost:4317 (OTLPSpanExporter)"


def test_same_host_another_protocol_or_port_is_in_doubt_and_left_to_the_application():
    """The app sends gRPC to a collector's 4317, sessiontrace would send HTTP to its 4318: in doubt, stamp only."""
    plan = plan_for(
        provider_with(GrpcExporter(endpoint="http://collector:4317")), endpoint="http://collector:4318"
    )
    assert plan.exported == ()
    assert plan.doubt
    assert plan.skipped[0][1].startswith("in doubt")


def test_same_host_same_protocol_another_port_is_another_destination():
    """Two OTLP/HTTP receivers on one host's different ports are two destinations: sessiontrace exports to its own."""
    plan = plan_for(
        provider_with(HttpExporter(endpoint="http://127.0.0.1:4318/v1/traces")),
        endpoint="http://localhost:14318",
    )
    assert plan.exported == ("otlp",)
    assert not plan.doubt


def test_another_host_is_exported_to_and_the_local_file_always():
    """Another host is not covered: sessiontrace exports there, and writes its local file."""
    plan = plan_for(
        provider_with(HttpExporter(endpoint="http://a:4318/v1/traces")),
        exporter="otlp,file",
        endpoint="http://b:4318",
    )
    assert plan.exported == ("otlp", "file")
    assert plan.summary().endswith("exports to otlp, file (export_mode=auto)")


def test_an_exporter_it_cannot_see_into_puts_otlp_in_doubt():
    """An unknown exporter could send where sessiontrace would: OTLP is left to the app, said as doubt; the file is still written."""
    plan = plan_for(provider_with(Vendor()), exporter="otlp,file", endpoint="http://b:4318")
    assert plan.exported == ("file",)
    assert plan.doubt


def test_console_covered_by_a_console_exporter_memory_is_no_destination():
    """The app's ConsoleSpanExporter covers sessiontrace's console; an in-memory exporter sends nowhere."""
    assert plan_for(provider_with(ConsoleSpanExporter()), exporter="console").exported == ()
    plan = plan_for(provider_with(InMemorySpanExporter()), exporter="console")
    assert plan.exported == ("console",)
    assert plan.application == ()


def test_export_modes_stamp_and_own():
    """stamp exports nothing beside an app pipeline; own exports everything, covered or not."""
    provider = provider_with(HttpExporter(endpoint="http://localhost:4318/v1/traces"))
    assert plan_for(provider, exporter="otlp,file", export_mode="stamp").exported == ()
    assert plan_for(provider, exporter="otlp,file", export_mode="own").exported == ("otlp", "file")


def test_exporters_found_through_wrappers_batches_and_multi_processors():
    """Exporters nested in wrappers, multi-processors and batch processors are found; sessiontrace's own processor is skipped."""
    multi = SynchronousMultiSpanProcessor()
    multi.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint="http://h:1/v1/traces")))
    ours = SimpleSpanProcessor(ConsoleSpanExporter())
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(Wrapper(Wrapper(multi)))
    provider.add_span_processor(ours)
    found = foreign.application_destinations((provider,), skip=ours)
    assert [(d.kind, d.url) for d in found] == [("otlp", "http://h:1/v1/traces")]
    for processor in (multi, ours):
        processor.shutdown()


def test_export_mode_setting_is_validated():
    """A bad export_mode names the key and the choices."""
    with pytest.raises(ValueError, match=r"export_mode 'both' .*auto, stamp, own"):
        load_config({"export_mode": "both"})
    assert load_config({}).export_mode == "auto"


def test_keep_session_attributes_undoes_only_the_word_session_in_session_keys():
    """The Logfire scrubbing callback keeps session.* values matched for their name, nothing else."""
    named = re.search("session", "session.id")
    assert (
        foreign.keep_session_attributes(
            SimpleNamespace(path=("attributes", "session.id"), value="s1", pattern_match=named)
        )
        == "s1"
    )
    secret = re.search("password", "password=1")
    assert (
        foreign.keep_session_attributes(
            SimpleNamespace(path=("attributes", "session.name"), value="x", pattern_match=secret)
        )
        is None
    )
    assert (
        foreign.keep_session_attributes(
            SimpleNamespace(path=("attributes", "http.session"), value="x", pattern_match=named)
        )
        is None
    )


APP = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    url, order = sys.argv[1], sys.argv[2]
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces"))
    if order == "before":
        provider = TracerProvider()
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
    import sdk
    for _ in range(3):
        sdk.init(console_summary=False)
    if order == "after":
        trace.get_tracer_provider().add_span_processor(processor)
    provider = trace.get_tracer_provider()
    tracer = trace.get_tracer("app")
    with sdk.session("s") as s:
        with tracer.start_as_current_span("in-session"):
            pass
    sdk.init(console_summary=False, service_name="again")
    processors = len(provider._active_span_processor._span_processors)
    sdk.shutdown()
    with tracer.start_as_current_span("after-shutdown"):
        pass
    print(json.dumps({"sid": s.id, "processors": processors, "dropped": sdk.stats().spans_dropped}))
    """
)


@pytest.mark.subprocess
@pytest.mark.parametrize("order", ["before", "after"])
def test_provider_by_hand_four_inits_processors_not_stacked_each_span_once(receiver, tmp_path, order):
    """An app's provider (before init()) or processor (after it) exporting to the endpoint sessiontrace reads: four inits add one processor once, every span arrives once, with its session, and after shutdown() the app's spans still arrive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, SESSIONTRACE_RAISE_INTERNAL_ERRORS="1")
    proc = subprocess.run(
        [sys.executable, "-c", APP, receiver.url, order],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["processors"] == (
        2 if order == "before" else 1
    )  # the app's and sessiontrace's; (after: the app's, on sessiontrace's)
    assert out["dropped"] == 0
    assert proc.stderr.count("exports to nothing of its own (stamp only)") == 1
    assert receiver.wait_for_spans(3)
    spans = [s for s in receiver.spans if s.attributes.get("session.state") != "running"]
    assert all(n == 1 for n in Counter(s.span_id for s in spans).values())
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"s", "in-session", "after-shutdown"}
    assert by_name["in-session"].attributes["session.id"] == out["sid"]
    assert by_name["s"].attributes["session.state"] == "success"
    assert "session.id" not in by_name["after-shutdown"].attributes
