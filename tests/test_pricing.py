"""The pricing table: shipped data, lookups, overrides, and the cost of a call."""

from __future__ import annotations

import json

import pytest

from sdk.pricing import PricingError, load_overrides, shipped_table, table_for
from sdk.settings import ConfigError, load_config


def test_shipped_table_has_a_date_and_known_models():
    """The shipped table is dated and prices the common models per million tokens."""
    table = shipped_table()
    assert table.as_of
    for model in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5", "claude-haiku-4-5"):
        assert table.price(model) is not None, model


def test_dated_and_prefixed_names_find_their_model():
    """Date suffixes, '-latest' and a router's 'provider/' prefix are ignored in lookups."""
    table = shipped_table()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("claude-sonnet-4-5-20250929") == table.price("claude-sonnet-4-5")
    assert table.price("openai/gpt-4o") == table.price("gpt-4o")
    assert table.price("GPT-4O") == table.price("gpt-4o")


def test_cost_is_tokens_times_price():
    """Cost in USD = (input * input price + output * output price) / 1e6."""
    table = shipped_table()
    price = table.price("gpt-4o")
    assert table.cost("gpt-4o", 1000, 500) == pytest.approx((1000 * price.input + 500 * price.output) / 1e6)
    assert table.cost("gpt-4o", None, None) is None
    assert table.cost("no-such-model", 10, 10) is None
    assert table.cost(None, 10, 10) is None


def test_overrides_from_mapping_and_file(tmp_path):
    """Overrides replace or add models; a file may use the shipped layout or a flat mapping."""
    overrides = load_overrides({"gpt-4o": {"input": 1, "output": 1}, "mine": {"input": 2, "output": 3}})
    table = table_for(overrides)
    assert table.price("gpt-4o").input == 1.0
    assert table.price("mine").output == 3.0
    assert table.price("gpt-4o-mini") == shipped_table().price("gpt-4o-mini")
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"as_of": "2030-01-01", "models": {"mine": {"input": 4, "output": 5}}}))
    from_file = table_for(load_overrides(str(path)))
    assert from_file.price("mine").input == 4.0
    assert from_file.as_of == "2030-01-01"


@pytest.mark.parametrize(
    "bad",
    [
        {"m": {"output": 1}},
        {"m": {"input": -1, "output": 1}},
        {"m": {"input": "cheap", "output": 1}},
        {"m": 3},
        ["m"],
    ],
)
def test_bad_overrides_are_rejected(bad):
    """Prices must be mappings of non-negative numbers."""
    with pytest.raises(PricingError):
        load_overrides(bad)


def test_pricing_setting_errors_name_the_key(tmp_path, monkeypatch):
    """A missing file or a bad mapping is a ConfigError naming `pricing` and where it came from."""
    with pytest.raises(ConfigError, match="pricing"):
        load_config({"pricing": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigError, match="pricing"):
        load_config({"pricing": {"m": {"input": -1}}})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"mine": {"input": 1, "output": 1}}))
    monkeypatch.setenv("SESSIONTRACE_PRICING", str(path))
    config = load_config()
    assert config.pricing.models["mine"].input == 1.0
    assert load_config() == config  # compared by content: re-init sees no change


def test_pricing_file_ships_with_the_package():
    """The table is package data (pyproject.toml) next to the code, readable through importlib.resources."""
    from importlib import resources

    assert (resources.files("sdk") / "data" / "pricing.json").is_file()
