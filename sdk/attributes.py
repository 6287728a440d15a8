"""Turning any Python value into a valid OpenTelemetry attribute value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.util.types import AttributeValue

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _truncate(text: str, max_length: int) -> str:
    return text if len(text) <= max_length else text[: max(max_length - 1, 0)] + "…"


def to_attribute_value(value: Any, max_length: int) -> AttributeValue:
    """A valid attribute value for anything: scalars pass, homogeneous sequences become lists,
    everything else becomes its text; strings longer than `max_length` are truncated."""
    if isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else _truncate(str(value), max_length)
    if isinstance(value, str):
        return _truncate(value, max_length)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
        if items and all(isinstance(i, str) for i in items):
            return [_truncate(i, max_length) for i in items]
        for kind in (bool, int, float):
            if items and all(type(i) is kind for i in items):
                if kind is int and not all(_INT64_MIN <= i <= _INT64_MAX for i in items):
                    break
                return items
    if isinstance(value, (bytes, bytearray)):
        return _truncate(bytes(value).decode("utf-8", "replace"), max_length)
    return _truncate(_text(value), max_length)


def to_attributes(values: Mapping[Any, Any] | None, max_length: int) -> dict[str, AttributeValue]:
    """Convert a mapping of user values; keys become non-empty strings."""
    if not values:
        return {}
    out: dict[str, AttributeValue] = {}
    for key, value in values.items():
        name = key if isinstance(key, str) else _text(key)
        if value is None:
            continue
        out[name or "_"] = to_attribute_value(value, max_length)
    return out
