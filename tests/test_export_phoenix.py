"""End to end with real backends: sessions sent to Arize Phoenix over OTLP/HTTP and OTLP/gRPC, and
through a real collector (rotel) in front of Phoenix, read back with Phoenix's REST and GraphQL
APIs (GraphQL is what Phoenix's Sessions and Traces views show: user, first input, last output,
span kinds, token usage, span counts).

Run alone with ``python -m pytest -m phoenix``. Phoenix and rotel are installed from PyPI into
cached virtual environments outside the repository (see tests/backends.py); the first run on a
machine pays the install (a few minutes), later runs start the servers only.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from backends import Phoenix, Rotel, run_phoenix, run_rotel, wait_until
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer
from opentelemetry import trace

import sdk

pytestmark = [pytest.mark.phoenix, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    with run_phoenix(tmp_path_factory.mktemp("phoenix")) as server:
        yield server


@pytest.fixture(scope="module")
def rotel(tmp_path_factory: pytest.TempPathFactory, phoenix: Phoenix) -> Iterator[Rotel]:
    with run_rotel(tmp_path_factory.mktemp("rotel"), phoenix.grpc_url) as collector:
        yield collector


@sdk.tool
def search(query: str) -> str:
    sdk.event("search.hit", query=query)
    return query.upper()


def run_sessions(endpoint: str, project: str, **settings: Any) -> tuple[list[sdk.Session], sdk.Session]:
    """Two finished sessions (a tool span and a raw OpenTelemetry span each) and one still running."""
    sdk.init(
        service_name="phoenix-e2e",
        endpoint=endpoint,
        resource_attributes={"openinference.project.name": project},
        export_interval=0.05,
        metrics=False,  # Phoenix takes traces only
        **settings,
    )
    running = sdk.start_session("still-running", user_id="u-live")
    finished = []
    for user in ("u-1", "u-2"):
        with sdk.session("support-chat", user_id=user, tags=["e2e"]) as session:
            search(f"order of {user}")
            with trace.get_tracer("tests.raw").start_as_current_span("raw-step"):
                pass
        finished.append(session)
    assert sdk.flush()
    return finished, running


def assert_in_phoenix(
    phoenix: Phoenix, project: str, finished: list[sdk.Session], running: sdk.Session
) -> None:
    """Phoenix lists every session (the running one too, by its marker) with the right spans and parents."""
    expected = {s.id for s in [*finished, running]}
    listed = wait_until(
        lambda: {s["session_id"] for s in phoenix.sessions(project)} >= expected and True, timeout=60
    )
    assert listed, f"sessions listed: {[s['session_id'] for s in phoenix.sessions(project)]}"
    sessions = {s["session_id"]: s for s in phoenix.sessions(project)}
    assert set(sessions) == expected
    for session in [*finished, running]:
        assert [t["trace_id"] for t in sessions[session.id]["traces"]] == [session.trace_id]

    spans = wait_until(
        lambda: len(phoenix.spans(project)) >= 3 * len(finished) + 1 and phoenix.spans(project)
    )
    by_session: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_session.setdefault(span["attributes"]["session.id"], []).append(span)
    for session in finished:
        group = {span["name"]: span for span in by_session[session.id]}
        assert set(group) == {"support-chat", "execute_tool search", "raw-step"}
        root = group["support-chat"]
        assert root["parent_id"] is None
        assert root["context"]["span_id"] == session.span_id
        assert root["context"]["trace_id"] == session.trace_id
        assert root["attributes"]["session.state"] == "success"
        assert root["attributes"]["user.id"] == session.user_id
        assert root["attributes"]["session.tags"] == ["e2e"]
        for child in ("execute_tool search", "raw-step"):
            assert group[child]["parent_id"] == session.span_id
            assert group[child]["context"]["trace_id"] == session.trace_id
        assert [e["name"] for e in group["execute_tool search"]["events"]] == ["search.hit"]
    (marker,) = by_session[running.id]  # still running: only its start marker is there
    assert marker["name"] == "session.start"
    assert marker["parent_id"] == running.span_id
    assert marker["attributes"]["session.state"] == "running"
    assert marker["attributes"]["user.id"] == "u-live"

    sdk.end_session(running)
    assert sdk.flush()
    ended = wait_until(
        lambda: [s for s in phoenix.spans(project) if s["name"] == "still-running"], timeout=60
    )
    assert ended
    assert ended[0]["attributes"]["session.state"] == "success"
    assert ended[0]["context"]["span_id"] == running.span_id


def project_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


def test_sessions_over_otlp_http_appear_in_phoenix(phoenix: Phoenix, tmp_path: Path):
    """Sessions sent over OTLP/HTTP are listed in Phoenix's sessions with their spans, parents and attributes."""
    project = project_name()
    finished, running = run_sessions(phoenix.http_url, project)
    assert_in_phoenix(phoenix, project, finished, running)


