"""`python -m benchmarks` options: what they accept and the clear error for what they do not."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import parse_args


def test_sdk_settings_are_collected_in_order_and_the_last_of_a_key_wins():
    """Repeated --sdk-setting options become one dict; a value may hold '='; a repeated key keeps its last value."""
    args = parse_args(
        ["--only", "session_start_end", "--sdk-setting", "session_store=none", "--sdk-setting",
         "live_sessions=false", "--sdk-setting", "session_store=memory", "--sdk-setting", "redact_patterns=a=b"]
    )  # fmt: skip
    assert args.sdk_setting == {"session_store": "memory", "live_sessions": "false", "redact_patterns": "a=b"}


@pytest.mark.parametrize("item", ["session_store", "=none", " =x"])
def test_an_sdk_setting_without_key_and_value_is_refused_by_name(item, capsys):
    """A --sdk-setting that is not KEY=VALUE stops the run with an error quoting it."""
    with pytest.raises(SystemExit):
        parse_args(["--sdk-setting", item])
    assert f"--sdk-setting wants KEY=VALUE, got {item!r}" in capsys.readouterr().err
