"""The embedded default destination: OTLP-JSON lines under ./.sessiontrace/traces/, plus console summaries."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict, Parse
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import sdk
from sdk.export.jsonl import read_otlp_json_spans

TRACES = Path(".sessiontrace/traces")
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


@sdk.tool
def lookup(order: str) -> str:
    sdk.event("order.lookup", order=order)
    return order.upper()


def traced_work(name: str = "chat") -> sdk.Session:
    """One session with a tool span and a raw OpenTelemetry span inside."""
    with sdk.session(name, user_id="u-1", tags=["file"]) as s:
        lookup("a-1")
        with trace.get_tracer("tests.raw").start_as_current_span("raw-step"):
            pass
    return s


def lines(folder: Path = TRACES) -> list[dict[str, Any]]:
    """Every line of every trace file, parsed with plain json."""
    return [
        json.loads(line)
        for path in sorted(folder.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON attributes as {key: the single value field}."""
    return {kv["key"]: next(iter(kv["value"].values())) for kv in span.get("attributes", ())}


def all_keys(obj: Any) -> set[str]:
    """Every object key anywhere in a JSON document."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in all_keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in all_keys(v)}
    return set()


def test_default_destination_writes_otlp_json_lines():
    """With no endpoint, spans land as OTLP-JSON under ./.sessiontrace/traces/, each stamped and parented."""
    config = sdk.init(service_name="file-tests", export_interval=0.05)
    assert config.exporter_kind == "file"
    sessions = [traced_work(), traced_work()]
    assert sdk.flush()

    spans = read_otlp_json_spans(TRACES)
    assert len(spans) == 6
    for session in sessions:
        group = [s for s in spans if attrs(s)["session.id"] == session.id]
        assert len(group) == 3
        (root,) = [s for s in group if "parentSpanId" not in s]
        assert root["name"] == "chat"
        assert attrs(root)["session.state"] == "success"
        assert {s["traceId"] for s in group} == {session.trace_id}
        assert all(s["parentSpanId"] == root["spanId"] for s in group if s is not root)
    resource = attrs(spans[0]["resource"])
    assert resource["service.name"] == "file-tests"
    assert resource["telemetry.distro.name"] == "sessiontrace"


@sdk.session("failing")
def failing_session() -> None:
    lookup("x")
    raise ValueError("boom")


def test_lines_use_the_otlp_json_encoding():
    """Plain json sees lowerCamelCase keys, hex ids of 32/16 digits, integer enums and session.id on every span."""
    sdk.init(export_interval=0.05)
    with pytest.raises(ValueError, match="boom"):
        failing_session()
    traced_work()
    assert sdk.flush()

    docs = lines()
    assert docs
    keys = all_keys(docs)
    assert {"resourceSpans", "scopeSpans", "traceId", "spanId", "startTimeUnixNano"} <= keys
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", key) for key in keys), sorted(keys)
    spans = [s for doc in docs for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 5
    for span in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"])
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
        assert re.fullmatch(r"[0-9a-f]{16}", span.get("parentSpanId", "0" * 16))
        assert span["kind"] == 1  # SPAN_KIND_INTERNAL, as an integer
        assert re.fullmatch(r"[0-9]+", span["startTimeUnixNano"])  # int64 as a JSON string
        assert "session.id" in attrs(span)
    failed = next(s for s in spans if s["name"] == "failing")
    assert failed["status"]["code"] == 2  # STATUS_CODE_ERROR
    assert attrs(failed)["session.state"] == "fail"
    assert [e["name"] for e in failed["events"]] == ["exception"]


def to_proto_json(doc: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON (hex ids) to protobuf's canonical JSON mapping (base64 bytes), for json_format.Parse."""
    doc = json.loads(json.dumps(doc))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for obj in (span, *span.get("links", ())):
                    for name in ID_FIELDS:
                        if name in obj:
                            obj[name] = base64.b64encode(bytes.fromhex(obj[name])).decode()
    return doc


