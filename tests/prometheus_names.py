"""OTLP metric names and attributes as Prometheus sees them behind an OpenTelemetry collector.

A port of the rules of ``prometheus/otlptranslator`` (commit 51da7739, after v1.0.0:
metric_namer.go, unit_namer.go, label_namer.go), which the collector's ``prometheus`` and
``prometheusremotewrite`` exporters and Prometheus's own OTLP receiver use, for their default
strategy ``UnderscoreEscapingWithSuffixes``: a name's characters outside ``[a-zA-Z0-9:]`` become
``_`` (runs collapse), the unit adds a suffix (``s`` -> ``seconds``, ``By`` -> ``bytes``, ...;
none for ``1`` or a unit in braces such as ``{token}``; any other unit as it is, case kept), a
monotonic sum adds ``_total``, a gauge of unit ``1`` adds ``_ratio``, and a histogram becomes
``_bucket`` (with ``le``), ``_sum`` and ``_count`` series. Attribute names become labels with
``.`` and other characters outside ``[a-zA-Z0-9_]`` replaced by ``_``.

No collector binary can be had offline here, so the dashboard's test uses this port; the README
of examples/collector says which collector options it assumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_MAIN_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_NAME_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _tokens(text: str) -> list[str]:
    return [token for token in _NAME_SPLIT.split(text) if token]


def unit_suffixes(unit: str) -> list[str]:
    """unit_namer.go: the name tokens a unit adds (none for ``1`` or a unit with braces)."""
    if not unit or "{" in unit or "}" in unit:
        return []
    main, _, per = unit.partition("/")
    tokens: list[str] = []
    main_word = _MAIN_UNITS.get(main, main)
    if main_word:
        tokens += _tokens(main_word)
    if per:
        tokens += ["per", *_tokens(_PER_UNITS.get(per, per))]
    return tokens


def metric_name(name: str, unit: str, kind: str, monotonic: bool = False) -> str:
    """metric_namer.go `normalizeName` for a metric of `kind` (``sum``, ``gauge``, ``histogram``)."""
    tokens = _tokens(name)
    for suffix in unit_suffixes(unit):
        if suffix not in tokens:
            tokens.append(suffix)
    if kind == "sum" and monotonic:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    elif kind == "gauge" and unit == "1" and "ratio" not in tokens:
        tokens.append("ratio")
    joined = "_".join(tokens)
    return f"_{joined}" if joined[:1].isdigit() else joined


def label_name(attribute: str) -> str:
    """label_namer.go: an attribute's name as a label."""
    label = _LABEL_BAD.sub("_", attribute)
    return f"key_{label}" if label[:1].isdigit() else label


@dataclass
class Series:
    """The Prometheus series a metric becomes, with the labels its points carry."""

    names: set[str]
    labels: set[str] = field(default_factory=set)


def series(name: str, unit: str, kind: str, monotonic: bool, attributes: set[str]) -> Series:
    """Every series name of one OTLP metric and its labels (``le`` for a histogram's buckets)."""
    base = metric_name(name, unit, kind, monotonic)
    labels = {label_name(a) for a in attributes}
    if kind == "histogram":
        return Series({f"{base}_bucket", f"{base}_sum", f"{base}_count"}, labels | {"le"})
    return Series({base}, labels)
