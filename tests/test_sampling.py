"""Sampling that keeps whole sessions: a pure function of the session id, tail rules, a bounded buffer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from opentelemetry import trace

import sdk
from sdk.export.meters import metrics_handle
from sdk.export.sampling import head_keeps
from sdk.testing import capture


def ids_where(keep: bool, rate: float, count: int, prefix: str = "s") -> list[str]:
    """The first `count` ids `prefix-N` that the head decision at `rate` keeps (or drops)."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"{prefix}-{n}"
        if head_keeps(candidate, rate) is keep:
            found.append(candidate)
        n += 1
    return found


def session_ids(spans) -> Counter[str]:
    return Counter(str(span.attributes.get("session.id")) for span in spans)


def test_sample_rate_zero_exports_no_successful_session_and_every_span_of_the_failing_ones(receiver):
    """At sample_rate=0, 100 successful sessions export nothing, and 5 that fail (an exception, a
    fail or indeterminate end, an error recorded inside a successful one) export every span."""
    sdk.init(endpoint=receiver.url, sample_rate=0, export_interval=0.05, metrics=False, live_sessions=False)
    tracer = trace.get_tracer("tests")
    for i in range(100):
        with sdk.session(f"fine-{i}", session_id=f"fine-{i}"):
            with tracer.start_as_current_span("step"), tracer.start_as_current_span("inner"):
                pass

    @sdk.session("raises", session_id="bad-raises")
    def raises() -> None:
        with tracer.start_as_current_span("step"):
            pass
        raise KeyError("x")

    with pytest.raises(KeyError):
        raises()
    for state in ("fail", "indeterminate"):
        s = sdk.start_session(state, session_id=f"bad-{state}")
        with tracer.start_as_current_span("step"), tracer.start_as_current_span("inner"):
            pass
        sdk.end_session(s, state)
    with sdk.session("caught", session_id="bad-caught"):
        with pytest.raises(ValueError, match="inside"), tracer.start_as_current_span("fails"):
            raise ValueError("inside")
    with sdk.session("decorated", session_id="bad-decorated"):

        @sdk.tool
        def tool() -> None:
            raise RuntimeError("tool")

        with pytest.raises(RuntimeError):
            tool()
    assert sdk.flush(10)
    received = session_ids(receiver.accepted_spans)
    assert received == {
        "bad-raises": 2,
        "bad-fail": 3,
        "bad-indeterminate": 3,
        "bad-caught": 2,
        "bad-decorated": 2,
    }
    roots = {s.attributes["session.id"]: s for s in receiver.accepted_spans if s.parent_span_id == ""}
    assert {sid: root.attributes["session.sampled_by"] for sid, root in roots.items()} == dict.fromkeys(
        received, "keep_failed"
    )
    assert all(root.attributes["session.sample_rate"] == 0.0 for root in roots.values())
    stats = sdk.stats()
    assert stats.sessions_sampled_out == 100
    assert stats.spans_sampled_out == 300
    assert stats.spans_dropped == 0  # sampled out is not lost


def test_ten_thousand_session_ids_at_a_quarter_keep_a_quarter_within_two_points():
    """10,000 sessions at sample_rate=0.25: the exported ones are 25% ± 2% of them, and exactly those
    whose id the head rule keeps."""
    captured = capture(sample_rate=0.25, keep_failed=False)
    ids = [f"conv-{n:05d}" for n in range(10_000)]
    for sid in ids:
        sdk.end_session(sdk.start_session("s", session_id=sid))
    exported = {s.attributes["session.id"] for s in captured.spans()}
    assert 0.23 <= len(exported) / len(ids) <= 0.27, len(exported)
    assert exported == {sid for sid in ids if head_keeps(sid, 0.25)}
    assert sdk.stats().sessions_sampled_out == len(ids) - len(exported)


def test_the_head_rule_is_sha256_of_the_id_against_the_rate():
    """The head decision is the documented rule (first 8 bytes of SHA-256, big-endian, < rate·2^64),
    so another language or service can repeat it: checked on fixed ids."""
    import hashlib

    for sid in ("a", "conv-42", "ünïcode", "x" * 200):
        value = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "big") / 2**64
        for rate in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert head_keeps(sid, rate) is (value < rate or rate == 1.0), (sid, rate)


RESUMING = textwrap.dedent(
    """
    import os, sys
    import sdk
    from opentelemetry import trace

    sdk.init(endpoint=os.environ["ENDPOINT"], sample_rate=0.5, keep_failed=False, metrics=False,
             session_store="sqlite:" + os.environ["STORE"], live_sessions=False)
    for sid in sys.argv[1:]:
        with sdk.session("conversation", session_id=sid, resume=True):
            with trace.get_tracer("worker").start_as_current_span("turn"):
                pass
    sdk.shutdown()
    print(sdk.stats().sessions_sampled_out)
    """
)


