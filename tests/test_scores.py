"""Scores and feedback on a session, from the process that ran it or any other, before or after it ended."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sdk
from sdk.store.sqlite import SQLiteStore
from sdk.testing import capture

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.subprocess
def test_a_score_from_another_process_after_the_session_ended_lands_in_its_trace(receiver, tmp_path):
    """A session runs and ends in one process; a second process scores it by id: the session.score span arrives in the first session's trace, under its root span, with its attributes, and the store keeps the score."""
    data = tmp_path / "data"
    script = textwrap.dedent(
        f"""
        import sdk
        sdk.init(service_name="first", endpoint={receiver.url!r}, data_dir={str(data)!r}, console_summary=False)
        with sdk.session("support-chat", session_id="chat-42", user_id="u-1") as s:
            pass
        print(s.trace_id, s.span_id)
        sdk.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    trace_id, span_id = done.stdout.split()

    sdk.init(service_name="feedback", endpoint=receiver.url, data_dir=str(data), export_interval=0.05)
    given = sdk.score("chat-42", "helpfulness", 0.9, comment="solved my problem", source="user")
    sdk.flush()
    (span,) = receiver.spans_named("session.score")
    assert (span.trace_id, span.parent_span_id) == (trace_id, span_id)
    assert span.resource["service.name"] == "feedback"
    assert {k: v for k, v in span.attributes.items() if k.startswith("session.")} == {
        "session.id": "chat-42",
        "session.score.name": "helpfulness",
        "session.score.value": 0.9,
        "session.score.comment": "solved my problem",
        "session.score.source": "user",
    }
    record = SQLiteStore(data / "sessions.db").get("chat-42")
    assert record is not None
    assert record.scores == (given,)
    assert record.state == "success"  # scoring never reopens or rewrites the session


def test_scoring_a_running_session_object_counts_in_it():
    """A Session scored while it runs gets the score span in its trace, stamped and counted as one of its spans."""
    captured = capture()
    with sdk.session("live") as s:
        before = s.span_count
        sdk.score(s, "thumbs", True)
        sdk.score(s.id, "grade", "good", source="evaluator")
    spans = [x for x in captured.spans() if x.name == "session.score"]
    assert [x.attributes["session.score.value"] for x in spans] == [True, "good"]
    for span in spans:
        assert span.attributes["session.id"] == s.id
        assert span.context.trace_id == s.trace_id_int
        assert span.parent is not None
        assert span.parent.span_id == s.span.get_span_context().span_id
    assert s.span_count == before + 2


def test_unknown_session_ids_and_bad_scores_are_clear_errors():
    """A score for an id neither open here nor stored, or with a bad name, value or source, raises ValueError saying what is wrong."""
    capture()
    with pytest.raises(ValueError, match="no session has id 'nobody'"):
        sdk.score("nobody", "x", 1)
    with sdk.session("s") as s:
        for bad, match in (
            ({"name": ""}, "name must be"),
            ({"name": "a\nb"}, "name must be"),
            ({"value": None}, "value must be"),
            ({"value": float("nan")}, "value must be"),
            ({"source": "x" * 300}, "source must be"),
        ):
            kwargs = {"name": "ok", "value": 1, **bad}
            with pytest.raises(ValueError, match=match):
                sdk.score(s, kwargs.pop("name"), kwargs.pop("value"), **kwargs)
    with pytest.raises(TypeError, match="Session or a session id"):
        sdk.score(42, "x", 1)  # type: ignore[arg-type]


def test_numeric_scores_are_counted_in_the_score_histogram(receiver):
    """`sessiontrace.session.score` records numeric scores (true as 1) by name and source; a text score
    is not a measurement and is left out of it."""
    sdk.init(endpoint=receiver.url, export_interval=0.05, metric_export_interval=60)
    with sdk.session("chat") as session:
        pass
    # The metrics are cumulative for the process (other tests score too): names of this test only.
    sdk.score(session, "graded", 0.5, source="histogram-test")
    sdk.score(session, "graded", 0.75, source="histogram-test")
    sdk.score(session, "liked", True, source="histogram-test")
    sdk.score(session, "topic", "billing", source="histogram-test")
    assert sdk.flush(10)
    points = {
        (p.attributes["session.score.name"], p.attributes["session.score.source"]): (p.count, p.value)
        for p in receiver.latest_points("sessiontrace.session.score")
        if p.attributes["session.score.source"] == "histogram-test"
    }
    assert points == {("graded", "histogram-test"): (2, 1.25), ("liked", "histogram-test"): (1, 1.0)}
    (unit,) = {p.unit for p in receiver.latest_points("sessiontrace.session.score")}
    assert unit == "1"


def test_a_session_scored_by_id_right_after_it_ended_here_is_found():
    """A session this process ended a moment ago is scored by its id although its end is still queued
    for the store (the store writer writes in the background): the score waits for it."""
    capture(session_store="sqlite")
    for n in range(20):
        sdk.end_session(sdk.start_session("quick", session_id=f"quick-{n}"))
        given = sdk.score(f"quick-{n}", "helpful", 1.0)
        assert given.value == 1.0
    (row,) = sdk.read_sessions("quick-19")
    assert [score.name for score in row.scores] == ["helpful"]
