"""One mechanism for every framework conversation id -> session mapping: the session_from setting."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

import sdk
from sdk import cli
from sdk.instrumentation import frameworks
from sdk.settings import SESSION_SOURCES, ConfigError, load_config
from sdk.testing import capture

SOURCE = "langgraph.thread_id"


def test_the_setting_names_the_same_sources_as_the_integrations():
    """sdk.settings' list of sources and the integrations' table are the same names."""
    assert set(SESSION_SOURCES) == set(frameworks.SOURCES)


def test_session_from_is_read_from_every_layer_and_checked(monkeypatch):
    """A list, comma-separated text from the environment, or none; an unknown source is an error naming the known ones."""
    assert load_config().session_from == ()
    assert load_config({"session_from": ["langgraph.thread_id"]}).session_from == ("langgraph.thread_id",)
    monkeypatch.setenv("SESSIONTRACE_SESSION_FROM", "openai_agents.group_id, autogen.topic")
    assert load_config().session_from == ("openai_agents.group_id", "autogen.topic")
    assert load_config({"session_from": "none"}).session_from == ()
    with pytest.raises(ConfigError) as caught:
        load_config({"session_from": ["thread_id"]})
    assert "session_from" in str(caught.value)
    assert "langgraph.thread_id" in str(caught.value)


def test_session_from_topic_is_an_alias_of_autogen_topic():
    """session_from_topic=true turns on the autogen.topic source, as session_from=["autogen.topic"] does."""
    assert frameworks.enabled_sources(load_config({"session_from_topic": True})) == ("autogen.topic",)
    both = load_config({"session_from_topic": True, "session_from": ["autogen.topic", SOURCE]})
    assert frameworks.enabled_sources(both) == ("autogen.topic", SOURCE)
    assert frameworks.enabled_sources(load_config({"enabled": False, "session_from": [SOURCE]})) == ()


def test_off_by_default_and_inside_a_session_nothing_is_mapped():
    """No session for a framework id unless its source is on, and never for work already inside a session."""
    capture(service_name="tests")
    assert frameworks.session_for(SOURCE, "t-1", name="langgraph") is None
    sdk.init(exporter="none", session_from=[SOURCE])
    with sdk.session("outer"):
        assert frameworks.session_for(SOURCE, "t-1", name="langgraph") is None
    assert frameworks.session_for("openai_agents.group_id", "t-1", name="x") is None


def test_a_conversation_id_starts_then_finds_its_session():
    """The first call starts session X with gen_ai.conversation.id and the source; later calls get the same open session."""
    captured = capture(service_name="tests", session_from=[SOURCE])
    first = frameworks.session_for(SOURCE, "t-1", name="langgraph", attributes={SOURCE: "t-1"})
    assert first is not None
    assert first.id == "t-1"
    assert frameworks.session_for(SOURCE, "t-1", name="langgraph") is first
    assert frameworks.session_for(SOURCE, 42, name="langgraph").id == "42"
    first.end()
    attrs = captured.named("langgraph").attributes
    assert attrs["gen_ai.conversation.id"] == "t-1"
    assert attrs["sessiontrace.session.source"] == SOURCE
    assert attrs[SOURCE] == "t-1"


def test_an_open_session_with_that_id_is_joined_and_left_open():
    """A session the program opened with id X is used for conversation X, and not ended by end_owned."""
    capture(service_name="tests", session_from=[SOURCE])
    owner = Owner()
    mine = sdk.start_session("mine", session_id="t-2")  # current in this thread: ask from another
    found = _outside(lambda: frameworks.session_for(SOURCE, "t-2", name="langgraph", owner=owner))
    assert found is mine
    assert frameworks.end_owned(owner, "done") == 0
    assert not mine.ended
    started = _outside(lambda: frameworks.session_for(SOURCE, "t-3", name="langgraph", owner=owner))
    assert frameworks.end_owned(owner, "done") == 1
    assert started.state is sdk.SessionState.SUCCESS
    assert started.reason == "done"


def test_resumed_from_the_store_after_it_ended():
    """With a session store, the next run of an ended conversation resumes it: same id, same trace, next segment."""
    capture(service_name="tests", session_from=[SOURCE], session_store="memory")
    first = frameworks.session_for(SOURCE, "t-4", name="langgraph")
    first.end()
    again = frameworks.session_for(SOURCE, "t-4", name="langgraph")
    assert again is not first
    assert (again.id, again.trace_id, again.segment) == ("t-4", first.trace_id, 2)


def test_many_threads_asking_for_one_id_get_one_session():
    """Concurrent runs of one conversation share one session; different conversations get their own."""
    capture(service_name="tests", session_from=[SOURCE])
    found: list[sdk.Session] = []
    barrier = threading.Barrier(16)

    def ask(i: int) -> None:
        barrier.wait()
        found.append(frameworks.session_for(SOURCE, f"t-{i % 2}", name="langgraph"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in found}) == 2
    assert {s.id for s in found} == {"t-0", "t-1"}


def test_an_id_that_is_no_session_id_is_warned_about_once(caplog):
    """Too long or unprintable ids run outside any session, with one warning naming the source."""
    capture(service_name="tests", session_from=[SOURCE])
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        assert frameworks.session_for(SOURCE, "x" * 1000, name="langgraph") is None
        assert frameworks.session_for(SOURCE, "bad\nid", name="langgraph") is None
        assert frameworks.session_for(SOURCE, "   ", name="langgraph") is None
        assert frameworks.session_for(SOURCE, object(), name="langgraph") is None
    warnings = [r for r in caplog.records if "session_from" in r.getMessage()]
    assert len(warnings) == 1
    assert SOURCE in warnings[0].getMessage()


def test_doctor_lists_the_mappings(monkeypatch, capsys):
    """doctor shows every source with its framework, where the id comes from, and whether it is on (text and JSON)."""
    monkeypatch.setenv("SESSIONTRACE_SESSION_FROM", "langgraph.thread_id")
    monkeypatch.setenv("SESSIONTRACE_EXPORTER", "none")
    assert cli.main(["doctor"]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.strip().startswith("langgraph.thread_id"))
    assert " on " in line
    assert "thread_id" in line
    assert cli.main(["doctor", "--json"]) == 0
    rows = {row["source"]: row for row in json.loads(capsys.readouterr().out)["session_from"]}
    assert set(rows) == set(SESSION_SOURCES)
    assert rows["langgraph.thread_id"]["state"] == "on"
    assert rows["autogen.topic"]["state"] == "off"
    assert rows["openai_agents.group_id"]["framework"].startswith("openai-agents")


class Owner:
    """Stands for a framework object whose sessions end with it (autogen's runtime)."""


def _outside(call):
    """Run `call` in a fresh thread: outside any session this test's context holds."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_new_framework_locks():
    """Locks the parent holds at fork time (session lookup, the Agents SDK bridge, the LangChain handler) are free in the child."""
    from sdk.instrumentation import agents, langgraph

    locks = [
        lambda: frameworks._owned().lock,
        lambda: frameworks._owned().stripes[0],
        lambda: agents.bridge()._lock,
        lambda: langgraph.handler()._lock,
    ]
    held = [get() for get in locks]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: every lock must be takeable at once
            ok = all(get().acquire(timeout=1) for get in locks)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        for lock in held:
            lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