def test_two_processes_resuming_the_same_ids_make_the_same_decisions(receiver, tmp_path):
    """Two processes in turn resume the same session ids at sample_rate=0.5: a kept id has both
    segments exported in one trace, a dropped id has nothing from either."""
    kept = ids_where(True, 0.5, 3, "conv")
    dropped = ids_where(False, 0.5, 3, "conv")
    env = {**os.environ, "ENDPOINT": receiver.url, "STORE": str(tmp_path / "sessions.db")}
    env.pop("SESSIONTRACE_RAISE_INTERNAL_ERRORS", None)
    outputs = [
        subprocess.run(
            [sys.executable, "-c", RESUMING, *kept, *dropped],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    assert outputs == [["3"], ["3"]]
    spans = receiver.accepted_spans
    assert session_ids(spans) == dict.fromkeys(kept, 4)  # two segments, each a root and a turn
    for sid in kept:
        segments = [s for s in spans if s.attributes["session.id"] == sid and s.parent_span_id == ""]
        assert sorted(s.attributes["session.segment"] for s in segments) == [1, 2]
        assert len({s.trace_id for s in spans if s.attributes["session.id"] == sid}) == 1
    stored = sdk.read_sessions(store=f"sqlite:{tmp_path / 'sessions.db'}", data_dir=tmp_path / "none")
    assert {row.id for row in stored} == set(kept + dropped)  # the store keeps every session, sampled or not


def test_a_session_larger_than_the_buffer_is_kept_whole_and_says_why():
    """A session the head rule drops that holds more spans than sample_buffer_spans is kept: every one
    of its spans is exported, its own span says `buffer_full`; a small one beside it is still dropped."""
    captured = capture(sample_rate=0, sample_buffer_spans=50)
    tracer = trace.get_tracer("tests")
    with sdk.session("small", session_id="small"):
        with tracer.start_as_current_span("one"):
            pass
        with sdk.session("large", session_id="large"):
            for i in range(120):
                with tracer.start_as_current_span(f"step-{i}"):
                    pass
    assert session_ids(captured.spans()) == {"large": 121}
    (root,) = [s for s in captured.spans() if s.name == "large"]
    assert root.attributes["session.sampled_by"] == "buffer_full"
    assert sdk.stats().sessions_sampled_out == 1


def test_the_tail_rules_keep_slow_and_costly_sessions_and_only_when_asked():
    """keep_slower_than keeps a session that ran longer; keep_costlier_than one whose LLM calls cost
    more; keep_failed=False lets a failed session go; each kept session names its rule."""
    captured = capture(sample_rate=0, keep_failed=False, keep_slower_than=0.2, keep_costlier_than=0.01)
    slow = sdk.start_session("slow", session_id="slow")
    time.sleep(0.25)
    sdk.end_session(slow)
    costly = sdk.start_session("costly", session_id="costly")
    costly.add_llm_usage(input_tokens=1000, output_tokens=100, cost_usd=0.02)
    sdk.end_session(costly)
    cheap = sdk.start_session("cheap", session_id="cheap")
    cheap.add_llm_usage(input_tokens=10, output_tokens=1, cost_usd=0.001)
    sdk.end_session(cheap)
    sdk.end_session(sdk.start_session("failed", session_id="failed"), "fail")
    by = {s.attributes["session.id"]: s.attributes["session.sampled_by"] for s in captured.spans()}
    assert by == {"slow": "keep_slower_than", "costly": "keep_costlier_than"}


def test_a_kept_session_says_its_rate_and_a_late_span_of_a_dropped_one_is_dropped_too():
    """At sample_rate=0.5 a kept session's span carries `session.sampled_by=rate` and the rate; a span
    that starts in a dropped session's trace after it ended (the grace period) is dropped with it,
    while one in a kept session's trace is exported."""
    captured = capture(sample_rate=0.5, keep_failed=False)
    tracer = trace.get_tracer("tests")
    (kept,) = ids_where(True, 0.5, 1)
    (dropped,) = ids_where(False, 0.5, 1)
    contexts = {}
    for sid in (kept, dropped):
        with sdk.session(sid, session_id=sid):
            with tracer.start_as_current_span("work") as span:
                contexts[sid] = trace.set_span_in_context(span)
    for ctx in contexts.values():
        with tracer.start_as_current_span("late", context=ctx):
            pass
    assert session_ids(captured.spans()) == {kept: 3}
    (root,) = [s for s in captured.spans() if s.name == kept]
    assert root.attributes["session.sampled_by"] == "rate"
    assert root.attributes["session.sample_rate"] == 0.5
    assert sdk.stats().spans_sampled_out == 3


def test_spans_of_another_services_session_follow_the_head_rule():
    """A server that adopts inbound session ids (trusted) drops the spans of a session the head rule
    drops and exports those of one it keeps: every service decides the same for an id."""
    captured = capture(sample_rate=0.5, accept_session_from="all")
    tracer = trace.get_tracer("server")
    (kept,) = ids_where(True, 0.5, 1, "remote")
    (dropped,) = ids_where(False, 0.5, 1, "remote")
    for sid in (kept, dropped):
        headers = {
            "traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01",
            "baggage": f"session.id={sid}",
        }
        with tracer.start_as_current_span("handle", context=sdk.context.extract(headers)):
            with tracer.start_as_current_span("db"):
                pass
    assert session_ids(captured.spans()) == {kept: 2}


def test_held_spans_survive_a_re_init_and_scores_are_always_exported():
    """A session held when init() runs again is decided by the new pipeline at its end (a failure is
    kept, with the spans from before the re-init); a score given to a dropped session is exported."""
    capture(sample_rate=0)
    tracer = trace.get_tracer("tests")
    s = sdk.start_session("long", session_id="long")
    with tracer.start_as_current_span("before"):
        pass
    captured = capture(sample_rate=0, service_name="again")
    with tracer.start_as_current_span("after"):
        pass
    sdk.end_session(s, "fail")
    assert sorted(span.name for span in captured.spans()) == ["after", "before", "long"]
    dropped = sdk.start_session("fine", session_id="fine")
    sdk.end_session(dropped)
    sdk.score("fine", "helpful", 1.0)
    assert [(span.name, span.attributes["session.id"]) for span in captured.spans()[3:]] == [
        ("session.score", "fine")
    ]


def test_metrics_count_every_session_sampled_or_not(receiver):
    """The sessions metrics count all sessions at sample_rate=0 (dashboards stay true), while only
    the failed one's spans are exported."""
    sdk.init(endpoint=receiver.url, sample_rate=0, export_interval=0.05, metric_export_interval=60)
    # The ended-sessions counts live as long as the process's metrics (other tests end sessions too).
    ended = metrics_handle().recorder.ended
    before = {state: ended[state].value for state in ("success", "fail")}
    for i in range(7):
        sdk.end_session(sdk.start_session("fine", session_id=f"fine-{i}"))
    sdk.end_session(sdk.start_session("bad", session_id="bad"), "fail")
    assert sdk.flush(10)

    def value(name: str, **attributes: str) -> float:
        return sum(
            p.value
            for p in receiver.latest_points(name)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )

    assert value("sessiontrace.sessions.started") == 8
    assert value("sessiontrace.sessions.ended", **{"session.state": "success"}) == before["success"] + 7
    assert value("sessiontrace.sessions.ended", **{"session.state": "fail"}) == before["fail"] + 1
    assert session_ids(receiver.accepted_spans) == {"bad": 1}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": "most"}, "sample_rate"),
        ({"keep_slower_than": -1}, "keep_slower_than"),
        ({"keep_costlier_than": "lots"}, "keep_costlier_than"),
        ({"sample_buffer_spans": 0}, "sample_buffer_spans"),
    ],
)
def test_bad_sampling_settings_are_config_errors_naming_the_setting(settings, named):
    """A sampling setting out of range is a ConfigError that names it."""
    with pytest.raises(sdk.ConfigError, match=named):
        sdk.init(exporter="none", **settings)


