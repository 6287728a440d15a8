"""Settings: declared once, resolved in layers, each value remembering where it came from.

Layers, lowest to highest: defaults < config file (``[tool.sessiontrace]`` in the nearest
``pyproject.toml``, or a ``sessiontrace.toml``) < environment (``SESSIONTRACE_*`` and the
standard ``OTEL_*``) < ``init()`` keywords < per-session overrides.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import stat
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeAlias, runtime_checkable

from opentelemetry.sdk.trace import SpanProcessor

from sdk import dialects
from sdk.budget import Budget
from sdk.display import mask_url
from sdk.trust import PRIVATE, TrustRules

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def _span_exporter_class() -> type[SpanExporter]:
    # Imported when a config is resolved, not when sdk is imported (import time is budgeted).
    from opentelemetry.sdk.trace.export import SpanExporter

    return SpanExporter


Layer = Literal["default", "file", "env", "init", "session"]
Exporter: TypeAlias = "str | SpanExporter | tuple[str | SpanExporter, ...]"
"""The `exporter` setting: one destination (a name or an instance) or a tuple of them."""

MAX_CONFIG_FILE_BYTES = 1024 * 1024
"""A config file larger than this is refused (a settings file is a few hundred bytes)."""
INTERNAL_ENV = frozenset({"SESSIONTRACE_RAISE_INTERNAL_ERRORS", "SESSIONTRACE_HIDE_OTEL_INTERNALS"})
"""SESSIONTRACE_* variables that name no setting but are read (by the SDK's own test suite and
benchmarks: docs/compatibility.md)."""
EXPORTER_NAMES = ("auto", "otlp", "file", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")
EXPORT_MODES = ("auto", "stamp", "own")
DEFAULT_OTLP_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"


class ConfigError(ValueError):
    """A setting has a bad value. The message names the key, the value and the layer it came from."""

    def __init__(self, key: str, value: object, source: Source, problem: str) -> None:
        self.key = key
        self.value = value
        self.source = source
        self.problem = problem
        shown = "" if value is _NO_VALUE else f" {_show(value)}"
        super().__init__(f"sessiontrace config: {key}{shown} (from {source}): {problem}")


_NO_VALUE: Any = object()
_SHOW_MAX = 200


def _show_exc(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = type(exc).__name__
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _show(value: object) -> str:
    """repr() for messages: never raises (a broken __repr__, an int too long to print), never huge."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


class Source(NamedTuple):
    """Where a setting's value came from: its layer, and which file, variable or keyword."""

    layer: Layer
    detail: str = ""

    def __str__(self) -> str:
        if self.detail.startswith(self.layer):  # "init(service_name=...)", not "init init(...)"
            return self.detail
        return f"{self.layer} {self.detail}".strip()


class _Invalid(Exception):
    """Raised by a parser; turned into a ConfigError that names key, value and layer."""


# ---------------------------------------------------------------------------------------------
# Parsers: each takes a value from any layer (text from env, TOML values, Python objects from
# init()) and returns the typed value, or raises _Invalid with what was expected.

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _optional_bool(value: object) -> bool | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return _bool(value)


def _int_at_least(minimum: int, maximum: int = sys.maxsize) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise _Invalid("expected an integer")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _Invalid("expected an integer") from None
        if not isinstance(value, int):
            raise _Invalid("expected an integer")
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}")
        if value > maximum:
            raise _Invalid(f"must be at most {maximum}")
        return int.__index__(value)  # a plain int, also for int subclasses

    return parse


def _number(value: object, expected: str) -> float:
    """A number given as such or as text (not a bool); `_Invalid(expected)` otherwise."""
    if isinstance(value, bool):
        raise _Invalid(expected)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid(expected) from None
    if not isinstance(value, (int, float)):
        raise _Invalid(expected)
    return float(value)


