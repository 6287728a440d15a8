"""End to end with a real MLflow tracking server: sessions sent over OTLP/HTTP appear in MLflow's traces
with their session, user, inputs and outputs, state and token usage.

Run alone with ``python -m pytest -m mlflow``. MLflow is installed from PyPI into a cached virtual
environment outside the repository (tests/backends.py; the first run on a machine takes about two
minutes and 900 MB), and `mlflow server` runs on 127.0.0.1 with a SQLite store and its telemetry off.
MLflow reads ``session.id`` and ``user.id`` from the spans into the trace's ``mlflow.trace.session``
and ``mlflow.trace.user`` (the Sessions view groups traces by them), and the root span's
``input.value`` / ``output.value`` into the trace's request and response previews.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from backends import MLflow, run_mlflow, wait_until
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer

import sdk

pytestmark = [pytest.mark.mlflow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflow]:
    with run_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@sdk.tool
def look_up(order: str) -> str:
    return f"{order}: shipped"


def test_sessions_and_users_appear_in_mlflow(mlflow: MLflow, llm_server: LLMServer, tmp_path: Path):
    """Two users' sessions (a tool and an openai call each) and a running one are MLflow traces with their
    session, user, first question and last answer, state, token usage and spans."""
    experiment = mlflow.create_experiment(f"e2e-{uuid.uuid4().hex[:8]}")
    sdk.init(
        service_name="mlflow-e2e",
        endpoint=f"{mlflow.url}/v1/traces",
        headers={"x-mlflow-experiment-id": experiment},
        export_interval=0.05,
        metrics=False,  # MLflow takes traces only
        capture_content=True,
        flush_timeout=60,  # MLflow stores a batch in a few seconds when it has just started
    )
    client = openai.OpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0)
    running = sdk.start_session("still-running", user_id="u-live")
    finished = []
    for user, question in (("u-ann", "where is A-1?"), ("u-bob", "refund A-2")):
        with sdk.session("support-chat", user_id=user, tags=["e2e"]) as session:
            look_up(question.split()[-1])
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
        finished.append((session, question))
    deadline = time.monotonic() + 10
    while not running.marked and time.monotonic() < deadline:
        assert sdk.flush()
        time.sleep(0.1)
    assert sdk.flush()

    live = wait_until(lambda: mlflow.traces(experiment, f"metadata.`mlflow.trace.session` = '{running.id}'"))
    assert live, "the running session is not listed"
    assert live[0]["state"] == "IN_PROGRESS"  # listed by its live marker before it ends
    assert live[0]["trace_metadata"]["mlflow.trace.user"] == "u-live"

    for session, question in finished:
        by_session = mlflow.traces(experiment, f"metadata.`mlflow.trace.session` = '{session.id}'")
        (trace,) = by_session
        assert trace["trace_id"] == f"tr-{session.trace_id}"
        assert trace["state"] == "OK"
        assert trace["trace_metadata"]["mlflow.trace.user"] == session.user_id
        assert json.loads(trace["request_preview"]) == question
        assert json.loads(trace["response_preview"]) == f"Hello! You said: {question}"
        usage = json.loads(trace["trace_metadata"]["mlflow.trace.tokenUsage"])
        assert (usage["input_tokens"], usage["output_tokens"]) == (INPUT_TOKENS, OUTPUT_TOKENS)
        spans = mlflow.spans(trace["trace_id"])
        assert len(spans) == session.span_count
        by_user = mlflow.traces(experiment, f"metadata.`mlflow.trace.user` = '{session.user_id}'")
        assert [t["trace_id"] for t in by_user] == [trace["trace_id"]]

    sdk.end_session(running)
    assert sdk.flush()
    ended = wait_until(
        lambda: [
            t
            for t in mlflow.traces(experiment, f"metadata.`mlflow.trace.session` = '{running.id}'")
            if t["state"] == "OK"
        ]
    )
    assert ended, "the running session's trace did not end"
