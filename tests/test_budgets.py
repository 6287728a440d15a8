"""Session budgets, with the real openai and anthropic clients against the loopback LLM server.

The server answers every call with INPUT_TOKENS in and OUTPUT_TOKENS out; gpt-4o-mini and
claude-haiku-4-5 are in the shipped pricing table. Each test counts the requests the server
received, so "refused before it was sent" is checked on the wire.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer

import sdk
from sdk.settings import ConfigError, load_config
from sdk.testing import capture

PROMPT = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


def sent(llm_server: LLMServer, path: str) -> int:
    return sum(1 for p, _, _ in llm_server.requests if p == path)


def chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)  # type: ignore[arg-type]


def test_max_llm_calls_refuses_the_third_call_before_it_is_sent(llm_server, openai_client):
    """max_llm_calls=2: two requests reach the server; the third call raises BudgetExceeded with the limit, the usage and the session, and nothing is sent."""
    captured = capture()
    client = openai_client
    before = sent(llm_server, "/v1/chat/completions")
    with sdk.session("capped", budget=sdk.Budget(max_llm_calls=2)) as s:
        chat(client)
        chat(client)
        with pytest.raises(sdk.BudgetExceeded) as raised:
            chat(client)
        with pytest.raises(sdk.BudgetExceeded):  # every later call too
            chat(client)
    assert sent(llm_server, "/v1/chat/completions") - before == 2
    error = raised.value
    assert (error.limit, error.maximum, error.used, error.session) == ("max_llm_calls", 2, 2, s)
    assert "max_llm_calls=2" in str(error)
    assert s.usage.llm_calls == 2
    root = captured.named("capped")
    assert root.attributes["session.budget.exceeded"] == ("max_llm_calls",)
    events = [e for e in root.events if e.name == "session.budget_exceeded"]
    assert len(events) == 1
    assert events[0].attributes["session.budget.limit"] == "max_llm_calls"


def test_token_limit_from_the_servers_usage_with_anthropic(llm_server, anthropic_client):
    """max_tokens counts the input and output tokens the server reported (anthropic, sync and stream)."""
    capture()
    claude = anthropic_client
    per_call = INPUT_TOKENS + OUTPUT_TOKENS
    before = sent(llm_server, "/v1/messages")
    with sdk.session("tokens", budget=sdk.Budget(max_tokens=2 * per_call)):
        claude.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=PROMPT)  # type: ignore[arg-type]
        with claude.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=PROMPT) as stream:  # type: ignore[arg-type]
            stream.until_done()
        with pytest.raises(sdk.BudgetExceeded) as raised:
            with claude.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=PROMPT):  # type: ignore[arg-type]
                pass
    assert sent(llm_server, "/v1/messages") - before == 2
    assert (raised.value.limit, raised.value.used) == ("max_tokens", 2 * per_call)


async def test_cost_limit_with_the_async_client(llm_server):
    """max_cost_usd uses the priced cost of the server's usage numbers; the async client is refused the same way."""
    capture()
    per_call = (INPUT_TOKENS * 0.15 + OUTPUT_TOKENS * 0.6) / 1e6  # gpt-4o-mini, USD per million tokens
    before = sent(llm_server, "/v1/chat/completions")
    async with openai.AsyncOpenAI(base_url=llm_server.openai_url, api_key="k", max_retries=0) as client:
        with sdk.session("costly", budget=sdk.Budget(max_cost_usd=per_call * 2.5)) as s:
            for _ in range(3):
                await client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)  # type: ignore[arg-type]
            with pytest.raises(sdk.BudgetExceeded) as raised:
                await client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)  # type: ignore[arg-type]
    assert sent(llm_server, "/v1/chat/completions") - before == 3
    assert raised.value.limit == "max_cost_usd"
    assert raised.value.used == pytest.approx(3 * per_call)
    assert s.usage.cost_usd == pytest.approx(3 * per_call)