def _is_off(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off"))


def _seconds(value: object, scale: float = 1.0) -> float:
    seconds = _number(value, "expected a number of seconds") * scale
    if not math.isfinite(seconds) or seconds < 0:
        raise _Invalid("must be a finite, non-negative number of seconds")
    if seconds > threading.TIMEOUT_MAX:  # Event.wait() and Thread.join() refuse longer timeouts
        raise _Invalid(f"must be at most {threading.TIMEOUT_MAX:.0f} seconds")
    return seconds


def _optional_positive_seconds(value: object) -> float | None:
    if _is_off(value):
        return None
    seconds = _seconds(value)
    if seconds <= 0:
        raise _Invalid("must be a positive number of seconds (or none to turn it off)")
    return seconds


def _fraction(value: object) -> float:
    fraction = _number(value, "expected a number from 0 to 1")
    if not 0.0 <= fraction <= 1.0:
        raise _Invalid("expected a number from 0 to 1")
    return fraction


def _optional_usd(value: object) -> float | None:
    if _is_off(value):
        return None
    usd = _number(value, "expected an amount in USD (or none to turn it off)")
    if not math.isfinite(usd) or usd < 0:
        raise _Invalid("expected a finite, non-negative amount in USD (or none to turn it off)")
    return usd


def _millis(value: object) -> float:
    return _seconds(value, scale=0.001)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("expected a non-empty string")
    text = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _Invalid("must not contain control characters")
    if _SURROGATES.search(text):
        raise _Invalid("must be valid Unicode text (it contains a lone surrogate)")
    return str(text)


def _path(value: object) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _Invalid("expected a path")
    return Path(value.strip())


def _optional_path(value: object) -> Path | None:
    return None if value is None else _path(value)


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected an http:// or https:// URL")
    text = value.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _Invalid(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("expected an http:// or https:// URL with a host, e.g. http://localhost:4318")
    if any(ord(c) <= 32 for c in text) or port == 0:
        raise _Invalid("not a valid URL")
    return text


def _append_traces_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/traces"))


def _traces_url(value: object) -> str:
    """An OTLP/HTTP endpoint given as a base URL gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does."""
    url = _url(value)
    if urllib.parse.urlsplit(url).path in ("", "/"):
        return _append_traces_path(url)
    return url


def _base_url(value: object) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT: `/v1/traces` is appended to whatever path it has (the OTLP spec)."""
    return _append_traces_path(_url(value))


def _optional_traces_url(value: object) -> str | None:
    return None if value is None else _traces_url(value)


def _split_pairs(text: str, *, what: str) -> list[tuple[str, str]]:
    """``k=v,k2=v2`` (W3C baggage style, as the OTEL_* variables): names and values percent-decoded."""
    items = []
    for member in text.split(","):
        if not member.strip():
            continue
        key, sep, val = member.partition("=")
        if not sep:
            raise _Invalid(f"expected {what} as key=value pairs separated by commas")
        if _BAD_PERCENT.search(member):
            raise _Invalid(f"malformed percent-encoding in {what} (a '%' must be followed by two hex digits)")
        items.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(val.strip())))
    return items


_BAD_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")


def _key_values(value: object, *, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` (see _split_pairs) or a mapping of strings."""
    items: list[tuple[object, object]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = list(_split_pairs(value, what=what))
    else:
        raise _Invalid(f"expected {what} as a mapping or a 'key=value,key2=value2' string")
    result: dict[str, str] = {}
    for key, val in items:
        if not isinstance(key, str) or not key.strip() or any(c in key for c in " \t\r\n,="):
            raise _Invalid(f"{what} key {_show(key)} is not a valid name")
        if not isinstance(val, str):
            raise _Invalid(f"{what} value for {key!r} must be a string")
        if any(c in val for c in "\r\n\x00"):
            raise _Invalid(f"{what} value for {key!r} must not contain line breaks")
        result[str(key.strip())] = str(val)
    return result


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _headers(value: object) -> dict[str, str]:
    """HTTP headers: names must be HTTP tokens, values Latin-1 text without control characters.

    Messages never show a value (they are credentials) nor a name that is not a valid token (a
    mistyped ``Authorization: Bearer ...`` puts the credential into the name)."""
    items: list[tuple[object, object]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = list(_split_pairs(value, what="headers"))
    else:
        raise _Invalid("expected headers as a mapping or a 'key=value,key2=value2' string")
    result: dict[str, str] = {}
    for name, val in items:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name.strip()):
            raise _Invalid("a header name is not a valid HTTP header name (a token such as x-api-key)")
        key = name.strip().lower()
        if not isinstance(val, str):
            raise _Invalid(f"the value of header {key!r} must be a string")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 or ord(c) > 255 for c in val):
            raise _Invalid(
                f"the value of header {key!r} has control or non-Latin-1 characters (HTTP cannot send it)"
            )
        result[key] = str(val)
    return result


def _resource_attributes(value: object) -> dict[str, str]:
    if isinstance(value, Mapping):
        value = {k: v if isinstance(v, str) else _scalar_text(k, v) for k, v in value.items()}
    return _key_values(value, what="resource attributes")


def _scalar_text(key: object, value: object) -> str:
    if isinstance(value, (bool, int, float)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    raise _Invalid(f"resource attribute {key!r} must be a string, number or boolean")


def _one_exporter(value: object) -> str | SpanExporter:
    if isinstance(value, _span_exporter_class()):
        return value
    if isinstance(value, str) and value.strip().lower() in EXPORTER_NAMES:
        return value.strip().lower()
    raise _Invalid(
        f"expected one of {', '.join(EXPORTER_NAMES)}, an OpenTelemetry SpanExporter instance, "
        "or a list of them (e.g. otlp,file)"
    )


def _exporter(value: object) -> Exporter:
    """One destination, or several (a list, or names separated by commas): each gets every span."""
    items: list[object]
    if isinstance(value, str) and "," in value:
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return _one_exporter(value)
    parsed: list[str | SpanExporter] = []
    for item in items:
        one = _one_exporter(item)
        if any(one is p or (isinstance(one, str) and one == p) for p in parsed):
            continue
        parsed.append(one)
    if not parsed:
        raise _Invalid("expected at least one destination")
    if len(parsed) > 1 and any(p in ("none", "auto") for p in parsed):
        raise _Invalid("none and auto cannot be combined with other destinations; name them (e.g. otlp,file)")
    return parsed[0] if len(parsed) == 1 else tuple(parsed)


def _otel_exporter(value: object) -> Exporter:
    """OTEL_TRACES_EXPORTER: the standard names this SDK understands (a comma-separated list)."""
    names = [part.strip().lower() for part in _text(value).split(",") if part.strip()]
    if not names or any(n not in ("otlp", "console", "none") for n in names):
        raise _Invalid("sessiontrace understands otlp, console or none here (or a comma-separated list)")
    return _exporter(names)


def _export_mode(value: object) -> str:
    text = _text(value).lower()
    if text not in EXPORT_MODES:
        raise _Invalid(f"expected one of {', '.join(EXPORT_MODES)}")
    return text


def _protocol(value: object) -> str:
    text = _text(value).lower()
    if text == "http/json":
        raise _Invalid("http/json is not supported by OpenTelemetry's Python exporters; use http/protobuf")
    if text not in PROTOCOLS:
        raise _Invalid(f"expected one of {', '.join(PROTOCOLS)}")
    return text


def _processors(value: object) -> tuple[SpanProcessor, ...]:
    if isinstance(value, SpanProcessor):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(p, SpanProcessor) for p in value):
        return tuple(value)
    raise _Invalid("expected a SpanProcessor or a list of SpanProcessor instances")


def _dialects(value: object) -> tuple[str, ...]:
    try:
        return dialects.parse(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _not_disabled(value: object) -> bool:
    return not _bool(value)


STORE_NAMES = ("sqlite", "memory", "none")


@runtime_checkable
class StoreLike(Protocol):
    """What a `session_store` instance must have (a `sdk.store.SessionStore`; this layer does not
    import the stores)."""

    def begin_segment(self, record: Any, *, resume: bool) -> Any: ...

    def update(self, updates: Any) -> None: ...

    def get(self, session_id: str) -> Any: ...


def _session_store(value: object) -> Any:
    """`sqlite`, `sqlite:PATH`, `memory`, `none`, a ``redis://`` / ``rediss://`` URL, or a SessionStore."""
    if isinstance(value, StoreLike):
        return value
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(
            "expected sqlite, sqlite:PATH, memory, none, a redis:// or rediss:// URL, "
            "or (as an init() keyword) a SessionStore instance"
        )
    text = value.strip()
    lowered = text.lower()
    if lowered in STORE_NAMES:
        return lowered
    if lowered.startswith("sqlite:"):
        if not text[len("sqlite:") :].strip() or "\x00" in text:
            raise _Invalid(
                "sqlite:PATH needs a file path after the colon, e.g. sqlite:/var/lib/app/sessions.db"
            )
        return "sqlite:" + text[len("sqlite:") :].strip()
    if lowered.startswith(("redis://", "rediss://", "unix://")):
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise _Invalid(f"not a valid Redis URL ({exc})") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise _Invalid("a Redis URL needs a host, e.g. redis://localhost:6379/0")
        return text
    raise _Invalid(
        "expected sqlite, sqlite:PATH, memory, none, or a redis:// or rediss:// URL "
        "(e.g. redis://localhost:6379/0)"
    )


def _callbacks(value: object) -> tuple[Callable[..., Any], ...]:
    if value is None:
        return ()
    if callable(value):
        return (value,)
    if isinstance(value, (list, tuple)) and all(callable(c) for c in value):
        return tuple(value)
    raise _Invalid("expected a callable taking the Session, or a list of them")


INSTRUMENTABLE = ("openai", "anthropic", "openai_agents", "langgraph")
"""The libraries the SDK can instrument: LLM clients, then agent frameworks (docs/instrumentation.md;
sdk.instrumentation.LLM_LIBRARIES + FRAMEWORKS: a test keeps them equal)."""


def _instrument(value: object) -> tuple[str, ...]:
    """`all`, `none`, or library names (a list, or a comma-separated string)."""
    names: list[object]
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return INSTRUMENTABLE
        if text in ("none", ""):
            return ()
        names = [n.strip() for n in text.split(",") if n.strip()]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise _Invalid("expected all, none, or a list of library names")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in INSTRUMENTABLE:
            raise _Invalid(
                f"unknown library {_show(name)}; supported: {', '.join(INSTRUMENTABLE)} (or all, none)"
            )
        if name.strip().lower() not in out:
            out.append(name.strip().lower())
    return tuple(out)


SESSION_SOURCES = (
    "autogen.topic",
    "langgraph.thread_id",
    "openai_agents.group_id",
    "openai_agents.session",
    "openai_agents.conversation_id",
)
"""Framework conversation ids the `session_from` setting can make session ids
(sdk.instrumentation.framework_sessions.SOURCES: a test keeps them equal)."""


def _session_from(value: object) -> tuple[str, ...]:
    """Names from SESSION_SOURCES (a list, or text separated by commas), or `none`."""
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return ()
    names = _names(value)
    for name in names:
        if name not in SESSION_SOURCES:
            raise _Invalid(f"unknown source {_show(name)}; known: {', '.join(SESSION_SOURCES)} (or none)")
    return names


def _list_items(value: object, what: str, separators: str) -> list[object]:
    """The items of a list setting: a list, a JSON list, or text split at `separators` (a regex)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [part.strip() for part in re.split(separators, text) if part.strip()]
        import json

        try:
            parsed = json.loads(text)
        except ValueError:
            raise _Invalid(f"expected a JSON list of {what}") from None
        if not isinstance(parsed, list):
            raise _Invalid(f"expected a JSON list of {what}")
        return parsed
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise _Invalid(f"expected a list of {what}")


def _redact_patterns(value: object) -> tuple[str, ...]:
    """Regular expressions (`builtin` names the built-in set): a list, a JSON list, or one per line."""
    if isinstance(value, (set, frozenset)):
        raise _Invalid("expected a list of regular expressions (their order matters)")
    items = _list_items(value, "regular expressions", r"\n")
    out: list[str] = []
    for item in items:
        if isinstance(item, re.Pattern):
            item = item.pattern
        if not isinstance(item, str) or not item:
            raise _Invalid(f"{_show(item)} is not a regular expression (expected a non-empty string)")
        if item != "builtin":
            try:
                re.compile(item)
            except re.error as exc:
                raise _Invalid(f"{item!r} is not a valid regular expression ({exc})") from None
        out.append(str(item))
    return tuple(out)


def _redactor(value: object) -> Callable[[str], str] | None:
    if value is None:
        return None
    if callable(value):
        return value
    raise _Invalid("expected a callable that takes a string and returns the redacted string")


def _pricing(value: object) -> Any:
    """A JSON file's path or a mapping of model prices, validated now (see sdk.pricing)."""
    if value is None:
        return None
    from sdk.pricing import PricingError, load_overrides  # its table costs import time: at use only

    try:
        return load_overrides(value)
    except PricingError as exc:
        raise _Invalid(str(exc)) from None


COMPRESSIONS = ("none", "gzip")


def _compression(value: object) -> str:
    text = _text(value).lower()
    if text not in COMPRESSIONS:
        raise _Invalid(f"expected one of {', '.join(COMPRESSIONS)}")
    return text


def _append_metrics_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/metrics"))


def _metrics_url(value: object) -> str | None:
    """A metrics endpoint: a base URL (no path) gets `/v1/metrics`, as the traces endpoint gets `/v1/traces`."""
    if value is None:
        return None
    url = _url(value)
    return _append_metrics_path(url) if urllib.parse.urlsplit(url).path in ("", "/") else url


def _base_metrics_url(value: object) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT for metrics: `/v1/metrics` is appended to whatever path it has."""
    return _append_metrics_path(_url(value))


def _optional_headers(value: object) -> dict[str, str] | None:
    return None if value is None else _headers(value)


def _optional_protocol(value: object) -> str | None:
    return None if value is None else _protocol(value)


def _otel_metrics_exporter(value: object) -> bool:
    """OTEL_METRICS_EXPORTER: `otlp` turns the SDK's metrics on, `none` off."""
    text = _text(value).lower()
    if text not in ("otlp", "none"):
        raise _Invalid("sessiontrace understands otlp or none here")
    return text == "otlp"


def _positive_seconds(value: object, scale: float = 1.0) -> float:
    seconds = _seconds(value, scale)
    if seconds <= 0:
        raise _Invalid("must be a positive number of seconds")
    return seconds


def _positive_millis(value: object) -> float:
    return _positive_seconds(value, scale=0.001)


# Agent runtimes and logging parsers (issue 9).


def _append_logs_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/logs"))


def _logs_url(value: object) -> str | None:
    """A logs endpoint: a base URL (no path) gets `/v1/logs`, as the traces endpoint gets `/v1/traces`."""
    if value is None:
        return None
    url = _url(value)
    return _append_logs_path(url) if urllib.parse.urlsplit(url).path in ("", "/") else url


def _base_logs_url(value: object) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT for logs: `/v1/logs` is appended to whatever path it has."""
    return _append_logs_path(_url(value))


def _otel_logs_exporter(value: object) -> bool:
    """OTEL_LOGS_EXPORTER: `otlp` turns log export on, `none` off."""
    text = _text(value).lower()
    if text not in ("otlp", "none"):
        raise _Invalid("sessiontrace understands otlp or none here")
    return text == "otlp"


def _names(value: object) -> tuple[str, ...]:
    """A list of names: a list, a JSON list, or text separated by commas or lines."""
    items = _list_items(value, "names", r"[,\n]")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"{_show(item)} is not a name (expected a string)")
        name = item.strip()
        if name and name not in out:
            out.append(name)
    return tuple(out)


def _budget(value: object) -> Budget | None:
    """A Budget, a mapping of its fields (a config file table), or ``key=value,...`` text."""
    if value is None or isinstance(value, Budget):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        raw: dict[str, object] = {}
        for key, val in _split_pairs(text, what="budget limits"):
            raw[key] = val if key == "on_exceed" else _budget_number(key, val)
        value = raw
    if not isinstance(value, Mapping):
        raise _Invalid("expected a Budget, a table of its limits, or 'max_cost_usd=0.5,max_llm_calls=20'")
    try:
        return Budget.from_mapping(value)
    except (TypeError, ValueError) as exc:
        raise _Invalid(str(exc)) from None


def _budget_number(key: str, text: str) -> int | float:
    try:
        return int(text) if key not in ("max_cost_usd", "max_duration_s") else float(text)
    except ValueError:
        raise _Invalid(f"budget limit {key} must be a number, got {text!r}") from None


InboundTrust: TypeAlias = "TrustRules | Callable[[str, str | None], bool]"
"""The `accept_session_from` setting: rules, or a callable (session id, peer address or None) -> bool."""


def _trust_rules(value: object, *, hosts_allowed: bool) -> TrustRules:
    if isinstance(value, TrustRules):
        return value
    if value is True:
        return TrustRules(everyone=True)
    if value is False or value is None:
        return TrustRules()
    try:
        return TrustRules.parse(_names(value), hosts_allowed=hosts_allowed)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _inbound_trust(value: object) -> InboundTrust:
    if callable(value) and not isinstance(value, (str, TrustRules)):
        return value
    return _trust_rules(value, hosts_allowed=False)


def _outbound_trust(value: object) -> TrustRules:
    return _trust_rules(value, hosts_allowed=True)


# ---------------------------------------------------------------------------------------------
# The settings table: every setting declared once.


class EnvVar(NamedTuple):
    """An environment variable that feeds a setting, with its own parser when its units differ."""

    name: str
    parse: Callable[[object], Any] | None = None


class Setting(NamedTuple):
    """One setting: its name (the init() keyword and config-file key), parser, default and doc."""

    name: str
    parse: Callable[[object], Any]
    default: Any
    doc: str
    env: tuple[EnvVar, ...] = ()
    secret: bool = False
    per_session: bool = False
    code_only: bool = False


def _env(*names: str | EnvVar) -> tuple[EnvVar, ...]:
    return tuple(n if isinstance(n, EnvVar) else EnvVar(n) for n in names)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "enabled",
            _bool,
            True,
            "Turn the SDK on or off. Off: the same API at near-zero cost, nothing recorded or exported.",
            _env("SESSIONTRACE_ENABLED", EnvVar("OTEL_SDK_DISABLED", _not_disabled)),
        ),
        Setting(
            "service_name",
            _text,
            "unknown_service",
            "The `service.name` resource attribute.",
            _env("SESSIONTRACE_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        ),
        Setting(
            "resource_attributes",
            _resource_attributes,
            {},
            "Extra resource attributes (`key=value,key2=value2` in the environment).",
            _env("SESSIONTRACE_RESOURCE_ATTRIBUTES", "OTEL_RESOURCE_ATTRIBUTES"),
        ),
        Setting(
            "exporter",
            _exporter,
            "auto",
            "Where spans go: `auto` (OTLP when an endpoint is set, else the local OTLP-JSON file), "
            "`otlp`, `file`, `console`, `none`, or (as an init() keyword) any OpenTelemetry SpanExporter.",
            _env("SESSIONTRACE_EXPORTER", EnvVar("OTEL_TRACES_EXPORTER", _otel_exporter)),
        ),
        Setting(
            "export_mode",
            _export_mode,
            "auto",
            "What sessiontrace exports when the application set up OpenTelemetry before init() "
            "(opentelemetry-instrument, Logfire, Traceloop, a provider of its own): `auto` only to "
            "destinations the application's pipeline does not cover already (the same OTLP endpoint "
            "and protocol is covered; an unclear case is left to the application, and logged once), "
            "`stamp` nothing (sessions and `session.id` are added to the application's spans, which "
            "its pipeline exports), `own` every destination of `exporter` as well. See docs/concepts.md.",
            _env("SESSIONTRACE_EXPORT_MODE"),
        ),
        Setting(
            "endpoint",
            _optional_traces_url,
            None,
            "OTLP traces endpoint. A base URL (no path) gets `/v1/traces` appended for HTTP.",
            _env(
                EnvVar("SESSIONTRACE_ENDPOINT", _traces_url),
                EnvVar("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", _url),
                EnvVar("OTEL_EXPORTER_OTLP_ENDPOINT", _base_url),
            ),
        ),
        Setting(
            "headers",
            _headers,
            {},
            "Headers sent with every OTLP request (`key=value,key2=value2` in the environment).",
            _env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
            secret=True,
        ),
        Setting(
            "protocol",
            _protocol,
            "http/protobuf",
            "OTLP protocol: `http/protobuf` or `grpc` (needs the `grpc` extra).",
            _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ),
        Setting(
            "export_timeout",
            _seconds,
            10.0,
            "Seconds one OTLP export request may take (OTEL_EXPORTER_OTLP_TIMEOUT is read in seconds, "
            "as OpenTelemetry's Python exporters do).",
            _env(
                "SESSIONTRACE_EXPORT_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
        ),
        Setting(
            "auto_start_session",
            _bool,
            False,
            "Start one process-wide session that catches all work outside explicit sessions.",
            _env("SESSIONTRACE_AUTO_START_SESSION"),
        ),
        Setting(
            "auto_session_name",
            _text,
            "auto",
            "Name of the auto session.",
            _env("SESSIONTRACE_AUTO_SESSION_NAME"),
        ),
        Setting(
            "data_dir",
            _path,
            Path(".sessiontrace"),
            "Folder for everything kept on disk (the local OTLP-JSON traces, ...).",
            _env("SESSIONTRACE_DIR"),
        ),
        Setting(
            "console_summary",
            _optional_bool,
            None,
            "Print one line per ended session to stderr. Default (`auto`): on with the local file exporter.",
            _env("SESSIONTRACE_CONSOLE_SUMMARY"),
            per_session=True,
        ),
        Setting(
            "flush_timeout",
            _seconds,
            3.0,
            "Seconds that flush(), shutdown() and the exit handler wait for the exporter at most.",
            _env("SESSIONTRACE_FLUSH_TIMEOUT"),
        ),
        Setting(
            "max_queue_size",
            _int_at_least(1),
            2048,
            "Spans held in memory for export. With a spool behind the destination (OTLP, the local "
            "file) the queue overflows to disk from half of it and holds at most 4x it; without one, "
            "spans past it are dropped and counted.",
            _env("SESSIONTRACE_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_QUEUE_SIZE"),
        ),
        Setting(
            "max_export_batch_size",
            _int_at_least(1),
            512,
            "Spans per export request at most.",
            _env("SESSIONTRACE_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        ),
        Setting(
            "export_interval",
            _seconds,
            1.0,
            "Seconds between exports of a partial batch (OTEL_BSP_SCHEDULE_DELAY is in milliseconds).",
            _env("SESSIONTRACE_EXPORT_INTERVAL", EnvVar("OTEL_BSP_SCHEDULE_DELAY", _millis)),
        ),
        Setting(
            "attribute_max_length",
            _int_at_least(1),
            4096,
            "Longer string attribute values (from the SDK's own API) are truncated to this many characters.",
            _env("SESSIONTRACE_ATTRIBUTE_MAX_LENGTH", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
            per_session=True,
        ),
        Setting(
            "file_max_bytes",
            _int_at_least(1024),
            100 * 1024 * 1024,
            "The local OTLP-JSON traces folder is kept under this many bytes; oldest files go first.",
            _env("SESSIONTRACE_FILE_MAX_BYTES"),
        ),
        Setting(
            "propagate_executors",
            _bool,
            True,
            "Work handed to `ThreadPoolExecutor`/`ProcessPoolExecutor` `submit`/`map` or "
            "`loop.run_in_executor` continues the caller's session (patches of the two `submit` "
            "methods, applied once, removed by shutdown()).",
            _env("SESSIONTRACE_PROPAGATE_EXECUTORS"),
        ),
        Setting(
            "propagate_threads",
            _bool,
            False,
            "A `threading.Thread` continues the session of the code that called its `start()` "
            "(a patch of Thread.start; off by default: use `sdk.context.wrap`).",
            _env("SESSIONTRACE_PROPAGATE_THREADS"),
        ),
        Setting(
            "session_idle_timeout",
            _optional_positive_seconds,
            None,
            "End an explicit session that started no span for this many seconds, as `indeterminate` "
            "with reason `idle_timeout` (default: none, sessions never time out).",
            _env("SESSIONTRACE_SESSION_IDLE_TIMEOUT"),
        ),
        Setting(
            "max_open_sessions",
            _int_at_least(1),
            10_000,
            "Open explicit sessions at most. Starting one more ends the least recently active as "
            "`indeterminate` with reason `max_open_sessions` (and warns once).",
            _env("SESSIONTRACE_MAX_OPEN_SESSIONS"),
        ),
        # --- session store and lifecycle callbacks ---
        Setting(
            "session_store",
            _session_store,
            "sqlite",
            "Where session records are kept so sessions can be resumed after a restart: `sqlite` "
            "(a file in data_dir), `sqlite:PATH`, `memory`, `none`, a `redis://` / `rediss://` URL, "
            "or (as an init() keyword) a SessionStore instance.",
            _env("SESSIONTRACE_SESSION_STORE"),
        ),
        Setting(
            "session_expiry",
            _optional_positive_seconds,
            24 * 3600.0,
            "Seconds after its last activity that a stored session can still be resumed; older "
            "records are removed (none: kept forever).",
            _env("SESSIONTRACE_SESSION_EXPIRY"),
        ),
        Setting(
            "session_stale_after",
            _optional_positive_seconds,
            600.0,
            "A stored session still `running` with no activity for this many seconds is stale "
            "(so is one whose process on this host is gone); see `sdk.sessions(stale=True)`.",
            _env("SESSIONTRACE_SESSION_STALE_AFTER"),
        ),
        Setting(
            "store_write_interval",
            _seconds,
            5.0,
            "Seconds between writes of a running session's activity and counters to the store "
            "(starts and ends are written at once, in the background).",
            _env("SESSIONTRACE_STORE_WRITE_INTERVAL"),
        ),
        Setting(
            "ended_session_grace",
            _seconds,
            30.0,
            "For this many seconds after a session ends, a new span whose parent is in the session's "
            "trace still gets its `session.id` (work that outlives its session: background tasks, "
            "queue consumers). 0 turns it off.",
            _env("SESSIONTRACE_ENDED_SESSION_GRACE"),
        ),
        # --- sampling ---
        Setting(
            "sample_rate",
            _fraction,
            1.0,
            "The share of sessions exported whole (0-1). The decision is a function of `session.id` "
            "alone, so every process, service and resumed segment decides the same; the `keep_*` "
            "settings keep a session it drops. See docs/sampling.md.",
            _env("SESSIONTRACE_SAMPLE_RATE"),
        ),
        Setting(
            "keep_failed",
            _bool,
            True,
            "With `sample_rate` below 1: still export every session that ends `fail` or "
            "`indeterminate`, or recorded an error.",
            _env("SESSIONTRACE_KEEP_FAILED"),
        ),
        Setting(
            "keep_slower_than",
            _optional_positive_seconds,
            None,
            "With `sample_rate` below 1: still export every session that ran at least this many "
            "seconds (none: off).",
            _env("SESSIONTRACE_KEEP_SLOWER_THAN"),
        ),
        Setting(
            "keep_costlier_than",
            _optional_usd,
            None,
            "With `sample_rate` below 1: still export every session whose LLM calls cost at least "
            "this many USD (none: off).",
            _env("SESSIONTRACE_KEEP_COSTLIER_THAN"),
        ),
        Setting(
            "sample_buffer_spans",
            _int_at_least(1),
            10_000,
            "Spans held in memory, in all, for sessions the sample rate dropped until they end and "
            "the `keep_*` rules are applied; a session whose span does not fit is kept.",
            _env("SESSIONTRACE_SAMPLE_BUFFER_SPANS"),
        ),
        Setting(
            "on_session_start",
            _callbacks,
            (),
            "A callable (or a list) called with the Session right after it starts, in the thread "
            "that started it (init() keyword only).",
            code_only=True,
        ),
        Setting(
            "on_session_end",
            _callbacks,
            (),
            "A callable (or a list) called with the Session right after it ends, in the thread "
            "that ended it (init() keyword only).",
            code_only=True,
        ),
        Setting(
            "session_budget",
            _budget,
            None,
            "A budget for every session that does not set its own (`sdk.Budget`, a table of its "
            "limits, or `max_cost_usd=0.5,max_llm_calls=20,on_exceed=warn` in the environment): "
            "over it, the next instrumented LLM call raises `BudgetExceeded` before it is sent. "
            "See docs/budgets.md.",
            _env("SESSIONTRACE_SESSION_BUDGET"),
        ),
        Setting(
            "on_budget_exceeded",
            _callbacks,
            (),
            "A callable (or a list) called with the Session and the `BudgetExceeded` the first time "
            "each limit of its budget is found exceeded (init() keyword only).",
            code_only=True,
        ),
        Setting(
            "instrument",
            _instrument,
            INSTRUMENTABLE,
            "Libraries to instrument: a list of names (LLM clients `openai`, `anthropic`; agent "
            "frameworks `openai_agents`, `langgraph`), `all` (default: every supported library, "
            "patched when it is imported) or `none`.",
            _env("SESSIONTRACE_INSTRUMENT"),
        ),
        Setting(
            "capture_content",
            _bool,
            False,
            "Record prompts, completions and (for decorators that do not say) arguments and return "
            "values, after redaction. Off by default: no content is recorded.",
            _env("SESSIONTRACE_CAPTURE_CONTENT", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
            per_session=True,
        ),
        Setting(
            "redact_patterns",
            _redact_patterns,
            ("builtin",),
            "Regular expressions whose matches are replaced by `[REDACTED]` in everything exported and "
            "stored (with `scrub`) and in captured content; `builtin` stands for the built-in secret "
            "patterns (API keys, tokens, passwords in URLs and key=value pairs: docs/security.md; an "
            "empty list turns those off). In the environment: a JSON list, or one per line.",
            _env("SESSIONTRACE_REDACT_PATTERNS"),
        ),
        Setting(
            "redactor",
            _redactor,
            None,
            "A callable taking and returning a string, applied to captured text after the patterns "
            "(init() keyword only).",
            code_only=True,
        ),
        Setting(
            "scrub",
            _bool,
            True,
            "Remove secrets from everything exported and stored (spans, events, exception messages and "
            "stack traces, logs, session records): values of secret-named keys (`scrub_keys`) and text "
            "matching `redact_patterns`. Off only when set explicitly. See docs/security.md.",
            _env("SESSIONTRACE_SCRUB"),
        ),
        Setting(
            "scrub_keys",
            _names,
            ("builtin",),
            "Attribute, argument and mapping keys whose values are secrets and replaced whole; "
            "`builtin` stands for the built-in list (password, token, api_key, authorization, cookie, "
            "...: docs/security.md). In the environment: comma-separated or a JSON list.",
            _env("SESSIONTRACE_SCRUB_KEYS"),
        ),
        Setting(
            "content_max_length",
            _int_at_least(16),
            8192,
            "Captured text (one message part, argument or return value) is cut to this many characters.",
            _env("SESSIONTRACE_CONTENT_MAX_LENGTH"),
        ),
        Setting(
            "pricing",
            _pricing,
            None,
            "Model prices that override or extend the shipped table: a JSON file's path, or (as an "
            "init() keyword) a mapping `{model: {input: USD, output: USD}}` per million tokens.",
            _env("SESSIONTRACE_PRICING"),
        ),
        Setting(
            "propagate_session",
            _bool,
            True,
            "Outgoing requests of OpenTelemetry instrumentations (httpx, requests, aiohttp, grpc, ...) "
            "to destinations `send_session_to` trusts carry the current session: `session.id` in W3C "
            "baggage, beside `traceparent` (a wrapper of the global propagator, applied once, removed "
            "by shutdown()). Off: none do; `sdk.context.inject()` still writes it where you call it.",
            _env("SESSIONTRACE_PROPAGATE_SESSION"),
        ),
        Setting(
            "send_session_to",
            _outbound_trust,
            PRIVATE,
            "Destinations whose requests carry `session.id` in baggage (with propagate_session): "
            "`private` (loopback, private-network addresses, single-label service names such as "
            "`orders`), host names, `*.domain` suffixes, CIDR networks, `all`, or `none`. A public "
            "host (an LLM provider's API) is never sent the id unless listed. See docs/security.md.",
            _env("SESSIONTRACE_SEND_SESSION_TO"),
        ),
        Setting(
            "accept_session_from",
            _inbound_trust,
            TrustRules(),
            "Inbound requests whose `session.id` in W3C baggage is adopted (by `sdk.session(parent=...)`, "
            "`sdk.context.extract` and server instrumentations): `none` (default: never; the id is "
            "recorded as `sessiontrace.inbound.session_id` on a session started with `parent=`), "
            "`all`, peer networks (`loopback`, `private`, CIDRs), or (init() keyword) a callable "
            "`(session_id, peer_address) -> bool`. See docs/security.md.",
            _env("SESSIONTRACE_ACCEPT_SESSION_FROM"),
        ),
        Setting(
            "instrument_autogen",
            _bool,
            True,
            "Carry sessions through autogen-core's `SingleThreadedAgentRuntime`: a message is handled "
            "in the session it was published or sent from (patched when `autogen_core` is imported; "
            "see docs/integrations.md).",
            _env("SESSIONTRACE_INSTRUMENT_AUTOGEN"),
        ),
        Setting(
            "session_from_topic",
            _bool,
            False,
            "autogen-core: a message published from outside any session to a topic whose source is X "
            "is handled in session X (started on first use, resumed from the session store, ended "
            "when the runtime stops). Off by default: a topic source is not always a session id. "
            "The older spelling of `session_from` = `autogen.topic`, kept working.",
            _env("SESSIONTRACE_SESSION_FROM_TOPIC"),
        ),
        Setting(
            "session_from",
            _session_from,
            (),
            "Agent framework conversation ids that become session ids: `autogen.topic`, "
            "`langgraph.thread_id`, `openai_agents.group_id`, `openai_agents.session`, "
            "`openai_agents.conversation_id` (a list, or names separated by commas). Work a framework "
            "runs outside any session for conversation X runs in session X: joined if open, else "
            "started (resumed from the session store), with `gen_ai.conversation.id` X. Off by "
            "default: see docs/integrations.md.",
            _env("SESSIONTRACE_SESSION_FROM"),
        ),
        Setting(
            "log_correlation",
            _bool,
            False,
            "Give every `logging` record `session_id`, `trace_id` and `span_id` attributes (for "
            "formatters: `%(session_id)s`), through the log record factory. Off: add "
            "`sdk.logs.SessionLogFilter()` to a handler yourself.",
            _env("SESSIONTRACE_LOG_CORRELATION"),
        ),
        Setting(
            "export_logs",
            _bool,
            False,
            "Export `logging` records as OpenTelemetry logs over OTLP (a handler on the root logger), "
            "with `session.id` and the trace and span ids of the code that logged them.",
            _env("SESSIONTRACE_EXPORT_LOGS", EnvVar("OTEL_LOGS_EXPORTER", _otel_logs_exporter)),
        ),
        Setting(
            "logs_endpoint",
            _logs_url,
            None,
            "OTLP logs endpoint. Default: the traces endpoint with `/v1/logs` for `/v1/traces` (a base "
            "URL gets `/v1/logs` appended). A logs-specific value from a lower layer than the traces "
            "endpoint's is ignored.",
            _env(
                EnvVar("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", _url),
                EnvVar("OTEL_EXPORTER_OTLP_ENDPOINT", _base_logs_url),
            ),
        ),
        Setting(
            "compression",
            _compression,
            "none",
            "Compression of OTLP requests: `gzip` or `none`.",
            _env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ),
        Setting(
            "certificate_file",
            _optional_path,
            None,
            "CA certificate file (PEM) to verify the OTLP backend's TLS certificate with "
            "(default: the system's trusted CAs).",
            _env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        ),
        Setting(
            "client_certificate_file",
            _optional_path,
            None,
            "Client certificate file (PEM) for mutual TLS with the OTLP backend (with client_key_file).",
            _env("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        ),
        Setting(
            "client_key_file",
            _optional_path,
            None,
            "Client private key file (PEM) for mutual TLS with the OTLP backend.",
            _env("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        ),
        Setting(
            "insecure",
            _bool,
            False,
            "gRPC only: a plaintext channel (no TLS) even for an `https://` endpoint. An `http://` "
            "endpoint is always plaintext, for HTTP and gRPC alike.",
            _env("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
        ),
        Setting(
            "spool",
            _bool,
            True,
            "Write every OTLP batch to `<data_dir>/spool/` before its request and keep it until the "
            "backend took it (sent oldest first, also by the next process started in the same "
            "folder); the local file's queue overflows there too. Off: nothing is written there; "
            "failed batches and overflow are dropped and counted.",
            _env("SESSIONTRACE_SPOOL"),
        ),
        Setting(
            "spool_max_bytes",
            _int_at_least(1024),
            64 * 1024 * 1024,
            "The spool of one destination holds at most this many bytes; batches past it are dropped and counted.",
            _env("SESSIONTRACE_SPOOL_MAX_BYTES"),
        ),
        Setting(
            "spool_retry_interval",
            _positive_seconds,
            2.0,
            "Seconds before the first retry of a spooled batch; the wait doubles after each failure "
            "(at most 16 times this, and at most 30 s) and a `Retry-After` from the backend is honoured.",
            _env("SESSIONTRACE_SPOOL_RETRY_INTERVAL"),
        ),
        Setting(
            "live_sessions",
            _bool,
            True,
            "Export a `session.start` marker span for every session still running 1 s after it "
            "started, so backends show running sessions before they end.",
            _env("SESSIONTRACE_LIVE_SESSIONS"),
        ),
        Setting(
            "dialects",
            _dialects,
            dialects.DEFAULT,
            "Attributes for backends beside the GenAI conventions: `openinference` (span kinds, "
            "inputs and outputs, tags, models and token counts, read by Phoenix, Langfuse and MLflow), "
            "`langfuse` (Langfuse's token split and trace metadata), both (comma-separated) or "
            "`none`. Content only with `capture_content`, redacted. See docs/backends.md.",
            _env("SESSIONTRACE_DIALECTS"),
        ),
        Setting(
            "metrics",
            _optional_bool,
            None,
            "Export the SDK's OTLP metrics (sessions, spans, export errors, GenAI metrics). Default "
            "(`auto`): on when spans go to an OTLP backend.",
            _env("SESSIONTRACE_METRICS", EnvVar("OTEL_METRICS_EXPORTER", _otel_metrics_exporter)),
        ),
        Setting(
            "metric_export_interval",
            _positive_seconds,
            60.0,
            "Seconds between metric exports (OTEL_METRIC_EXPORT_INTERVAL is in milliseconds).",
            _env(
                "SESSIONTRACE_METRIC_EXPORT_INTERVAL",
                EnvVar("OTEL_METRIC_EXPORT_INTERVAL", _positive_millis),
            ),
        ),
        Setting(
            "metrics_endpoint",
            _metrics_url,
            None,
            "OTLP metrics endpoint. Default: the traces endpoint with `/v1/metrics` for `/v1/traces` "
            "(a base URL gets `/v1/metrics` appended). A metrics-specific value from a lower layer "
            "than the traces endpoint's is ignored.",
            _env(
                EnvVar("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", _url),
                EnvVar("OTEL_EXPORTER_OTLP_ENDPOINT", _base_metrics_url),
            ),
        ),
        Setting(
            "metrics_headers",
            _optional_headers,
            None,
            "Headers for OTLP metric requests (default: `headers`).",
            _env("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
            secret=True,
        ),
        Setting(
            "metrics_protocol",
            _optional_protocol,
            None,
            "OTLP protocol for metrics (default: `protocol`).",
            _env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ),
        Setting(
            "span_processors",
            _processors,
            (),
            "Extra OpenTelemetry SpanProcessors added to the pipeline (init() keyword only).",
            code_only=True,
        ),
        Setting(
            "config_file",
            _optional_path,
            None,
            "A config file to read instead of searching for pyproject.toml / sessiontrace.toml.",
            _env("SESSIONTRACE_CONFIG_FILE"),
        ),
    )
}


@dataclass(frozen=True, repr=False)
class Config:
    """The resolved settings. `sources` says where each value came from (see `explain()`)."""

    enabled: bool
    service_name: str
    resource_attributes: Mapping[str, str]
    exporter: str | SpanExporter | tuple[str | SpanExporter, ...]
    export_mode: str
    endpoint: str | None
    headers: Mapping[str, str] = field(repr=False)  # secret: see masked()
    protocol: str
    export_timeout: float
    auto_start_session: bool
    auto_session_name: str
    data_dir: Path
    console_summary: bool | None
    flush_timeout: float
    max_queue_size: int
    max_export_batch_size: int
    export_interval: float
    attribute_max_length: int
    file_max_bytes: int
    propagate_executors: bool
    propagate_threads: bool
    session_idle_timeout: float | None
    max_open_sessions: int
    # --- session store and lifecycle callbacks ---
    session_store: Any
    session_expiry: float | None
    session_stale_after: float | None
    store_write_interval: float
    ended_session_grace: float
    sample_rate: float
    keep_failed: bool
    keep_slower_than: float | None
    keep_costlier_than: float | None
    sample_buffer_spans: int
    on_session_start: tuple[Callable[..., Any], ...]
    on_session_end: tuple[Callable[..., Any], ...]
    session_budget: Budget | None
    on_budget_exceeded: tuple[Callable[..., Any], ...]
    instrument: tuple[str, ...]
    capture_content: bool
    redact_patterns: tuple[str, ...]
    redactor: Callable[[str], str] | None
    scrub: bool
    scrub_keys: tuple[str, ...]
    content_max_length: int
    pricing: Any
    propagate_session: bool
    send_session_to: TrustRules
    accept_session_from: InboundTrust
    instrument_autogen: bool
    session_from_topic: bool
    session_from: tuple[str, ...]
    log_correlation: bool
    export_logs: bool
    logs_endpoint: str | None
    compression: str
    certificate_file: Path | None
    client_certificate_file: Path | None
    client_key_file: Path | None
    insecure: bool
    spool: bool
    spool_max_bytes: int
    spool_retry_interval: float
    live_sessions: bool
    dialects: tuple[str, ...]
    metrics: bool | None
    metric_export_interval: float
    metrics_endpoint: str | None
    metrics_headers: Mapping[str, str] | None = field(repr=False)  # secret: see masked()
    metrics_protocol: str | None
    span_processors: tuple[SpanProcessor, ...]
    config_file: Path | None
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)

    @property
    def exporter_kind(self) -> str:
        """The exporter actually used: `auto` resolved to `otlp` or `file`, an instance to `custom`.

        Several destinations are joined with `+` (e.g. `otlp+file`)."""
        return "+".join(self.destination_kinds)

    @property
    def destinations(self) -> tuple[str | SpanExporter, ...]:
        """Every destination: names (`auto` resolved to `otlp` or `file`) and exporter instances."""
        items = self.exporter if isinstance(self.exporter, tuple) else (self.exporter,)
        return tuple(("otlp" if self.endpoint else "file") if item == "auto" else item for item in items)

    @property
    def destination_kinds(self) -> tuple[str, ...]:
        """`destinations` with exporter instances shown as `custom`."""
        return tuple(item if isinstance(item, str) else "custom" for item in self.destinations)

    @property
    def traces_endpoint(self) -> str:
        """The OTLP endpoint spans are sent to when exporting over OTLP (defaults: 4318 HTTP, 4317 gRPC).

        For gRPC only scheme, host and port count: a path (``/v1/traces``, appended to
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` for HTTP) is left out, as the exporter leaves it out."""
        if self.endpoint:
            if self.protocol != "grpc":
                return self.endpoint
            parts = urllib.parse.urlsplit(self.endpoint)
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return DEFAULT_OTLP_GRPC_ENDPOINT if self.protocol == "grpc" else DEFAULT_OTLP_HTTP_ENDPOINT

    def destinations_text(self) -> list[str]:
        """Where spans go, one line per destination (what `doctor` and the quickstart print)."""
        lines = []
        for destination in self.destinations:
            if destination == "otlp":
                lines.append(f"an OTLP backend ({self.protocol}) at {mask_url(self.traces_endpoint)}")
            elif destination == "file":
                folder = Path(os.path.abspath(self.data_dir)) / "traces"
                lines.append(f"OTLP-JSON files in {folder}")
            elif destination == "console":
                lines.append("the console (standard output)")
            elif destination == "none":
                lines.append("nowhere (exporter none: spans are not exported)")
            else:
                lines.append(f"{type(destination).__name__} (a SpanExporter given to init())")
        return lines

    @property
    def summary_enabled(self) -> bool:
        """Whether ended sessions print a one-line summary (auto: with the local file exporter)."""
        if self.console_summary is None:
            return "file" in self.destination_kinds
        return self.console_summary

    def masked(self, name: str) -> str:
        """A setting's value as text, with secrets masked; an unset value named as the docs name it
        (`unset_text`), an empty mapping or list as ``empty``."""
        value = getattr(self, name)
        if value is None:
            return unset_text(SETTINGS[name])
        if isinstance(value, (Mapping, tuple, list)) and not value:
            return "empty"
        if SETTINGS[name].secret:
            if isinstance(value, Mapping):
                return ",".join(f"{k}=***" for k in value)
            return "***"
        if isinstance(value, (TrustRules, Budget)):
            return value.describe()
        return mask_url(value) if isinstance(value, str) else _show(value)

    def __repr__(self) -> str:
        """One short line (what a notebook shows for ``sdk.init(...)``); ``explain()`` has every setting."""
        changed = sum(1 for source in self.sources.values() if source.layer != "default")
        auto = ", auto session" if self.auto_start_session else ""
        state = "" if self.enabled else " (disabled)"
        return (
            f"<sessiontrace Config{state}: service {self.service_name!r}, export to {self.exporter_kind}"
            f"{auto}; {changed} of {len(SETTINGS)} settings set — sdk.config().explain() lists them>"
        )

    def explain(self) -> list[tuple[str, str, str]]:
        """(name, masked value, source) for every setting, in table order."""
        return [
            (name, self.masked(name), str(self.sources.get(name, Source("default")))) for name in SETTINGS
        ]

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """This config with per-session overrides applied (only per-session settings may be set)."""
        values: dict[str, Any] = {}
        sources = dict(self.sources)
        for key, raw in overrides.items():
            source = Source("session", f"session(overrides={{{key!r}: ...}})")
            setting = _lookup(key, raw, source)
            if not setting.per_session:
                per_session = ", ".join(n for n, s in SETTINGS.items() if s.per_session)
                raise ConfigError(
                    key,
                    _masked_raw(setting, raw),
                    source,
                    f"cannot be set per session (these can: {per_session})",
                )
            values[key] = _parse(setting, setting.parse, raw, source)
            sources[key] = source
        return replace(self, **values, sources=sources)


def unset_text(setting: Setting) -> str:
    """How an unset value of `setting` is named in docs/configuration.md and by `doctor`: ``auto``
    where the SDK decides from other settings (``console_summary``, ``metrics``), else ``unset``."""
    return "auto" if setting.parse is _optional_bool else "unset"


class _Masked:
    """Shows as its text without quotes, so a masked value reads `a=***,***` in messages."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _masked_raw(setting: Setting, raw: object) -> object:
    """The raw value as it may appear in a message: secret values (and malformed names) as ***."""
    if not setting.secret:
        return mask_url(raw) if isinstance(raw, str) else raw
    try:
        if isinstance(raw, Mapping):
            names = [k if isinstance(k, str) and _HEADER_NAME.fullmatch(k) else "" for k in raw]
        elif isinstance(raw, str):
            names = [p.partition("=")[0].strip() if "=" in p else "" for p in raw.split(",") if p.strip()]
            names = [n if _HEADER_NAME.fullmatch(n) else "" for n in names]
        else:
            return _Masked("***")
    except Exception:
        return _Masked("***")
    return _Masked(",".join(f"{n}=***" if n else "***" for n in names) or "''")


def _lookup(key: object, raw: object, source: Source) -> Setting:
    if isinstance(key, str) and key in SETTINGS:
        return SETTINGS[key]
    import difflib

    close = difflib.get_close_matches(str(key), SETTINGS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known settings: {', '.join(SETTINGS)}"
    raise ConfigError(str(key), _NO_VALUE, source, f"unknown setting{hint}")


def _parse(setting: Setting, parser: Callable[[object], Any], raw: object, source: Source) -> Any:
    try:
        return parser(raw)
    except _Invalid as exc:
        raise ConfigError(setting.name, _masked_raw(setting, raw), source, str(exc)) from None
    except Exception as exc:  # a user object's __iter__, __fspath__, ... may raise anything
        problem = (
            f"invalid value ({type(exc).__name__})" if setting.secret else f"invalid value ({_show_exc(exc)})"
        )
        raise ConfigError(setting.name, _masked_raw(setting, raw), source, problem) from None


# ---------------------------------------------------------------------------------------------
# Config files


def find_config_file(start: Path) -> tuple[Path, Mapping[str, object]] | None:
    """The nearest sessiontrace.toml, or pyproject.toml with [tool.sessiontrace], from `start` up.

    In each folder a sessiontrace.toml wins over a pyproject.toml; a pyproject.toml without a
    ``[tool.sessiontrace]`` table does not stop the search."""
    for folder in (start, *start.parents):
        candidate = folder / "sessiontrace.toml"
        if _is_file(candidate):
            return candidate, read_config_file(candidate)
        pyproject = folder / "pyproject.toml"
        if _is_file(pyproject):
            data = _read_toml(pyproject)
            tool = data.get("tool", {})
            if isinstance(tool, dict) and "sessiontrace" in tool:
                return pyproject, _settings_in(pyproject, data)
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # an unreadable folder on the way up is not a config file
        return False


def read_config_file(path: Path, named_by: Source | None = None) -> Mapping[str, object]:
    """The settings in a config file: ``[tool.sessiontrace]`` of a pyproject.toml, else the whole
    file (or its ``[sessiontrace]`` table). `named_by` is where the path came from, for messages."""
    return _settings_in(path, _read_toml(path, named_by))


def _settings_in(path: Path, data: dict[str, Any]) -> Mapping[str, object]:
    source = Source("file", str(path))
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        section = tool.get("sessiontrace", {}) if isinstance(tool, dict) else {}
        if not isinstance(section, dict):
            raise ConfigError("config_file", _NO_VALUE, source, "[tool.sessiontrace] must be a table")
        return section
    if "sessiontrace" not in data:
        return data
    section = data["sessiontrace"]
    if not isinstance(section, dict):
        raise ConfigError("config_file", _NO_VALUE, source, "[sessiontrace] must be a table")
    if len(data) > 1:
        others = ", ".join(repr(k) for k in data if k != "sessiontrace")
        raise ConfigError(
            "config_file",
            _NO_VALUE,
            source,
            f"put settings either at the top level or under [sessiontrace], not both "
            f"(found {others} outside [sessiontrace])",
        )
    return section


def _read_toml(path: Path, named_by: Source | None = None) -> dict[str, Any]:
    source = named_by or Source("file", str(path))
    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError("config_file", str(path), source, "is not a regular file")
            content = f.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            "config_file",
            str(path),
            named_by or Source("file", str(path)),
            f"cannot be read ({exc.strerror})",
        ) from None
    except ValueError as exc:  # a path the OS cannot take (unencodable characters)
        raise ConfigError(
            "config_file", str(path), named_by or Source("file", str(path)), f"cannot be read ({exc})"
        ) from None
    if len(content) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            "config_file", str(path), source, f"is larger than {MAX_CONFIG_FILE_BYTES // 1024} KiB"
        )
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        data: dict[str, Any] = tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(
            "config_file", str(path), Source("file", str(path)), "is not valid TOML (not UTF-8 text)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "config_file", str(path), Source("file", str(path)), f"is not valid TOML ({exc})"
        ) from None
    except RecursionError:
        raise ConfigError(
            "config_file", str(path), Source("file", str(path)), "is not valid TOML (nested too deeply)"
        ) from None
    return data


# ---------------------------------------------------------------------------------------------
# Resolution


def load_config(
    kwargs: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Resolve every setting through the layers. Raises ConfigError naming key, value and layer.

    `environ` (default: os.environ) and `cwd` (default: the working directory; where the config
    file search starts and relative config_file paths are resolved) exist for tests and tools."""
    kwargs = dict(kwargs or {})
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}

    for name, setting in SETTINGS.items():
        values[name] = setting.default
        sources[name] = Source("default")

    for key, raw in kwargs.items():
        _lookup(key, raw, Source("init", f"init({key}=...)"))

    file_values, file_path, file_named_by = _file_layer(kwargs, environ, cwd)
    for key, raw in file_values.items():
        source = Source("file", str(file_path))
        setting = _lookup(key, raw, source)
        if setting.code_only:
            raise ConfigError(key, _NO_VALUE, source, "can only be given as an init() keyword")
        values[key] = _parse(setting, setting.parse, raw, source)
        sources[key] = source

    _env_layer(environ, values, sources)
    _warn_unknown_env(environ)

    for key, raw in kwargs.items():
        setting = SETTINGS[key]
        source = Source("init", f"init({key}=...)")
        values[key] = _parse(setting, setting.parse, raw, source)
        sources[key] = source

    # config_file is the file actually read (resolved), and says what named it.
    values["config_file"] = file_path
    sources["config_file"] = file_named_by

    # OpenTelemetry: service.name in OTEL_RESOURCE_ATTRIBUTES counts when OTEL_SERVICE_NAME is not set.
    named = values["resource_attributes"].get("service.name", "")
    if sources["service_name"].layer == "default" and named.strip():
        values["service_name"] = _parse(
            SETTINGS["service_name"], _text, named, sources["resource_attributes"]
        )
        sources["service_name"] = sources["resource_attributes"]

    config = Config(**values, sources=sources)
    _check_combination(config)
    return config


def _env_layer(environ: Mapping[str, str], values: dict[str, Any], sources: dict[str, Source]) -> None:
    """Apply the environment variables: for each setting, the first of its variables that is set."""
    for name, setting in SETTINGS.items():
        for var in setting.env:
            raw_text = environ.get(var.name)
            if raw_text is None or not raw_text.strip():
                continue
            source = Source("env", var.name)
            values[name] = _parse(setting, var.parse or setting.parse, raw_text, source)
            sources[name] = source
            break


def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    """Warn once about each SESSIONTRACE_* variable that names no setting (a typo is silent otherwise)."""
    known = _known_env_names()
    for name in environ:
        if not name.startswith("SESSIONTRACE_") or name in known:
            continue
        import difflib

        from sdk.guard import warn_once

        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        shown = name if name.isprintable() and len(name) <= 80 else repr(name[:80])
        warn_once(
            f"unknown-env-{name}",
            "sessiontrace: the environment variable %s names no setting and is ignored%s "
            "(settings: docs/configuration.md)",
            shown,
            hint,
        )


@functools.cache
def _known_env_names() -> frozenset[str]:
    names = {var.name for setting in SETTINGS.values() for var in setting.env}
    return frozenset(name for name in names if name.startswith("SESSIONTRACE_")) | INTERNAL_ENV


def _file_layer(
    kwargs: Mapping[str, object], environ: Mapping[str, str], cwd: Path | None
) -> tuple[Mapping[str, object], Path | None, Source]:
    """The config file's settings, its path (None: no file) and what named it."""
    setting = SETTINGS["config_file"]
    explicit: Path | None = None
    named_by = Source("default")
    if kwargs.get("config_file") is not None:
        named_by = Source("init", "init(config_file=...)")
        explicit = _parse(setting, _path, kwargs["config_file"], named_by)
    elif environ.get("SESSIONTRACE_CONFIG_FILE", "").strip():
        named_by = Source("env", "SESSIONTRACE_CONFIG_FILE")
        explicit = _parse(setting, _path, environ["SESSIONTRACE_CONFIG_FILE"], named_by)
    if explicit is not None:
        if cwd is not None:
            explicit = cwd / explicit  # an absolute `explicit` stays as it is
        values = read_config_file(explicit, named_by)
        path = explicit
    else:
        try:
            start = (cwd or Path.cwd()).resolve()
        except (OSError, RuntimeError):
            return {}, None, named_by
        found = find_config_file(start)
        if found is None:
            return {}, None, named_by
        path, values = found
        named_by = Source("file", str(path))
    if "config_file" in values:
        raise ConfigError(
            "config_file", _NO_VALUE, Source("file", str(path)), "a config file cannot name another"
        )
    return values, path, named_by


def _check_combination(config: Config) -> None:
    if "otlp" not in config.destination_kinds:
        return
    uses_grpc = [name for name in ("protocol", "metrics_protocol") if getattr(config, name) == "grpc"]
    if uses_grpc and importlib.util.find_spec("grpc") is None:
        raise ConfigError(
            uses_grpc[0],
            "grpc",
            config.sources[uses_grpc[0]],
            "OTLP over gRPC needs the grpc extra: pip install 'sessiontrace[grpc]'",
        )
    if (config.client_certificate_file is None) != (config.client_key_file is None):
        given = "client_certificate_file" if config.client_key_file is None else "client_key_file"
        raise ConfigError(
            given,
            str(getattr(config, given)),
            config.sources[given],
            "mutual TLS needs both client_certificate_file and client_key_file",
        )


def config_field_names() -> set[str]:
    """Names of Config's setting fields (kept equal to the settings table by a test)."""
    return {f.name for f in fields(Config)} - {"sources"}