def test_sessions_over_otlp_grpc_appear_in_phoenix(phoenix: Phoenix, tmp_path: Path):
    """The same over OTLP/gRPC to Phoenix's gRPC port."""
    project = project_name()
    finished, running = run_sessions(phoenix.grpc_url, project, protocol="grpc")
    assert_in_phoenix(phoenix, project, finished, running)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_sessions_through_a_collector_reach_phoenix(
    phoenix: Phoenix, rotel: Rotel, tmp_path: Path, protocol: str
):
    """Through a real OpenTelemetry collector (rotel, OTLP in, OTLP/gRPC out to Phoenix): the same result."""
    project = project_name()
    endpoint = rotel.grpc_url if protocol == "grpc" else rotel.http_url
    finished, running = run_sessions(endpoint, project, protocol=protocol, compression="gzip")
    assert_in_phoenix(phoenix, project, finished, running)


SESSIONS_QUERY = """
query Sessions($name: String!) {
  getProjectByName(name: $name) {
    sessions(first: 50) {
      edges { node {
        sessionId userId numTraces
        firstInput { value mimeType }
        lastOutput { value mimeType }
        tokenUsage { prompt completion total }
        costSummary { total { cost } }
        traces(first: 10) { edges { node {
          traceId numSpans
          spanCountsByKind { spanKind count }
          rootSpan { name spanKind }
        } } }
      } }
    }
  }
}
"""


def chat_sessions(endpoint: str, project: str, llm_server: LLMServer, **settings: Any) -> list[sdk.Session]:
    """Two users' sessions, one instrumented openai call each, with content capture on; the second
    runs long enough (over 1 s, with an export meanwhile) to get its live marker."""
    sdk.init(
        service_name="phoenix-e2e",
        endpoint=endpoint,
        resource_attributes={"openinference.project.name": project},
        export_interval=0.05,
        metrics=False,
        capture_content=True,
        **settings,
    )
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    done = []
    for user, question, wait in (("u-ann", "where is my order?", False), ("u-bob", "refund A-2", True)):
        with sdk.session("support-chat", user_id=user, tags=["e2e"]) as session:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
            deadline = time.monotonic() + 10
            while wait and not session.marked and time.monotonic() < deadline:
                assert sdk.flush()
                time.sleep(0.1)
            assert session.marked == wait
        done.append(session)
    assert sdk.flush()
    return done


def phoenix_sessions(phoenix: Phoenix, project: str, expected: int) -> dict[str, Any]:
    def found() -> dict[str, Any]:
        try:
            data = phoenix.graphql(SESSIONS_QUERY, name=project)
        except AssertionError:  # the project does not exist yet
            return {}
        edges = ((data.get("getProjectByName") or {}).get("sessions") or {}).get("edges") or []
        nodes = {edge["node"]["sessionId"]: edge["node"] for edge in edges}
        complete = len(nodes) == expected and all(
            n["lastOutput"] and n["traces"]["edges"] and n["traces"]["edges"][0]["node"]["rootSpan"]
            for n in nodes.values()
        )
        return nodes if complete else {}

    return dict(wait_until(found, timeout=60) or {})


