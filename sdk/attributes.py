"""Turning any Python value into a valid OpenTelemetry attribute value."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.util.types import AttributeValue

from sdk.otel_internals import write_attributes as write_attributes

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Other sequences (a range, a custom Sequence) are listed only up to this length, else shown as text.
_MAX_LAZY_ITEMS = 100_000
# Lone surrogates are valid in a Python str but not in UTF-8: OTLP encoding would drop the attribute.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean_text(text: str) -> str:
    """A plain str (not a subclass) that encodes as UTF-8."""
    text = str.__str__(text)
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _text(value: object) -> str:
    try:
        return _clean_text(str(value))
    except Exception:
        try:
            return _clean_text(repr(value))
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return hex(value)


def _truncate(text: str, max_length: int) -> str:
    if len(text) <= max_length:
        return text
    return text[: max_length - 1] + "…" if max_length >= 1 else ""


def to_attribute_value(value: Any, max_length: int) -> AttributeValue:
    """A valid attribute value for anything: scalars pass, homogeneous sequences become lists,
    everything else becomes its text; strings longer than `max_length` are truncated."""
    if type(value) is str and len(value) <= max_length and value.isascii():
        return value  # the common case (names, ids), without the conversion's checks
    try:
        return _convert(value, max_length)
    except Exception:  # an object that defeats even the fallbacks (e.g. a raising __class__)
        return _truncate(f"<unconvertible {type(value).__name__}>", max_length)


def _convert(value: Any, max_length: int) -> AttributeValue:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return int.__index__(value)
        return _truncate(_int_text(int.__index__(value)), max_length)
    if isinstance(value, str):
        return _truncate(_clean_text(value), max_length)
    if isinstance(value, (bytes, bytearray)):
        return _truncate(_clean_text(bytes(value).decode("utf-8", "replace")), max_length)
    items = _items(value) if isinstance(value, Sequence) else None
    if items is not None:
        if not items:
            return []
        if all(isinstance(i, str) for i in items):
            return [_truncate(_clean_text(i), max_length) for i in items]
        if all(type(i) is bool for i in items):
            return items
        if all(type(i) is float for i in items):
            return items
        if all(type(i) is int for i in items) and all(_INT64_MIN <= i <= _INT64_MAX for i in items):
            return items
    return _truncate(_text(value), max_length)


def _items(value: Sequence[Any]) -> list[Any] | None:
    """The items of a sequence, or None when it cannot be listed (or would be huge to list)."""
    try:
        if not isinstance(value, (list, tuple)) and len(value) > _MAX_LAZY_ITEMS:
            return None
        return list(value)
    except Exception:
        return None


def to_attributes(values: Mapping[Any, Any] | None, max_length: int) -> dict[str, AttributeValue]:
    """Convert a mapping of user values; keys become non-empty strings; None values are left out.

    Never raises: a mapping that cannot be iterated gives what could be read before it failed."""
    out: dict[str, AttributeValue] = {}
    try:
        if not values:
            return out
        for key, value in values.items():
            if value is None:
                continue
            name = _clean_text(key) if isinstance(key, str) else _text(key)
            out[name or "_"] = to_attribute_value(value, max_length)
    except Exception:
        pass
    return out