def test_warn_mode_lets_calls_through_records_one_event_and_calls_the_callbacks(llm_server, openai_client):
    """on_exceed="warn": every call is sent; the first excess records a session.budget_exceeded event and calls on_budget_exceeded once per limit."""
    seen: list[tuple[str, str]] = []
    captured = capture(on_budget_exceeded=lambda session, error: seen.append((session.name, error.limit)))
    client = openai_client
    before = sent(llm_server, "/v1/chat/completions")
    with sdk.session("warned", budget=sdk.Budget(max_llm_calls=1, max_tokens=100, on_exceed="warn")):
        for _ in range(8):
            chat(client)
    assert sent(llm_server, "/v1/chat/completions") - before == 8
    assert seen == [("warned", "max_llm_calls"), ("warned", "max_tokens")]  # 7 calls: 119 tokens
    root = captured.named("warned")
    limits = [
        e.attributes["session.budget.limit"] for e in root.events if e.name == "session.budget_exceeded"
    ]
    assert limits == ["max_llm_calls", "max_tokens"]
    assert root.attributes["session.budget.exceeded"] == ("max_llm_calls", "max_tokens")
    assert root.attributes["session.state"] == "success"


def test_the_loop_guard_counts_the_same_tool_with_the_same_arguments_in_a_row(openai_client):
    """max_repeats=2: a tool called three times in a row with the same arguments makes the next LLM call raise; other arguments in between reset the count."""
    capture()
    client = openai_client

    @sdk.tool
    def search(query: str) -> str:
        return f"results for {query}"

    with sdk.session("looping", budget=sdk.Budget(max_repeats=2)):
        for query in ("a", "a", "b", "a", "a"):
            search(query)
        chat(client)  # never three in a row: fine
        search("a")
        with pytest.raises(sdk.BudgetExceeded) as raised:
            chat(client)
    assert (raised.value.limit, raised.value.maximum, raised.value.used) == ("max_repeats", 2, 3)


def test_session_budget_setting_applies_to_every_session_unless_it_has_its_own(
    openai_client, monkeypatch, tmp_path
):
    """session_budget (init keyword, environment text or pyproject table) is every session's default; a session's own budget wins."""
    monkeypatch.setenv("SESSIONTRACE_SESSION_BUDGET", "max_llm_calls=1,on_exceed=raise")
    assert load_config().session_budget == sdk.Budget(max_llm_calls=1)
    (tmp_path / "sessiontrace.toml").write_text('[session_budget]\nmax_cost_usd = 0.5\non_exceed = "warn"\n')
    monkeypatch.delenv("SESSIONTRACE_SESSION_BUDGET")
    assert load_config(cwd=tmp_path).session_budget == sdk.Budget(max_cost_usd=0.5, on_exceed="warn")
    capture(session_budget=sdk.Budget(max_llm_calls=1))
    client = openai_client
    with sdk.session("default") as default:
        chat(client)
        with pytest.raises(sdk.BudgetExceeded):
            chat(client)
    with sdk.session("own", budget=sdk.Budget(max_llm_calls=3)) as own:
        for _ in range(3):
            chat(client)
    assert default.budget == sdk.Budget(max_llm_calls=1)
    assert own.usage.llm_calls == 3


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("max_llm_calls=two", "must be a number"),
        ("max_cost=1", "unknown budget field 'max_cost'"),
        ("on_exceed=explode", "'raise' or 'warn'"),
        ("max_tokens=-5", ">= 0"),
    ],
)
def test_bad_budgets_are_config_errors_naming_the_setting(raw, problem):
    """A budget that does not parse is a ConfigError naming session_budget and what is wrong."""
    with pytest.raises(ConfigError, match=f"session_budget.*{problem}"):
        load_config({"session_budget": raw})
    with pytest.raises(ValueError, match="max_errors"):
        sdk.Budget(max_errors=1.5)  # type: ignore[arg-type]


@pytest.mark.subprocess
def test_a_resumed_session_in_a_second_process_inherits_the_usage(llm_server, openai_client, tmp_path):
    """A session that made two calls in one process and is resumed in another with max_llm_calls=3 gets one more call there."""
    script = textwrap.dedent(
        f"""
        import openai, sdk
        sdk.init(exporter="none", data_dir={str(tmp_path / "data")!r})
        client = openai.OpenAI(base_url={llm_server.openai_url!r}, api_key="k", max_retries=0)
        with sdk.session("conversation", session_id="conv-1", resume=True):
            for _ in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
        sdk.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sdk.init(exporter="none", data_dir=str(tmp_path / "data"))
    client = openai_client
    with sdk.session(
        "conversation", session_id="conv-1", resume=True, budget=sdk.Budget(max_llm_calls=3)
    ) as s:
        chat(client)
        with pytest.raises(sdk.BudgetExceeded) as raised:
            chat(client)
    assert s.segment == 2
    assert raised.value.used == 3
    assert json.loads(json.dumps(s.usage._asdict()))["llm_calls"] == 1
