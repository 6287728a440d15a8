"""Sessions and spans as data: `sdk.read_sessions` / `sdk.read_spans` over real local traces, store and process."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer

import sdk
from sdk.records import AmbiguousSessionId, SessionNotFound, SpanRecorder, parse_time, resolve_session_id

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"


@sdk.tool
def lookup(order: str) -> str:
    return f"order {order}"


def fail_in_a_session(started: list[sdk.Session]) -> None:
    with sdk.session("broken", user_id="u-2") as broken:
        started.append(broken)
        lookup("B-2")
        1 / 0  # noqa: B018


def record_day(llm_server: LLMServer, **settings: object) -> dict[str, sdk.Session]:
    """Three sessions through the real SDK: an LLM call and a tool (u-1), a failure (u-2), the auto one still running."""
    sdk.init(service_name="records", auto_start_session=True, console_summary=False, **settings)
    with openai.OpenAI(base_url=llm_server.openai_url, api_key="test-key", max_retries=0) as client:
        with sdk.session("refund", user_id="u-1", tags=["prod"]) as refund:
            lookup("A-1")
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    started: list[sdk.Session] = []
    with pytest.raises(ZeroDivisionError):
        fail_in_a_session(started)
    (broken,) = started
    sdk.flush()
    auto = sdk.current_session()
    assert auto is not None
    return {"refund": refund, "broken": broken, "auto": auto}


def test_read_sessions_merges_the_store_the_local_traces_and_this_process(llm_server):
    """Each session is one row with its identity, state, counters and LLM usage, from every place it is found, newest first."""
    made = record_day(llm_server)
    rows = sdk.read_sessions()
    assert [r.name for r in rows] == ["broken", "refund", "auto"]
    refund, broken, auto = (next(r for r in rows if r.id == s.id) for s in made.values())
    assert refund.user_id == "u-1"
    assert refund.tags == ("prod",)
    assert refund.state == "success"
    assert refund.trace_id == made["refund"].trace_id
    assert refund.spans == 3  # the session, the tool and the LLM call
    assert (refund.llm_calls, refund.input_tokens, refund.output_tokens) == (1, INPUT_TOKENS, OUTPUT_TOKENS)
    assert refund.tokens == INPUT_TOKENS + OUTPUT_TOKENS
    assert refund.cost_usd > 0
    assert refund.service == "records"
    assert refund.sources == ("store", "traces")
    assert refund.ended is not None
    assert refund.duration == pytest.approx(refund.ended - refund.started)
    assert (broken.state, broken.reason, broken.errors) == ("fail", "ZeroDivisionError", 1)
    assert auto.state == "running"
    assert auto.ended is None
    assert "process" in auto.sources


def test_read_sessions_sees_a_session_this_process_just_ended(tmp_path):
    """No flush, no wait: a session ended a moment ago is read from the store (its queued write goes first)."""
    sdk.init(service_name="records", console_summary=False, exporter="none")
    with sdk.session("just-now", user_id="u-9") as ended:
        pass
    rows = sdk.read_sessions(user="u-9")
    assert [(r.id, r.state, r.sources) for r in rows] == [(ended.id, "success", ("store",))]


def test_read_sessions_filters_by_session_prefix_user_state_tag_and_time(llm_server):
    """Filters combine; a session id may be a unique prefix; times may be epoch seconds, datetimes, '1h' or ISO text."""
    made = record_day(llm_server)
    refund_id = made["refund"].id
    assert [r.id for r in sdk.read_sessions(refund_id[:10])] == [refund_id]
    assert [r.name for r in sdk.read_sessions(user="u-2")] == ["broken"]
    assert [r.name for r in sdk.read_sessions(state="fail")] == ["broken"]
    assert [r.name for r in sdk.read_sessions(tag="prod")] == ["refund"]
    assert [r.name for r in sdk.read_sessions(state="running")] == ["auto"]
    assert len(sdk.read_sessions(since="1h")) == 3
    assert sdk.read_sessions(until=time.time() - 3600) == []
    future = datetime.datetime.now() + datetime.timedelta(hours=1)
    assert sdk.read_sessions(since=future) == []
    assert [r.name for r in sdk.read_sessions(limit=1)] == ["broken"]
    with pytest.raises(SessionNotFound, match="no session with id 'nope'"):
        sdk.read_sessions("nope")
    with pytest.raises(ValueError, match="state must be one of"):
        sdk.read_sessions(state="done")
    with pytest.raises(ValueError, match="expected a duration like 30m"):
        sdk.read_sessions(since="yesterday")


def test_read_spans_rows_carry_kind_tokens_cost_errors_and_parents(llm_server):
    """A session's spans come back by start time with kind, parent, status, the error text, and tokens and cost on the LLM row."""
    made = record_day(llm_server, capture_content=True)
    spans = sdk.read_spans(made["refund"].id)
    assert [s.kind for s in spans] == ["session", "tool", "llm"]
    session, tool, call = spans
    assert tool.parent_span_id == call.parent_span_id == session.span_id
    assert all(s.session_id == made["refund"].id for s in spans)
    assert (call.input_tokens, call.output_tokens, call.model) == (INPUT_TOKENS, OUTPUT_TOKENS, MODEL)
    assert call.cost_usd is not None
    assert call.cost_usd > 0
    assert tool.input is not None
    assert "A-1" in tool.input
    assert tool.output is not None
    assert "order A-1" in tool.output
    assert session.start <= tool.start <= tool.end <= session.end
    broken = sdk.read_spans(made["broken"].id[:8])
    assert [(s.kind, s.status) for s in broken] == [("session", "error"), ("tool", "unset")]
    assert broken[0].error == "ZeroDivisionError: division by zero"
    assert {s.session_id for s in sdk.read_spans(user="u-1")} == {made["refund"].id}
    assert {s.session_id for s in sdk.read_spans(state="fail")} == {made["broken"].id}
    assert sdk.read_spans(trace_id=made["broken"].trace_id) == broken
    assert "session.start" not in {s.kind for s in sdk.read_spans()}  # live markers are not spans of the work


