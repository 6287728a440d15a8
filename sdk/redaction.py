"""Redaction of what the SDK records from the program: content, arguments, headers and URLs.

Captured text goes through, in order: the `redact_patterns` (``builtin`` stands for the built-in
API-key and bearer-token patterns below; each match becomes ``[REDACTED]``), the `redactor`
callable if one is set, and the `content_max_length` cut. Headers with credential names and URL
passwords and credential query parameters are replaced whole. See docs/instrumentation.md.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REDACTED = "[REDACTED]"

# (pattern, replacement): the replacement keeps what names the secret and drops the secret itself.
BUILTIN_PATTERNS: tuple[tuple[str, str], ...] = (
    # PEM private keys
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----", REDACTED),
    # Authorization values: "Bearer <token>", "Basic <credentials>"
    (r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}", rf"\1\2{REDACTED}"),
    # OpenAI (sk-, sk-proj-, ...) and Anthropic (sk-ant-...) keys
    (r"\bsk-[A-Za-z0-9_-]{16,}", REDACTED),
    # AWS access key ids
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", REDACTED),
    # GitHub tokens
    (r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", REDACTED),
    # Google API keys
    (r"\bAIza[0-9A-Za-z_-]{35}", REDACTED),
    # Slack tokens
    (r"\bxox[abprse]-[A-Za-z0-9-]{10,}", REDACTED),
    # JSON Web Tokens
    (r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", REDACTED),
    # api_key=..., "password": "...", secret: ...
    (
        r"(?i)\b((?:[a-z0-9]+[_-])?(?:api[_-]?key|secret|token|password|passwd|access[_-]?key))"
        r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;&}]{4,})",
        rf"\1\2{REDACTED}",
    ),
)

SENSITIVE_NAME = re.compile(
    r"(?i)(auth|api[_-]?key|token|secret|password|passwd|cookie|signature|^sig$|^key$|credential)"
)
"""Header and query-parameter names whose whole value is replaced."""


class Redactor:
    """Applies the redaction settings to text and to JSON-like values. Never raises for odd input."""

    __slots__ = ("_function", "_patterns", "max_length")

    def __init__(
        self,
        patterns: Sequence[str] = ("builtin",),
        function: Callable[[str], str] | None = None,
        max_length: int = 8192,
    ) -> None:
        compiled: list[tuple[re.Pattern[str], str]] = []
        for pattern in patterns:
            if pattern == "builtin":
                compiled.extend((_compile(p), r) for p, r in BUILTIN_PATTERNS)
            else:
                compiled.append((_compile(pattern), REDACTED))
        self._patterns = tuple(compiled)
        self._function = function
        self.max_length = max_length

    def text(self, text: str, max_length: int | None = None) -> str:
        """`text` with every match replaced, passed through the redactor callable, then cut."""
        for pattern, replacement in self._patterns:
            text = pattern.sub(replacement, text)
        if self._function is not None:
            result = self._function(text)
            text = result if isinstance(result, str) else str(result)
        limit = self.max_length if max_length is None else max_length
        if len(text) > limit:
            text = f"{text[:limit]}…[{len(text) - limit} more characters]"
        return text

    def value(self, value: Any) -> Any:
        """A JSON-ready copy of `value` with every string in it redacted (keys kept)."""
        return self._walk(value, 0)

    def _walk(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.text(value)
        if depth > 20:
            return self.text(_short_text(value))
        if isinstance(value, Mapping):
            return {str(k): self._walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._walk(v, depth + 1) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return self.text(bytes(value[: self.max_length * 4]).decode("utf-8", "replace"))
        dump = getattr(value, "model_dump", None)  # pydantic models (the clients' types)
        if callable(dump):
            try:
                return self._walk(dump(mode="json", exclude_unset=True), depth + 1)
            except Exception:
                pass
        return self.text(_short_text(value))

    def json(self, value: Any) -> str:
        """`value` redacted and encoded as JSON (what the GenAI content attributes hold)."""
        return json.dumps(self.value(value), ensure_ascii=False, separators=(",", ":"))

    def headers(self, headers: Mapping[str, Any]) -> dict[str, str]:
        """Headers with credential values replaced whole and the rest redacted as text."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            key = str(name)
            out[key] = REDACTED if SENSITIVE_NAME.search(key) else self.text(str(value))
        return out

    def url(self, url: str) -> str:
        """A URL without its password and credential query parameters, then redacted as text."""
        try:
            parts = urllib.parse.urlsplit(url)
            netloc = parts.netloc
            if parts.password is not None:
                netloc = netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
            query = parts.query
            if query:
                pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
                query = "&".join(
                    f"{urllib.parse.quote(k, safe='')}="
                    + (REDACTED if SENSITIVE_NAME.search(k) else urllib.parse.quote(v, safe=""))
                    for k, v in pairs
                )
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
        except ValueError:
            pass
        return self.text(url)


def _short_text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


_compiled: dict[str, re.Pattern[str]] = {}


def _compile(pattern: str) -> re.Pattern[str]:
    found = _compiled.get(pattern)
    if found is None:
        found = _compiled[pattern] = re.compile(pattern)
    return found


_lock = threading.Lock()
_by_config: dict[tuple[Any, ...], Redactor] = {}


def redactor_for(config: Any) -> Redactor:
    """The Redactor for a Config's `redact_patterns`, `redactor` and `content_max_length` (cached)."""
    if config is None:
        key: tuple[Any, ...] = (("builtin",), None, 8192)
    else:
        key = (tuple(config.redact_patterns), config.redactor, config.content_max_length)
    found = _by_config.get(key)
    if found is None:
        found = Redactor(*key)
        with _lock:
            if len(_by_config) > 32:
                _by_config.clear()
            _by_config[key] = found
    return found


def current() -> Redactor:
    """The Redactor for the config in use."""
    from sdk import runtime

    return redactor_for(runtime.current().config)


def redact(text: str) -> str:
    """Redact `text` with the settings in use (for code that records something of its own)."""
    return current().text(text)


def redact_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Redact HTTP headers with the settings in use."""
    return current().headers(headers)


def redact_url(url: str) -> str:
    """Redact a URL with the settings in use."""
    return current().url(url)
