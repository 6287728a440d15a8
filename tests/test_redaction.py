"""Redaction of captured content, decorator arguments, headers and URLs; nothing secret is exported."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest

import sdk
from sdk.redaction import REDACTED, Redactor
from sdk.settings import ConfigError, load_config
from sdk.testing import capture

OPENAI_KEY = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"
ANTHROPIC_KEY = "sk-ant-api03-ZyxwvutsrqponmlkjihgfedcbaZYXWVUT-123456"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"my key is {OPENAI_KEY}", OPENAI_KEY),
        (f"use {ANTHROPIC_KEY} please", ANTHROPIC_KEY),
        ("Authorization: Bearer abc.DEF-123_456~xyz", "abc.DEF-123_456~xyz"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ012345", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        ('{"api_key": "hunter2hunter2"}', "hunter2hunter2"),
        ("password=correct-horse-battery", "correct-horse-battery"),
        ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0NTY3.SflKxwRJSMeKKF2QT4fwpM", "eyJhbGciOiJIUzI1"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
    ],
)
def test_builtin_patterns(text, secret):
    """Each built-in pattern replaces the secret and keeps the words around it."""
    redacted = Redactor().text(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_ordinary_text_is_unchanged():
    """Text without secrets passes as it is (a word like 'token' alone is not a secret)."""
    text = "The token count was 42; ask for a skeleton key and a bearer of news."
    assert Redactor().text(text) == text


def test_user_patterns_callable_and_size_limit():
    """User regexes and a callable apply after the built-ins; text is cut to the size limit."""
    redactor = Redactor(["builtin", r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"], str.upper, max_length=40)
    out = redactor.text(f"card 1234-5678-9012-3456 key {OPENAI_KEY}")
    assert "1234" not in out
    assert OPENAI_KEY.upper() not in out
    assert out.startswith("CARD [REDACTED] KEY [REDACTED]")
    long = redactor.text("x" * 100)
    assert long.startswith("X" * 40)
    assert "60 more characters" in long


def test_builtins_can_be_turned_off():
    """An empty pattern list turns the built-in patterns off."""
    assert Redactor([]).text(OPENAI_KEY) == OPENAI_KEY


def test_values_keep_their_shape_and_secret_keys_lose_their_values():
    """Nested values keep their shape; entries under secret-named keys (headers, arguments, any mapping) are replaced whole; URL passwords and credential parameters go."""
    redactor = Redactor()
    assert redactor.value({"a": [OPENAI_KEY, 1, None], "b": {"c": f"x {OPENAI_KEY}"}}) == {
        "a": [REDACTED, 1, None],
        "b": {"c": f"x {REDACTED}"},
    }
    headers = redactor.value(
        {"Authorization": "Bearer abc", "x-api-key": "plain", "Content-Type": "application/json"}
    )
    assert headers == {"Authorization": REDACTED, "x-api-key": REDACTED, "Content-Type": "application/json"}
    url = redactor.text("https://user:pa55word@example.com/v1?api_key=abc123&q=weather&token=zzzz")
    assert "pa55word" not in url
    assert "abc123" not in url
    assert "zzzz" not in url
    assert "q=weather" in url


def test_redaction_settings_are_validated(monkeypatch):
    """A bad regex is a ConfigError naming the setting; the environment takes a JSON list."""
    with pytest.raises(ConfigError, match="redact_patterns"):
        load_config({"redact_patterns": ["("]})
    with pytest.raises(ConfigError, match="redactor"):
        load_config({"redactor": "not callable"})
    monkeypatch.setenv("SESSIONTRACE_REDACT_PATTERNS", '["builtin", "secret-\\\\d+"]')
    assert load_config().redact_patterns == ("builtin", r"secret-\d+")


def test_decorator_capture_records_redacted_arguments_and_result():
    """@sdk.tool(capture=True) records arguments (without self) and the return value, redacted: secret-named arguments and keys whole, secret-looking text by pattern."""
    captured = capture()

    class Tools:
        @sdk.tool(capture=True)
        def lookup(self, city: str, api_key: str) -> dict:
            return {"city": city, "token": "opaque-value", "note": f"Bearer {OPENAI_KEY}"}

    Tools().lookup("Paris", api_key="hunter2-not-a-pattern")
    attrs = captured.named("execute_tool lookup").attributes
    assert json.loads(attrs["gen_ai.tool.call.arguments"]) == {"city": "Paris", "api_key": REDACTED}
    assert json.loads(attrs["gen_ai.tool.call.result"]) == {
        "city": "Paris",
        "token": REDACTED,
        "note": f"Bearer {REDACTED}",
    }


def test_decorator_capture_follows_capture_content():
    """Without capture=, decorators record arguments only when capture_content is on; False never."""

    @sdk.task
    def follows(x):
        return x * 2

    @sdk.task(capture=False)
    def never(x):
        return x

    captured = capture()
    follows(1)
    assert "sessiontrace.input" not in captured.named("follows").attributes
    captured = capture(capture_content=True)
    follows(2)
    never(3)
    attrs = captured.named("follows").attributes
    assert json.loads(attrs["sessiontrace.input"]) == {"x": 2}
    assert json.loads(attrs["sessiontrace.output"]) == 4
    assert "sessiontrace.input" not in captured.named("never").attributes


def test_decorator_capture_of_coroutines_and_generators():
    """Async functions record their awaited result; generators record arguments only."""
    import asyncio

    captured = capture(capture_content=True)

    @sdk.agent
    async def answer(question):
        return "42"

    @sdk.task
    def numbers(n):
        yield from range(n)

    asyncio.run(answer("life?"))
    assert list(numbers(3)) == [0, 1, 2]
    agent = captured.named("invoke_agent answer").attributes
    assert json.loads(agent["sessiontrace.output"]) == "42"
    task = captured.named("numbers").attributes
    assert json.loads(task["sessiontrace.input"]) == {"n": 3}
    assert "sessiontrace.output" not in task


def _exported_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def _make_calls(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    @sdk.tool(capture=True)
    def remember(secret: str) -> str:
        return f"stored {secret}"

    prompt = [{"role": "user", "content": f"Weather in Paris? my key: {OPENAI_KEY}"}]
    with sdk.session("secrets"):
        client.chat.completions.create(model="gpt-4o-mini", messages=prompt)
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=prompt, stream=True):
            pass
        client.responses.create(model="gpt-4o-mini", input=prompt[0]["content"], instructions=OPENAI_KEY)
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=10, system=f"key {ANTHROPIC_KEY}", messages=prompt
        )
        with claude.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=prompt) as stream:
            stream.until_done()
        remember(ANTHROPIC_KEY)


def test_api_key_never_exported_with_capture_on(openai_client, anthropic_client, tmp_path):
    """With capture on, the OTLP-JSON files hold the redacted content and never the keys."""
    data_dir = tmp_path / "data"
    sdk.init(exporter="file", data_dir=str(data_dir), capture_content=True, console_summary=False)
    _make_calls(openai_client, anthropic_client)
    sdk.shutdown()
    exported = _exported_bytes(data_dir)
    assert b"gen_ai.input.messages" in exported
    assert b"Weather in Paris" in exported
    assert REDACTED.encode() in exported
    assert OPENAI_KEY.encode() not in exported
    assert ANTHROPIC_KEY.encode() not in exported
    assert b"sk-proj" not in exported
    assert b"sk-ant" not in exported


def test_nothing_of_the_content_exported_with_capture_off(openai_client, anthropic_client, tmp_path):
    """With capture off, no byte of the prompts or answers is exported (the decorator asked explicitly)."""
    data_dir = tmp_path / "data"
    sdk.init(exporter="file", data_dir=str(data_dir), console_summary=False)
    _make_calls(openai_client, anthropic_client)
    sdk.shutdown()
    exported = _exported_bytes(data_dir)
    assert b"chat gpt-4o-mini" in exported
    assert b"Paris" not in exported
    assert b"Hello!" not in exported
    assert b"gen_ai.input.messages" not in exported
    assert OPENAI_KEY.encode() not in exported
    assert ANTHROPIC_KEY.encode() not in exported
