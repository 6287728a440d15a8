"""The one seam for OpenTelemetry's private names (sdk/otel_internals.py) and its public-API fallbacks.

Which path the SDK takes is decided when `sdk.otel_internals` is imported, so the fallbacks run
for real in child interpreters started with ``SESSIONTRACE_HIDE_OTEL_INTERNALS``; the whole suite
runs on them in the compat matrix's ``fallback`` session (noxfile.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import OTLPReceiver

import sdk
from sdk import otel_internals
from sdk.cli import build_report
from sdk.settings import load_config
from sdk.state import STATE
from sdk.version import in_range

HIDDEN = os.environ.get(otel_internals.HIDE_ENV, "")


def expected_missing(version: str) -> set[str]:
    """The internals a release lacks (as probed for 1.30.0-1.45.2), plus those hidden in this run."""
    missing = set()
    if in_range(version, "<1.40"):
        missing |= {"on_ending", "tracer_configurator"}
    if in_range(version, "<1.38"):
        missing.add("log_emit_keywords")
    for key in (k.strip() for k in HIDDEN.split(",") if k.strip()):
        if key == "all":
            missing |= {k for k in otel_internals.BY_KEY if k not in otel_internals.NO_PUBLIC_FALLBACK}
        else:
            missing.add(key)
    return missing


def test_the_seam_finds_what_the_installed_opentelemetry_has():
    """Each internal is found exactly where the version table says it exists (this run's hidden ones aside), and the span path is bound to the matching implementation."""
    version = otel_internals.otel_version()
    missing = {internal.key for internal, there in otel_internals.status() if not there}
    assert missing == expected_missing(version)
    assert ("on_ending" not in missing) == otel_internals.RESTORES_BEFORE_END
    fast_spans = "span_fields" not in missing
    assert (otel_internals.span_trace_id.__class__.__name__ == "attrgetter") == fast_spans


def test_internals_a_supported_release_predates_are_counted_and_listed_but_not_warned(caplog):
    """On a supported release older than an internal (1.30-1.39 have no _on_ending), init() uses the fallback without a warning, counts it in stats() and doctor says which release added it; a hidden one is warned about."""
    version = otel_internals.otel_version()
    predates = {i.key for i in otel_internals.INTERNALS if i.since and in_range(version, f"<{i.since}")}
    hidden = {key for key in otel_internals.BY_KEY if otel_internals._hidden(key)}
    caplog.set_level(logging.WARNING, logger="sessiontrace")
    sdk.init(exporter="none")
    checked = (predates | hidden) & set(otel_internals.TRACE_KEYS)
    assert set(STATE.otel_fallbacks) >= checked
    assert sdk.stats().otel_fallbacks == len(STATE.otel_fallbacks)
    warned = {key for key, i in otel_internals.BY_KEY.items() if f"{i.names} is" in caplog.text}
    assert warned == hidden & set(STATE.otel_fallbacks)
    report = build_report(load_config({"exporter": "none"})).to_json()
    rows = {row["key"]: row for row in report["opentelemetry_internals"]}
    assert {key for key, row in rows.items() if row["added_in"]} == predates
    for key in predates:
        assert rows[key]["added_in"] == otel_internals.BY_KEY[key].since
        assert rows[key]["used"] is False


def test_the_compatibility_doc_lists_every_internal():
    """docs/compatibility.md's table of OpenTelemetry internals has a row for every one the seam uses."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "compatibility.md").read_text()
    assert [i.key for i in otel_internals.INTERNALS if f"| `{i.key}` |" not in doc] == []


def test_an_internal_is_expected_missing_only_before_the_release_that_added_it(monkeypatch):
    """expected_missing compares the installed release with the internal's first one; internals every supported release has are never expected missing."""
    on_ending = otel_internals.BY_KEY["on_ending"]
    monkeypatch.setattr(otel_internals, "otel_version", lambda: "1.39.1")
    assert otel_internals.expected_missing(on_ending)
    assert not otel_internals.expected_missing(otel_internals.BY_KEY["span_fields"])
    monkeypatch.setattr(otel_internals, "otel_version", lambda: "1.40.0")
    assert not otel_internals.expected_missing(on_ending)


def test_a_missing_internal_is_warned_once_counted_and_shown_by_doctor(monkeypatch, caplog):
    """An internal found missing is said once in a warning naming it and the OpenTelemetry version, counted in stats().otel_fallbacks and listed by doctor."""
    monkeypatch.setenv(otel_internals.HIDE_ENV, ",".join(filter(None, [HIDDEN, "encode_attributes"])))
    sdk.init(exporter="none")
    before = sdk.stats().otel_fallbacks
    caplog.set_level(logging.WARNING, logger="sessiontrace")
    for _ in range(3):
        assert otel_internals.available("encode_attributes") is False
    warnings = [r.getMessage() for r in caplog.records if "_encode_attributes" in r.getMessage()]
    assert len(warnings) == 1
    assert f"opentelemetry-sdk {otel_internals.otel_version()}" in warnings[0]
    assert "public trace_encoder.encode_spans" in warnings[0]
    assert sdk.stats().otel_fallbacks == before + 1
    report = build_report(load_config({"exporter": "none"}))
    rows = {row["key"]: row for row in report.to_json()["opentelemetry_internals"]}
    assert rows["encode_attributes"]["used"] is False
    assert "fallback" in report.to_text()


def test_disabled_sdk_makes_raw_spans_non_recording(tracer):
    """init(enabled=False) makes the global provider's tracers start non-recording spans, and enabling again makes them record."""
    sdk.init(exporter="none")
    assert tracer.start_span("on").is_recording()
    sdk.init(exporter="none", enabled=False)
    assert not tracer.start_span("off").is_recording()
    assert not trace.get_tracer("made-while-disabled").start_span("off").is_recording()
    sdk.init(exporter="none")
    assert tracer.start_span("on-again").is_recording()


# ---------------------------------------------------------------------------------------------
# The public fallbacks, each against the private path it replaces


def ended_span(attributes: int = 3, events: int = 2):
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("parent"):
        span = provider.get_tracer("t").start_span("s", links=[trace.Link(trace.INVALID_SPAN_CONTEXT)])
        for i in range(attributes):
            span.set_attribute(f"a{i}", i)
        for i in range(events):
            span.add_event(f"e{i}")
        span.end()
    return exporter.get_finished_spans()[0]


def test_the_public_span_fields_equal_the_private_ones():
    """The fallback's span fields (public properties) are the private fields' values, dropped counts included."""
    span = ended_span(attributes=200)
    fast = otel_internals.span_fields.__class__.__name__ == "attrgetter"
    public = otel_internals._fields_public(span)
    assert public[:6] == (span.context, span.parent, span.name, span.kind, span.start_time, span.end_time)
    assert dict(public[6]) == dict(span.attributes)
    assert public[6].dropped == span.dropped_attributes == 72
    assert list(public[7]) == list(span.events)
    assert getattr(public[7], "dropped", 0) == 0  # counts ride along only when something was dropped
    assert list(public[8]) == list(span.links)
    assert public[9] == span.status
    if fast:
        assert otel_internals.span_fields(span)[:6] == public[:6]
    assert otel_internals._origin_public(span) == (span.resource, span.instrumentation_scope)


def test_the_public_encoding_of_an_attribute_equals_opentelemetrys():
    """The fallback encoder (a one-attribute span through the public encode_spans) gives the bytes OpenTelemetry's private encoder gives, and skips what it skips."""
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan

    for value in ({"nested": {"x": [1, 2]}}, b"\x00\xff", [1, "mixed"], "text"):
        expected = _encode_attributes({"k": value})
        got = encode_spans([ReadableSpan("", trace.SpanContext(1, 1, False), attributes={"k": value})])
        found = got.resource_spans[0].scope_spans[0].spans[0].attributes
        assert [kv.SerializeToString() for kv in found] == [kv.SerializeToString() for kv in expected or []]
    assert otel_internals.encode_attribute("k", {"nested": 1}) == expected_bytes({"nested": 1})


def expected_bytes(value: object) -> bytes:
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes

    encoded = _encode_attributes({"k": value})
    return encoded[0].SerializeToString() if encoded else b""


def test_the_exported_copy_keeps_session_id_and_the_counts():
    """copy_with_attribute (the fallback for the _on_ending hook) gives a span with the key as newest attribute, within the limit, every other field and the dropped counts kept."""
    span = ended_span(attributes=200, events=3)
    assert otel_internals.lost_attribute(span, "session.id")
    copy = otel_internals.copy_with_attribute(span, "session.id", "s-1")
    assert list(copy.attributes)[-1] == "session.id"
    assert copy.attributes["session.id"] == "s-1"
    assert len(copy.attributes) == len(span.attributes) == 128
    assert copy.dropped_attributes == span.dropped_attributes + 1
    assert (copy.context, copy.parent, copy.name, copy.kind, copy.status) == (
        span.context,
        span.parent,
        span.name,
        span.kind,
        span.status,
    )
    assert copy.events == span.events
    assert copy.links == span.links
    assert (copy.start_time, copy.end_time, copy.resource) == (span.start_time, span.end_time, span.resource)
    assert not otel_internals.lost_attribute(copy, "session.id")


def test_the_public_detach_ignores_another_contexts_token_without_a_log(caplog):
    """The fallback detach (ContextVar.reset) raises ValueError for a token of another context, as the private one does, and OpenTelemetry logs nothing."""
    import contextvars

    from opentelemetry import context as otel_context

    token = contextvars.copy_context().run(lambda: otel_context.attach(otel_context.get_current()))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="different Context"):
        otel_internals._detach_public(token)
    own = otel_context.attach(otel_context.set_value("k", 1))
    otel_internals._detach_public(own)
    assert otel_context.get_value("k") is None
    assert caplog.records == []