def assert_native_in_phoenix(phoenix: Phoenix, project: str, sessions: list[sdk.Session]) -> None:
    """Per session, Phoenix's Sessions view has the user, first input and last output, known span kinds,
    the server's token counts, a cost and as many spans as `Session.span_count`."""
    nodes = phoenix_sessions(phoenix, project, len(sessions))
    assert set(nodes) == {s.id for s in sessions}, nodes
    for session, question in zip(sessions, ("where is my order?", "refund A-2"), strict=True):
        node = nodes[session.id]
        assert node["userId"] == session.user_id
        assert node["firstInput"] == {"value": question, "mimeType": "text"}
        assert node["lastOutput"] == {"value": f"Hello! You said: {question}", "mimeType": "text"}
        assert node["tokenUsage"] == {
            "prompt": INPUT_TOKENS,
            "completion": OUTPUT_TOKENS,
            "total": INPUT_TOKENS + OUTPUT_TOKENS,
        }
        assert node["costSummary"]["total"]["cost"] > 0  # priced by Phoenix's own table (gpt-4o-mini)
        (trace_node,) = [edge["node"] for edge in node["traces"]["edges"]]
        assert trace_node["traceId"] == session.trace_id
        assert trace_node["numSpans"] == session.span_count
        kinds = {entry["spanKind"]: entry["count"] for entry in trace_node["spanCountsByKind"]}
        assert "unknown" not in kinds, kinds
        assert kinds == ({"chain": 2, "llm": 1} if session.marked else {"chain": 1, "llm": 1})
        assert trace_node["rootSpan"] == {"name": "support-chat", "spanKind": "chain"}


def test_sessions_look_native_in_phoenix_over_http(phoenix: Phoenix, llm_server: LLMServer):
    """Over OTLP/HTTP, Phoenix shows each session's user, first input, last output, span kinds, tokens, cost and span count."""
    project = project_name()
    assert_native_in_phoenix(phoenix, project, chat_sessions(phoenix.http_url, project, llm_server))


def test_sessions_look_native_in_phoenix_over_grpc(phoenix: Phoenix, llm_server: LLMServer):
    """The same over OTLP/gRPC."""
    project = project_name()
    sessions = chat_sessions(phoenix.grpc_url, project, llm_server, protocol="grpc")
    assert_native_in_phoenix(phoenix, project, sessions)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def test_phoenix_sessions_page_in_a_browser(phoenix: Phoenix, llm_server: LLMServer, tmp_path: Path):
    """Phoenix's own Sessions page, in headless Chromium, lists each session with its user, first input
    and last output (the screenshot is docs/images/phoenix-sessions.png); the browser reaches only 127.0.0.1."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: apt-get install -y chromium (the Debian package; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    project = project_name()
    sessions = chat_sessions(phoenix.http_url, project, llm_server)
    phoenix_sessions(phoenix, project, len(sessions))  # ingested, with their last outputs
    project_id = phoenix.graphql(
        "query($name: String!) { getProjectByName(name: $name) { id } }", name=project
    )["getProjectByName"]["id"]
    elsewhere: list[str] = []

    def loopback_only(route: Any) -> None:
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 700})
            tab.route("**/*", loopback_only)
            tab.goto(f"{phoenix.http_url}/projects/{project_id}/sessions")
            for question in ("where is my order?", "refund A-2"):
                tab.get_by_text(f"Hello! You said: {question}").first.wait_for(timeout=60_000)
            text = tab.inner_text("body")
            tab.screenshot(path=str(tmp_path / "sessions.png"))
        finally:
            browser.close()
    for session, question in zip(sessions, ("where is my order?", "refund A-2"), strict=True):
        assert session.id in text
        assert str(session.user_id) in text
        assert question in text
    IMAGES.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "sessions.png", IMAGES / "phoenix-sessions.png")
