"""The semantic conventions to the letter: session ids across segments, conversation ids only when
real, and a live marker that backends and `Session.span_count` count alike."""

from __future__ import annotations

import time

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdk

PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(llm_server):
    return openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)


def exported(**settings) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    settings.setdefault("session_store", "none")
    sdk.init(service_name="tests", exporter=exporter, export_interval=0.05, metrics=False, **settings)
    return exporter


def finished(exporter: InMemorySpanExporter) -> list:
    assert sdk.flush()
    return list(exporter.get_finished_spans())


def test_conversation_id_only_from_a_responses_conversation(client):
    """`gen_ai.conversation.id` is the Responses API's own conversation id, and absent where there is none."""
    exporter = exported()
    with sdk.session("chat") as session:
        client.responses.create(model="gpt-4o-mini", input="hi", conversation="conv_7f3a")
        client.responses.create(model="gpt-4o-mini", input="hi", conversation={"id": "conv_8b"})
        client.responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_0")
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    spans = finished(exporter)
    llm = [s.attributes for s in spans if s.attributes.get("sessiontrace.span.kind") == "llm"]
    assert [a.get("gen_ai.conversation.id") for a in llm] == ["conv_7f3a", "conv_8b", None, None]
    assert llm[2]["gen_ai.request.previous_response.id"] == "resp_0"
    root = next(s for s in spans if s.name == "chat")
    assert "gen_ai.conversation.id" not in root.attributes  # the session id is not a conversation id
    assert root.attributes["session.id"] == session.id


def test_a_resumed_segment_keeps_its_id_and_links_the_previous_one():
    """A resumed segment has the same `session.id` and a link to the earlier segment, never a `session.previous_id`
    (semconv: the previous id of a session whose id changed, so never equal to `session.id`)."""
    exporter = exported(session_store="memory")
    first = sdk.start_session("chat", session_id="conv-9", resume=True)
    first.end()
    second = sdk.start_session("chat", session_id="conv-9", resume=True)
    second.end()
    roots = [s for s in finished(exporter) if s.name == "chat"]
    assert [r.attributes["session.id"] for r in roots] == ["conv-9", "conv-9"]
    assert [r.attributes.get("session.segment") for r in roots] == [1, 2]
    assert [link.context.span_id for link in roots[1].links] == [roots[0].context.span_id]
    assert roots[1].links[0].attributes["session.segment"] == 1
    for span in roots:
        assert "session.previous_id" not in span.attributes


def test_a_session_id_that_changes_keeps_the_previous_one_when_the_application_says_so():
    """An application that replaces a session by a new one records `session.previous_id` (a different id)."""
    exporter = exported()
    with sdk.session("old") as old:
        pass
    with sdk.session("new", attributes={"session.previous_id": old.id}) as new:
        pass
    root = next(s for s in finished(exporter) if s.name == "new")
    assert root.attributes["session.previous_id"] == old.id != new.id


def test_live_marker_counts_in_span_count_as_backends_count_it(tracer):
    """A session that ran long enough to get its live marker counts it: every exported span of its
    trace, marker included, is one of `Session.span_count`."""
    exporter = exported()
    with sdk.session("long") as long_one:
        with tracer.start_as_current_span("step"):
            pass
        deadline = time.monotonic() + 5
        while not long_one.marked and time.monotonic() < deadline:
            assert sdk.flush()
            time.sleep(0.05)
        assert long_one.marked
    with sdk.session("short") as short_one:
        with tracer.start_as_current_span("step"):
            pass
    spans = finished(exporter)
    for session, marker in ((long_one, True), (short_one, False)):
        mine = [s for s in spans if s.context.trace_id == session.trace_id_int]
        assert len(mine) == session.span_count == (3 if marker else 2)
        assert [s.name for s in mine].count("session.start") == (1 if marker else 0)


def test_every_destination_gets_the_marker_it_counts(tmp_path):
    """With two destinations, both get the marker once a session's is counted (backends agree with each other)."""
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    sdk.init(
        service_name="tests",
        exporter=(first, second),
        export_interval=0.05,
        metrics=False,
        session_store="none",
    )
    session = sdk.start_session("live")
    deadline = time.monotonic() + 5
    while not session.marked and time.monotonic() < deadline:
        assert sdk.flush()
        time.sleep(0.05)
    session.end()
    assert sdk.flush()
    for exporter in (first, second):
        names = [s.name for s in exporter.get_finished_spans()]
        assert sorted(names) == ["live", "session.start"]
    assert session.span_count == 2


def test_no_span_of_the_sdk_carries_the_deprecated_system_attribute(client):
    """`gen_ai.system` (deprecated for `gen_ai.provider.name`) is never exported."""
    exporter = exported()
    with sdk.session("s"):
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    for span in finished(exporter):
        assert "gen_ai.system" not in span.attributes