# ---------------------------------------------------------------------------------------------
# The session contract on the fallbacks, in a child interpreter with every private name hidden

CONTRACT = """
import asyncio, json, sys, threading
from opentelemetry import trace
import sdk
from sdk import otel_internals

URL = sys.argv[1]
sdk.init(endpoint=URL, service_name="before", auto_start_session=True, metrics=False, export_interval=0.05)
tracer = trace.get_tracer("contract")
early = trace.get_tracer("early")

def worker(i):
    for j in range(5):
        with sdk.session(f"t{i}-{j}"):
            with tracer.start_as_current_span(f"t{i}-{j}-span"):
                with tracer.start_as_current_span(f"t{i}-{j}-child"):
                    pass

threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()

async def task(i):
    async with sdk.session(f"a{i}"):
        for _ in range(3):
            with tracer.start_as_current_span(f"a{i}-span"):
                await asyncio.sleep(0)

async def main():
    await asyncio.gather(*(task(i) for i in range(16)))
asyncio.run(main())

with sdk.session("many"):
    with tracer.start_as_current_span("many-attrs") as span:
        for k in range(200):
            span.set_attribute(f"k{k}", k)
try:
    with sdk.session("boom"):
        with tracer.start_as_current_span("in-boom"):
            raise ValueError("boom")
except ValueError:
    pass
with tracer.start_as_current_span("in-auto"):
    pass
sdk.init(endpoint=URL, service_name="after", auto_start_session=True, metrics=False, export_interval=0.05)
with sdk.session("after-reinit"):
    with early.start_as_current_span("early-after"):
        pass
sdk.init(endpoint=URL, service_name="after", enabled=False)
disabled = tracer.start_span("while-disabled").is_recording()
sdk.init(endpoint=URL, service_name="after", auto_start_session=True, metrics=False, export_interval=0.05)
with tracer.start_as_current_span("in-second-auto"):
    pass
print(json.dumps({
    "fallbacks": sdk.stats().otel_fallbacks,
    "restores_before_end": otel_internals.RESTORES_BEFORE_END,
    "recording_while_disabled": disabled,
}), flush=True)
raise RuntimeError("uncaught: the auto session ends as fail")
"""