def test_hostile_trace_files_are_read_around(tmp_path):
    """Lines of the traces folder that are not OTLP-JSON (a file the SDK did not write, a torn last line) are left out."""
    folder = tmp_path / ".sessiontrace" / "traces"
    folder.mkdir(parents=True)
    span = {
        "traceId": "1" * 32,
        "spanId": "2" * 16,
        "name": "ok",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
    }
    span["attributes"] = [{"key": "session.id", "value": {"stringValue": "s-1"}}]
    good = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    (folder / "a.jsonl").write_text(f"not json\n{{}}\n[1, 2]\n{good}\n{good[:20]}", encoding="utf-8")
    rows = sdk.read_spans(data_dir=tmp_path / ".sessiontrace")
    assert [(r.name, r.session_id) for r in rows] == [("ok", "s-1")]


def test_span_recorder_keeps_recent_spans_in_memory_scrubbed_and_bounded(tracer):
    """With no local traces (OTLP only), a SpanRecorder still gives the session's spans: scrubbed, the oldest forgotten past its bound."""
    recorder = SpanRecorder(max_spans=3)
    sdk.init(exporter="none", span_processors=[recorder], session_store="none")
    with sdk.session("remote-only") as session:
        for index in range(4):
            with tracer.start_as_current_span(f"step-{index}") as span:
                span.set_attribute("api_key", "sk-live-0123456789abcdef0123456789")
    assert len(recorder) == 3
    assert recorder.forgotten == 2  # step-0 and step-1 went to make room (the session span is the last)
    with pytest.raises(SessionNotFound):  # no local traces, no store, and the recorder was not asked
        sdk.read_spans(session.id)
    rows = sdk.read_spans(session.id, recorder=recorder)
    assert [r.name for r in rows] == ["remote-only", "step-2", "step-3"]
    assert all("sk-live" not in json.dumps(r.attributes, default=str) for r in rows)
    (listed,) = sdk.read_sessions(recorder=recorder)
    assert (listed.id, listed.state, listed.sources) == (session.id, "success", ("traces",))
    with pytest.raises(ValueError, match="max_spans must be a positive integer"):
        SpanRecorder(0)


def test_to_pandas_gives_a_dataframe_with_timestamps(llm_server):
    """`to_pandas()` turns rows into a DataFrame: one column per field, times as UTC timestamps."""
    pandas = pytest.importorskip("pandas", reason="pandas is not installed (the `pandas` extra)")
    made = record_day(llm_server)
    frame = sdk.read_sessions().to_pandas()
    assert list(frame.columns) == list(sdk.SessionRow._fields)
    assert len(frame) == 3
    assert str(frame["started"].dtype) == "datetime64[ns, UTC]"
    refund = frame.set_index("id").loc[made["refund"].id]
    assert refund["llm_calls"] == 1
    spans = sdk.read_spans(made["refund"].id).to_pandas()
    assert list(spans["kind"]) == ["session", "tool", "llm"]
    assert isinstance(spans["start"].iloc[0], pandas.Timestamp)
    assert list(sdk.read_sessions(user="nobody").to_pandas().columns) == list(sdk.SessionRow._fields)


def test_without_pandas_rows_work_and_to_pandas_says_what_to_install(tmp_path):
    """Without pandas, `import sdk` and the readers work and `to_pandas()` raises ImportError naming the extra."""
    code = """
import sys
sys.modules["pandas"] = None  # as if pandas were not installed
import sdk
assert "sdk.records" not in sys.modules  # the readers load on first use
sdk.init(service_name="no-pandas", console_summary=False)
with sdk.session("s", user_id="u"):
    pass
sdk.flush()
rows = sdk.read_sessions()
print(rows[0].name, rows[0].user_id, rows[0].state)
try:
    rows.to_pandas()
except ImportError as exc:
    print(exc)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "s u success",
        "to_pandas() needs pandas: pip install 'sessiontrace[pandas]' (the rows are plain NamedTuples without it)",
    ]


def test_resolve_session_id_and_parse_time():
    """An exact id wins, a unique prefix resolves, an ambiguous one lists its candidates; times parse or name the bad value."""
    ids = ["ab12", "ab34", "ab", "cd56"]
    assert resolve_session_id("ab", ids) == "ab"
    assert resolve_session_id("cd", ids) == "cd56"
    with pytest.raises(AmbiguousSessionId) as ambiguous:
        resolve_session_id("ab3", [*ids, "ab39"])
    assert ambiguous.value.candidates == ("ab34", "ab39")
    assert "ab34, ab39" in str(ambiguous.value)
    with pytest.raises(SessionNotFound):
        resolve_session_id("", ids)
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time(12.5) == 12.5
    assert (
        parse_time("2025-01-31T00:00:00Z")
        == datetime.datetime(2025, 1, 31, tzinfo=datetime.timezone.utc).timestamp()
    )
    with pytest.raises(ValueError, match="not True"):
        parse_time(True)  # type: ignore[arg-type]
