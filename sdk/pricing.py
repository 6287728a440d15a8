"""Model prices, and the cost in USD of an LLM call.

The SDK ships a table (``sdk/data/pricing.json``: USD per million input and output tokens, with
the date the prices were read). The `pricing` setting overrides or extends it: a JSON file's path,
or a mapping ``{model: {"input": USD, "output": USD}}``. A model is found by its exact name, else
by its name without a date suffix (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``,
``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``). A model that is not found has no cost:
its calls are counted in ``sdk.stats().llm_calls_unpriced``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sdk.state import STATE

PER_TOKENS = 1_000_000
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")


class PricingError(ValueError):
    """A pricing table or override that cannot be used (the message says why)."""


class ModelPrice(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float


class PricingTable:
    """Prices by model name, with the date they were read (`as_of`)."""

    __slots__ = ("_cache", "as_of", "models")

    def __init__(self, models: Mapping[str, ModelPrice], as_of: str | None = None) -> None:
        self.models = {name.lower(): price for name, price in models.items()}
        self.as_of = as_of
        self._cache: dict[str, ModelPrice | None] = {}

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or None when the table does not know it."""
        found = self._cache.get(model, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        name = model.strip().lower()
        if "/" in name:  # "openai/gpt-4o", as routers and proxies name models
            name = name.rsplit("/", 1)[1]
        price = self.models.get(name)
        if price is None:
            price = self.models.get(_DATE_SUFFIX.sub("", name))
        if len(self._cache) < 4096:
            self._cache[model] = price
        return price

    def cost(self, model: str | None, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """USD for a call, or None when the model is unknown or no token count is known."""
        if not model or (input_tokens is None and output_tokens is None):
            return None
        price = self.price(model)
        if price is None:
            return None
        return ((input_tokens or 0) * price.input + (output_tokens or 0) * price.output) / PER_TOKENS

    def merged(self, overrides: PricingOverrides | None) -> PricingTable:
        """This table with `overrides` on top (their `as_of`, if they have one, wins)."""
        if overrides is None or not overrides.models:
            return self
        return PricingTable({**self.models, **overrides.models}, overrides.as_of or self.as_of)

    def __repr__(self) -> str:
        return f"<PricingTable {len(self.models)} models, as of {self.as_of}>"


_MISSING = object()


class PricingOverrides:
    """Validated prices from the `pricing` setting (compared by content, so re-init sees no change)."""

    __slots__ = ("as_of", "models", "origin")

    def __init__(self, models: Mapping[str, ModelPrice], as_of: str | None, origin: str) -> None:
        self.models = dict(models)
        self.as_of = as_of
        self.origin = origin

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PricingOverrides) and self.models == other.models and self.as_of == other.as_of
        )

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.models.items())), self.as_of))

    def __repr__(self) -> str:
        return f"<pricing {self.origin}: {len(self.models)} models>"


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PricingError(f"{where} must be a number of USD per million tokens, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise PricingError(f"{where} must be a finite, non-negative number, got {value!r}")
    return number


def parse_models(data: object, origin: str) -> tuple[dict[str, ModelPrice], str | None]:
    """Prices from a table's data: ``{"models": {...}, "as_of": ...}`` or just ``{model: {...}}``."""
    if not isinstance(data, Mapping):
        raise PricingError(f"{origin}: expected a mapping of model names to prices")
    as_of = data.get("as_of")
    models = data.get("models", data)
    if not isinstance(models, Mapping):
        raise PricingError(f"{origin}: 'models' must be a mapping of model names to prices")
    out: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        if name in ("as_of", "currency", "unit", "source") and models is data:
            continue
        if not isinstance(name, str) or not name.strip():
            raise PricingError(f"{origin}: model names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping) or "input" not in entry:
            raise PricingError(
                f"{origin}: the price of {name!r} must be a mapping with 'input' and 'output' "
                "(USD per million tokens)"
            )
        out[name.strip().lower()] = ModelPrice(
            _number(entry["input"], f"{origin}: {name}.input"),
            _number(entry.get("output", 0.0), f"{origin}: {name}.output"),
        )
    return out, str(as_of) if as_of is not None else None


def load_overrides(value: object) -> PricingOverrides:
    """The `pricing` setting's value: a JSON file's path, or a mapping of prices. Raises PricingError."""
    if isinstance(value, PricingOverrides):
        return value
    if isinstance(value, Mapping):
        models, as_of = parse_models(value, "pricing")
        return PricingOverrides(models, as_of, "mapping")
    if isinstance(value, (str, os.PathLike)):
        path = Path(os.fspath(value)).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PricingError(f"cannot read {path} ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise PricingError(f"{path} is not valid JSON ({exc})") from None
        models, as_of = parse_models(data, str(path))
        return PricingOverrides(models, as_of, str(path))
    raise PricingError("expected a JSON file's path or a mapping {model: {input: USD, output: USD}}")


def shipped_table() -> PricingTable:
    """The table shipped with the SDK (``sdk/data/pricing.json``), read once."""

    def read() -> PricingTable:
        from importlib import resources

        data = json.loads((resources.files("sdk") / "data" / "pricing.json").read_text(encoding="utf-8"))
        models, as_of = parse_models(data, "sdk/data/pricing.json")
        return PricingTable(models, as_of)

    return STATE.cached("shipped pricing", None, read)


def table_for(overrides: Any) -> PricingTable:
    """The shipped table with the `pricing` setting's overrides on top (cached per overrides)."""
    key = overrides if isinstance(overrides, PricingOverrides) else None
    return STATE.cached("pricing", key, lambda: shipped_table().merged(key), limit=16)
