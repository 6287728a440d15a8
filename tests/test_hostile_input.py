"""Hostile local input: config files and environment variables, and user text on a terminal."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import sdk
from sdk.cli import main
from sdk.display import printable
from sdk.export.summary import SessionSummary, format_summary
from sdk.settings import MAX_CONFIG_FILE_BYTES, ConfigError, load_config
from sdk.store import Segment, SessionRecord, Usage, open_store

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\r\nsessiontrace: session 'admin' forged success\u202e"


def test_config_file_that_is_not_a_regular_file_is_a_config_error(monkeypatch):
    """SESSIONTRACE_CONFIG_FILE=/dev/zero is refused at once with a ConfigError (it is never read)."""
    monkeypatch.setenv("SESSIONTRACE_CONFIG_FILE", "/dev/zero")
    with pytest.raises(ConfigError, match=r"config_file '/dev/zero'.*is not a regular file"):
        load_config()


def test_oversized_config_file_is_a_config_error(tmp_path):
    """A config file over the size limit is a ConfigError naming the limit; a normal one loads."""
    big = tmp_path / "sessiontrace.toml"
    big.write_text('service_name = "x"\n' + "#" * (MAX_CONFIG_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(cwd=tmp_path)
    big.write_text('service_name = "fine"\n')
    assert load_config(cwd=tmp_path).service_name == "fine"


def test_unknown_sessiontrace_variable_warns_once_with_the_closest_name(monkeypatch, caplog):
    """A SESSIONTRACE_* variable naming no setting warns once, suggesting the closest variable; known ones and the test switch do not warn."""
    monkeypatch.setenv("SESSIONTRACE_EXPORTR", "file")
    monkeypatch.setenv("SESSIONTRACE_NONSENSE", "1")
    monkeypatch.setenv("SESSIONTRACE_SERVICE_NAME", "ok")
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        load_config()
        load_config()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("SESSIONTRACE_EXPORTR" in m for m in messages) == 1
    assert any("did you mean SESSIONTRACE_EXPORTER?" in m for m in messages)
    assert sum("SESSIONTRACE_NONSENSE" in m for m in messages) == 1
    assert not any("SESSIONTRACE_SERVICE_NAME" in m or "RAISE_INTERNAL" in m for m in messages)


@pytest.mark.parametrize("value", ["x=%ZZ", "x=abc%", "x%4=1", "authorization=Bearer%2"])
def test_malformed_percent_encoding_in_headers_is_a_config_error(monkeypatch, value):
    """OTEL_EXPORTER_OTLP_HEADERS with a '%' not followed by two hex digits is a ConfigError that shows no header value."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", value)
    with pytest.raises(ConfigError, match="malformed percent-encoding") as raised:
        load_config()
    assert "Bearer" not in str(raised.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x=a%20b")
    assert load_config().headers == {"x": "a b"}


def test_printable_escapes_every_control_character():
    """printable() writes C0/C1 controls, DEL, line separators and bidi overrides as escapes and keeps other text."""
    assert printable("héllo wörld ✓") == "héllo wörld ✓"
    out = printable(EVIL)
    assert out.isprintable()
    assert "\\x1b]0;pwned\\x07" in out
    assert "\\r\\n" in out
    assert "\\u202e" in out
    assert printable("\x7f\x85\u2028") == "\\x7f\\x85\\u2028"


def _store_with_evil_records(data_dir: Path) -> None:
    store = open_store("sqlite", data_dir, None)
    assert store is not None
    now = time.time()
    evil = SessionRecord(
        id="evil-1",
        name=EVIL,
        trace_id="ab" * 16,
        user_id=f"user{EVIL}",
        tags=(f"tag{EVIL}",),
        segments=(
            Segment("cd" * 8, 1, f"host{EVIL}:1", now - 5, now, "fail", f"reason{EVIL}", now, Usage(spans=2)),
        ),
    )
    store.put([evil])
    store.close()


def _assert_terminal_safe(text: str) -> None:
    for char in ("\x1b", "\x07", "\r", "\u202e"):
        assert char not in text, repr(char)
    assert not any(line.startswith("sessiontrace: session 'admin'") for line in text.splitlines())


def test_sessions_list_and_show_escape_control_characters(tmp_path, capsys):
    """`sessions list` and `sessions show` print names, users, tags, owners and reasons from the store with control characters escaped: no escape sequence reaches the terminal and no line can be forged."""
    data_dir = tmp_path / "data"
    _store_with_evil_records(data_dir)
    store = f"sqlite:{data_dir / 'sessions.db'}"
    for args in (["list"], ["show", "evil-1"], ["end", "evil-1"]):
        code = main(["sessions", *args, "--store", store])
        out, err = capsys.readouterr()
        assert code == 0, err
        _assert_terminal_safe(out + err)
        assert "evil" in out


def test_console_summary_escapes_control_characters(capsys):
    """The console summary line of a session whose name and end reason hold escape sequences is one line with them escaped."""
    line = format_summary(SessionSummary("id-1", EVIL, "fail", 1.0, 3, f"reason{EVIL}"))
    assert "\n" not in line
    _assert_terminal_safe(line)
    sdk.init(exporter="none", console_summary=True)
    sdk.start_session(EVIL).end("fail", reason=EVIL)
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    _assert_terminal_safe(err)
