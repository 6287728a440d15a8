"""The SDK's OTLP encoder writes the very bytes OpenTelemetry's encoder writes, for any span, and its
OTLP-JSON converter writes the very document protobuf's MessageToDict makes."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as otel_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from sdk.export.encode import encode_spans
from sdk.export.jsonl import encoded_to_otlp_json, encoded_to_otlp_json_reference

scalars = st.one_of(
    st.text(max_size=40),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=8), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
)
attributes = st.dictionaries(st.text(max_size=12), values, max_size=6)


def record(
    build: Any, limits: SpanLimits | None = None, resource: Resource | None = None
) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource({"service.name": "enc"}), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider)
    return list(memory.get_finished_spans())


def opentelemetrys_bytes(spans: list[ReadableSpan]) -> bytes:
    """OpenTelemetry's encoding of `spans`, with each scope's schema_url: older encoders (1.30's) leave
    ScopeSpans.schema_url out, which the SDK's writes (the OTLP field exists in every release)."""
    request = otel_encode_spans(spans)
    schemas = {
        (s.instrumentation_scope.name, s.instrumentation_scope.version): s.instrumentation_scope.schema_url
        for s in spans
        if s.instrumentation_scope is not None
    }
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            if not scope_spans.schema_url:
                key = (scope_spans.scope.name, scope_spans.scope.version or None)
                scope_spans.schema_url = schemas.get(key) or ""
    return request.SerializeToString()


def assert_same_bytes(spans: list[ReadableSpan]) -> None:
    data = encode_spans(spans)
    assert data == opentelemetrys_bytes(spans)
    document = encoded_to_otlp_json(data)
    assert json.dumps(document) == json.dumps(encoded_to_otlp_json_reference(data))  # key order too


@settings(max_examples=100, deadline=None)
@given(
    span_attributes=attributes,
    event_attributes=attributes,
    link_attributes=attributes,
    name=st.text(max_size=20),
    kind=st.sampled_from(list(SpanKind)),
    status=st.sampled_from([None, (StatusCode.OK, None), (StatusCode.ERROR, "boom"), (StatusCode.ERROR, "")]),
    remote_parent=st.booleans(),
)
def test_any_span_encodes_to_the_bytes_opentelemetry_writes_and_the_json_messagetodict_makes(
    span_attributes, event_attributes, link_attributes, name, kind, status, remote_parent
):
    """Spans with any attribute values, events, links, kinds, statuses and parents encode byte for byte alike (JSON too)."""
    parent = SpanContext(
        0xABC, 0xDEF, is_remote=remote_parent, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
    )

    def build(provider: TracerProvider) -> None:
        tracer = provider.get_tracer("scope", "1.2", schema_url="https://example.com/schema")
        context = trace_api.set_span_in_context(trace_api.NonRecordingSpan(parent))
        link = Link(SpanContext(0x1, 0x2, is_remote=True), link_attributes)
        with tracer.start_as_current_span(name, context=context, kind=kind, links=[link]) as span:
            span.set_attributes(span_attributes)
            span.add_event("event", event_attributes)
            if status is not None:
                span.set_status(Status(*status))
        provider.get_tracer("other").start_span("root").end()

    assert_same_bytes(record(build))


def test_unusual_values_go_through_opentelemetrys_own_encoder():
    """Mappings, bytes, None, NaN, huge integers and unencodable strings come out as OpenTelemetry writes them (or skips them)."""

    def build(provider: TracerProvider) -> None:
        span = provider.get_tracer("t").start_span("s")
        span._attributes._dict.update(  # type: ignore[union-attr]  # values the API would refuse
            {
                "map": {"a": 1, "b": [1, 2]},
                "bytes": b"\x00\xff",
                "none": None,
                "nan": math.nan,
                "big": 2**70,
                "surrogate": "\ud800",
                "mixed": (1, "a"),
                "": "empty key",
            }
        )
        span.end()

    assert_same_bytes(record(build))


def test_dropped_counts_and_many_groups_match():
    """Dropped attribute, event and link counts, several resources and scopes, and a cached pair reused, all match."""
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1)

    def build(provider: TracerProvider) -> None:
        for scope in ("a", "b"):
            tracer = provider.get_tracer(scope)
            for i in range(3):
                links = [Link(SpanContext(i + 1, i + 2, False)), Link(SpanContext(i + 3, i + 4, False))]
                span = tracer.start_span(f"s{i}", attributes={"x": 1, "y": True, "z": 1.0}, links=links)
                span.add_event("e1", {"p": "q", "r": "s"})
                span.add_event("e2")
                span.end()

    spans = record(build, limits) + record(build, limits, Resource({"service.name": "second"}))
    assert_same_bytes(spans)