def test_the_sample_rate_comes_from_the_environment(monkeypatch):
    """SESSIONTRACE_SAMPLE_RATE and SESSIONTRACE_KEEP_FAILED set the rules."""
    monkeypatch.setenv("SESSIONTRACE_SAMPLE_RATE", "0")
    monkeypatch.setenv("SESSIONTRACE_KEEP_FAILED", "false")
    captured = capture()
    sdk.end_session(sdk.start_session("bad", session_id="bad"), "fail")
    assert list(captured.spans()) == []
    assert sdk.stats().sessions_sampled_out == 1


def test_a_held_session_gets_no_live_marker_and_a_kept_one_does(receiver):
    """A running session the head rule drops exports no `session.start` marker (it may never be
    exported); one it keeps is listed while it runs, as without sampling."""
    sdk.init(endpoint=receiver.url, sample_rate=0.5, export_interval=0.05, metrics=False)
    (kept,) = ids_where(True, 0.5, 1)
    (dropped,) = ids_where(False, 0.5, 1)
    sessions = [sdk.start_session(sid, session_id=sid) for sid in (kept, dropped)]
    time.sleep(1.2)  # live markers are for sessions running longer than a second
    with sessions[0].use(), trace.get_tracer("t").start_as_current_span("step"):
        pass
    assert receiver.wait_for_spans(2)
    for session in sessions:
        sdk.end_session(session)
    assert sdk.flush(10)
    assert sorted((s.name, s.attributes["session.id"]) for s in receiver.accepted_spans) == [
        (kept, kept),
        ("session.start", kept),
        ("step", kept),
    ]