def test_each_line_is_one_export_trace_service_request():
    """Each line parses strictly into an ExportTraceServiceRequest (hex ids as OTLP/JSON wants) and round-trips exactly."""
    sdk.init(export_interval=0.05)
    with sdk.session("outer") as outer:
        with sdk.session("inner") as inner:  # a nested session links to the outer one
            lookup("a-1")
    assert sdk.flush()

    docs = lines()
    assert docs
    seen: list[tuple[str, str, bytes]] = []
    for doc in docs:
        # Strict parse: an unknown or misspelt field name would raise ParseError.
        message = Parse(json.dumps(to_proto_json(doc)), ExportTraceServiceRequest())
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                seen.extend((span.name, span.span_id.hex(), span.trace_id) for span in ss.spans)
        back = MessageToDict(message, use_integers_for_enums=True)
        for rs in back["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    for obj in (span, *span.get("links", ())):
                        for name in ID_FIELDS:
                            if name in obj:
                                obj[name] = base64.b64decode(obj[name]).hex()
        assert back == doc
    assert sorted(name for name, _, _ in seen) == ["execute_tool lookup", "inner", "outer"]
    inner_span = next(s for s in read_otlp_json_spans(TRACES) if s["name"] == "inner")
    assert inner_span["traceId"] == inner.trace_id
    assert [link["traceId"] for link in inner_span["links"]] == [outer.trace_id]


def test_console_summary_line_per_ended_session(capsys):
    """Each ended session prints one line on stderr: name, id, state, duration and span count."""
    sdk.init(export_interval=0.05)
    ok = traced_work("refund-flow")
    with pytest.raises(KeyError), sdk.session("broken") as bad:
        raise KeyError("x")
    assert sdk.flush()

    captured = capsys.readouterr()
    assert captured.out == ""
    summary = [line for line in captured.err.splitlines() if line.startswith("sessiontrace: session")]
    assert len(summary) == 2
    assert re.fullmatch(
        rf"sessiontrace: session 'refund-flow' {ok.id} success in \d+\.\d\ds, 3 spans", summary[0]
    )
    assert re.fullmatch(
        rf"sessiontrace: session 'broken' {bad.id} fail \(KeyError\) in \d+\.\d\ds, 1 span, 1 error",
        summary[1],
    )


def test_data_folder_gets_a_gitignore():
    """The data folder the SDK creates holds a .gitignore with `*`, so traces never get committed."""
    sdk.init(export_interval=0.05)
    traced_work()
    assert sdk.flush()

    ignore = Path(".sessiontrace/.gitignore").read_text(encoding="utf-8")
    assert "*" in ignore.splitlines()


@pytest.mark.parametrize("how", ["init", "env"])
def test_data_dir_and_sessiontrace_dir_are_respected(tmp_path, monkeypatch, how):
    """data_dir= and SESSIONTRACE_DIR move the traces folder; nothing is written to ./.sessiontrace then."""
    folder = tmp_path / "elsewhere" / "st-data"
    if how == "env":
        monkeypatch.setenv("SESSIONTRACE_DIR", str(folder))
        sdk.init(export_interval=0.05)
    else:
        sdk.init(data_dir=folder, export_interval=0.05)
    session = traced_work()
    assert sdk.flush()

    spans = read_otlp_json_spans(folder / "traces")
    assert {attrs(s)["session.id"] for s in spans} == {session.id}
    assert "*" in (folder / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert not Path(".sessiontrace").exists()


def test_size_cap_prunes_the_oldest_files():
    """With file_max_bytes set, the folder stays under the cap and what is kept is the newest spans."""
    cap = 16 * 1024
    sdk.init(file_max_bytes=cap, max_export_batch_size=1, export_interval=0.05, console_summary=False)
    tracer = trace.get_tracer("tests.raw")
    with sdk.session("long"):
        for i in range(60):
            with tracer.start_as_current_span(f"step-{i:02d}"):
                pass
            assert sdk.flush()  # one span per line, written in order
    assert sdk.flush()

    files = list(TRACES.glob("*.jsonl"))
    sizes = [p.stat().st_size for p in files]
    assert len(files) >= 2
    assert sum(sizes) <= cap
    assert all(size <= cap // 2 for size in sizes)
    names = [s["name"] for s in read_otlp_json_spans(TRACES)]
    steps = sorted(int(n.split("-")[1]) for n in names if n.startswith("step-"))
    assert "long" in names  # the newest span (the session ended last) is kept
    assert steps == list(range(steps[0], 60))  # a contiguous run of the newest steps
    assert steps[0] > 0  # the oldest ones were pruned


def test_unwritable_folder_counts_drops_and_leaves_the_program_alone():
    """When the traces folder cannot be created, batches count as failed exports and traced code runs on."""
    Path("not-a-folder").write_text("a file where the data folder should go", encoding="utf-8")
    before = sdk.stats()
    sdk.init(data_dir="not-a-folder/data", export_interval=0.05)
    session = traced_work()
    assert session.state == "success"
    assert sdk.flush()

    after = sdk.stats()
    assert after.spans_dropped - before.spans_dropped == 3
    assert after.export_errors - before.export_errors == 1
    assert after.internal_errors == before.internal_errors


def test_reader_skips_a_torn_last_line():
    """read_otlp_json_spans skips a last line cut short by a killed process, and keeps every complete line."""
    sdk.init(export_interval=0.05)
    session = traced_work()
    assert sdk.flush()
    sdk.shutdown()
    (path,) = TRACES.glob("*.jsonl")
    with path.open("a", encoding="utf-8") as f:
        f.write('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"ab')

    spans = read_otlp_json_spans(TRACES)
    assert len(spans) == 3
    assert {attrs(s)["session.id"] for s in spans} == {session.id}