def ended(span) -> bool:
    """A session's own span as it ended (not its live start marker)."""
    return span.attributes.get("session.state", "running") != "running"


@pytest.mark.subprocess
def test_the_session_contract_holds_with_every_private_name_hidden(tmp_path):
    """With every private OpenTelemetry name hidden, sessions stay isolated across threads and tasks, re-init swaps the resource without doubling spans, exit states are right (fail, success, the auto session fail on an uncaught exception), session.id survives 200 attributes, and everything arrives over OTLP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update({otel_internals.HIDE_ENV: "all", "SESSIONTRACE_RAISE_INTERNAL_ERRORS": "1"})
    with OTLPReceiver() as receiver:
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CONTRACT), receiver.url],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        spans = receiver.accepted_spans
    assert child.returncode == 1, child.stderr
    assert "uncaught: the auto session" in child.stderr
    assert "internal error" not in child.stderr
    assert "Failed to detach" not in child.stderr
    result = json.loads(child.stdout.splitlines()[-1])
    assert result == {"fallbacks": 7, "restores_before_end": False, "recording_while_disabled": False}

    ids = [(s.trace_id, s.span_id) for s in spans]
    assert len(ids) == len(set(ids)), "a span was exported twice"
    sessions = {
        s.attributes["session.name"]: s
        for s in spans
        if s.attributes.get("sessiontrace.span.kind") == "session" and ended(s)
    }

    def owner(span_name: str, session_name: str) -> None:
        session = sessions[session_name]
        found = [s for s in spans if s.name == span_name]
        assert found, span_name
        for s in found:
            assert s.attributes["session.id"] == session.attributes["session.id"], span_name
            assert s.trace_id == session.trace_id, span_name

    for i in range(8):
        for j in range(5):
            owner(f"t{i}-{j}-span", f"t{i}-{j}")
            owner(f"t{i}-{j}-child", f"t{i}-{j}")
            assert sessions[f"t{i}-{j}"].attributes["session.state"] == "success"
    for i in range(16):
        owner(f"a{i}-span", f"a{i}")
    owner("many-attrs", "many")
    owner("in-boom", "boom")
    assert sessions["boom"].attributes["session.state"] == "fail"
    owner("early-after", "after-reinit")
    (early,) = [s for s in spans if s.name == "early-after"]
    assert early.resource["service.name"] == "after"
    autos = sorted(
        (s for s in spans if s.attributes.get("session.auto") and ended(s)),
        key=lambda s: s.resource["service.name"] + s.attributes["session.state"],
    )
    assert [a.attributes["session.state"] for a in autos] == ["fail", "success"]
    (first_auto,) = [a for a in autos if a.attributes["session.state"] == "success"]
    (in_auto,) = [s for s in spans if s.name == "in-auto"]
    assert in_auto.attributes["session.id"] == first_auto.attributes["session.id"]
    assert not [s for s in spans if s.name == "while-disabled"]
