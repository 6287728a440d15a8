"""Secrets out of everything the SDK exports and stores: scrubbing by key and by value pattern.

Two layers, both on by default:

- **Keys.** An attribute, captured argument or mapping entry whose key names a secret
  (``password``, ``api_key``, ``authorization``, ``cookie``, ``x-api-key``,
  ``http.request.header.authorization``, ...) has its whole value replaced by ``[REDACTED]``.
  A key names a secret when its last dotted part, lower-cased with ``-`` read as ``_``, is one
  of `SECRET_KEYS` or ends with ``_`` and one of them (``aws_secret_access_key``,
  ``x_api_key``). ``gen_ai.usage.input_tokens`` or ``llm.token_count.prompt`` do not.
- **Values.** Text anywhere (attribute values, event attributes such as exception messages and
  stack traces, status descriptions, log bodies, session records) has what matches the
  `BUILTIN_PATTERNS` (API keys of OpenAI, Anthropic, AWS, GitHub, Slack, Google, Stripe; JWTs;
  bearer and basic credentials; PEM private keys; ``user:password@`` in URLs; ``key=value``
  pairs for secret-named keys) and the user's `redact_patterns` replaced.

`Scrubber` does both for exported spans, logs and stored records. `Redactor` adds, for captured
content (prompts, completions, decorator arguments), the user's `redactor` callable and the
`content_max_length` cut. This module is a base helper: it imports nothing of the SDK.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sdk.state import STATE

REDACTED = "[REDACTED]"

_SECRET_KEY_ENDINGS = tuple(
    f"{word}{sep}{key}" if key else word
    for word, key in (
        ("api", "key"),
        ("access", "key"),
        ("private", "key"),
        ("secret", ""),
        ("token", ""),
        ("password", ""),
        ("passwd", ""),
        ("pwd", ""),
        ("passphrase", ""),
        ("credential", ""),
        ("credentials", ""),
        ("auth", ""),
    )
    for sep in (("_", "-", "") if key else ("",))
)
"""The endings of a key in a ``key=value`` pair that make its value a secret (lower-case)."""
_SECRET_WORDS = "(?:" + "|".join(re.escape(ending) for ending in _SECRET_KEY_ENDINGS) + ")"


class BuiltinPattern(NamedTuple):
    """A built-in secret pattern, and the literals a text must hold for it to match.

    The literals are checked first with plain substring tests (C speed): most texts hold none,
    and then the regular expression never runs.
    """

    pattern: str
    replacement: str
    needs: tuple[str, ...]
    """At least one of these is in the text (in the lower-cased text when `lower`)."""
    lower: bool = False
    also: tuple[str, ...] = ()
    """And, when given, at least one of these is in the text."""


BUILTIN_PATTERNS: tuple[BuiltinPattern, ...] = (
    # PEM private keys
    BuiltinPattern(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        REDACTED,
        ("-----BEGIN",),
    ),
    # Authorization values: "Bearer <token>", "Basic <credentials>"
    BuiltinPattern(
        r"\b((?i:bearer|basic))(\s+)[A-Za-z0-9._~+/=-]{8,}", rf"\1\2{REDACTED}", ("bearer", "basic"), True
    ),
    # OpenAI (sk-, sk-proj-, ...) and Anthropic (sk-ant-...) keys; Stripe secret keys
    BuiltinPattern(r"\bsk-[A-Za-z0-9_-]{16,}", REDACTED, ("sk-",)),
    BuiltinPattern(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", REDACTED, ("k_live_", "k_test_")),
    # AWS access key ids
    BuiltinPattern(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", REDACTED, ("AKIA", "ASIA")),
    # GitHub tokens
    BuiltinPattern(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
        REDACTED,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    # Google API keys
    BuiltinPattern(r"\bAIza[0-9A-Za-z_-]{35}", REDACTED, ("AIza",)),
    # Slack tokens and webhooks
    BuiltinPattern(r"\bxox[abprse]-[A-Za-z0-9-]{10,}", REDACTED, ("xox",)),
    BuiltinPattern(
        r"hooks\.slack\.com/services/[A-Za-z0-9/]+", f"hooks.slack.com/services/{REDACTED}", ("hooks.slack",)
    ),
    # JSON Web Tokens
    BuiltinPattern(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", REDACTED, ("eyJ",)),
    # user:password@ in URLs (postgres://admin:pw@db, https://u:p@host)
    BuiltinPattern(
        r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#@:]*:)[^\s/?#@]+@", rf"\1{REDACTED}@", ("@",), also=("://",)
    ),
    # api_key=..., "password": "...", aws_secret_access_key = ..., X-Api-Key: ... (see _key_values)
    BuiltinPattern(
        r"((?i:" + _SECRET_WORDS + r"))(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;&}]{4,})",
        rf"\1\2{REDACTED}",
        ("key", "secret", "token", "passw", "pwd", "passphrase", "credential", "auth"),
        True,
        ("=", ":"),
    ),
)
"""The built-in secret patterns: each replacement keeps what names the secret and drops the secret."""

_BUILTIN_NEEDS_LOWER = tuple(sorted({n for p in BUILTIN_PATTERNS if p.lower for n in p.needs}))
_BUILTIN_NEEDS = tuple(sorted({n for p in BUILTIN_PATTERNS if not p.lower for n in p.needs}))
# The key=value rule, run delimiter first: a regular expression that starts with the key words is
# tried at every position of the text, tens of microseconds for a URL; delimiters are few.
_KV_RULE = BUILTIN_PATTERNS[-1]
_KV_DELIMITER = re.compile(r"[\"']?\s*[:=]\s*[\"']?")
_KV_VALUE = re.compile(r"[^\s\"',;&}]{4,}")
# Of the built-ins, only AWS key ids and Google API keys can be all letters and digits.
_ALNUM_MARKERS = ("AKIA", "ASIA", "AIza")
_NUMBERS = (int, float, bool)
_CLEAN_CACHE_SIZE = 4096
_CLEAN_CACHE_MAX_LENGTH = 256

SECRET_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "auth",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "credential",
    "credentials",
    "private_key",
    "secret_key",
    "access_key",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "bearer_token",
    "client_secret",
    "session_token",
    "sessionid",
    "jsessionid",
    "phpsessid",
    "csrftoken",
    "xsrf_token",
    "signature",
)
"""Keys whose values are secrets (matched as the module docstring says); `scrub_keys` extends them."""

_MIN_SECRET_LENGTH = 8  # shorter text cannot hold any of the built-in patterns


_Rule = tuple[re.Pattern[str], str, BuiltinPattern | None]


def _compile(patterns: Sequence[str]) -> tuple[_Rule, ...]:
    """(regex, replacement, the built-in it comes from or None for the user's own), in order."""
    compiled: list[_Rule] = []
    for pattern in patterns:
        if pattern == "builtin":
            compiled.extend((re.compile(p.pattern), p.replacement, p) for p in BUILTIN_PATTERNS)
        else:
            compiled.append((re.compile(pattern), REDACTED, None))
    return tuple(compiled)


def _may_hold_builtin(text: str) -> str | None:
    """None when no built-in pattern can match `text` (a fast first pass), else the text lower-cased."""
    if text.isalnum():
        return text.lower() if any(marker in text for marker in _ALNUM_MARKERS) else None
    lowered = text.lower()
    for needed in _BUILTIN_NEEDS:
        if needed in text:
            return lowered
    for needed in _BUILTIN_NEEDS_LOWER:
        if needed in lowered:
            return lowered
    return None


def _key_values(text: str) -> str:
    """`text` with the values of secret-named ``key=value`` / ``"key": "value"`` pairs replaced
    (what the last built-in pattern describes, found delimiter first)."""
    out: list[str] = []
    done = 0
    for delimiter in _KV_DELIMITER.finditer(text):
        start = delimiter.start()
        if start < done or not text[max(done, start - 24) : start].lower().endswith(_SECRET_KEY_ENDINGS):
            continue
        value = _KV_VALUE.match(text, delimiter.end())
        if value is None:
            continue
        out.append(text[done : delimiter.end()])
        out.append(REDACTED)
        done = value.end()
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _applies(rule: BuiltinPattern, text: str, lowered: str) -> bool:
    haystack = lowered if rule.lower else text
    if not any(needed in haystack for needed in rule.needs):
        return False
    return not rule.also or any(needed in text for needed in rule.also)


def _detector(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """A first pass over the user's own patterns: one pattern matching wherever any of them does
    (None when there are none; a pattern with global flags or group references cannot be joined,
    and then `_ALWAYS` means every text is scanned)."""
    own = [p for p in patterns if p != "builtin"]
    if not own:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in own))
    except re.error:
        return _ALWAYS


_ALWAYS = re.compile("")


def key_names_secret(key: str, secret_keys: frozenset[str]) -> bool:
    """Whether an attribute or argument name names a secret (see the module docstring)."""
    last = key.rpartition(".")[2].strip().lower().replace("-", "_")
    if last in secret_keys:
        return True
    parts = last.rsplit("_", 2)
    return len(parts) > 1 and (parts[-1] in secret_keys or "_".join(parts[-2:]) in secret_keys)


class Scrubber:
    """Removes secrets from text, attribute values and mappings. Never raises for odd input."""

    __slots__ = ("_builtin", "_clean", "_compiled", "_detect", "_key_cache", "_keys", "_patterns", "enabled")

    def __init__(
        self,
        patterns: Sequence[str] = ("builtin",),
        keys: Iterable[str] = ("builtin",),
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._patterns = tuple(patterns)
        # The built-in patterns are compiled when a text first needs them (most never does: the
        # first pass looks for literals); the user's own are compiled now (a bad one raises here).
        self._compiled: tuple[_Rule, ...] | None = (
            None if self._patterns == ("builtin",) else _compile(patterns)
        )
        self._builtin = "builtin" in patterns
        self._detect = _detector(patterns)
        self._clean: dict[str, None] = {}  # short texts already found clean (values repeat a lot)
        names: set[str] = set()
        for key in keys:
            if key == "builtin":
                names.update(SECRET_KEYS)
            else:
                names.add(str(key).strip().lower().replace("-", "_"))
        self._keys = frozenset(names)
        self._key_cache: dict[str, bool] = {}

    def secret_key(self, key: str) -> bool:
        """Whether values under this key are secrets (cached per key)."""
        found = self._key_cache.get(key)
        if found is None:
            found = key_names_secret(key, self._keys)
            if len(self._key_cache) > 8192:
                self._key_cache.clear()
            self._key_cache[key] = found
        return found

    def text(self, text: str) -> str:
        """`text` with every secret-looking part replaced."""
        if not self.enabled or len(text) < _MIN_SECRET_LENGTH or text in self._clean:
            return text
        lowered = _may_hold_builtin(text) if self._builtin else None
        own = self._detect is not None and self._detect.search(text) is not None
        if lowered is not None or own:
            scrubbed = text
            compiled = self._compiled
            if compiled is None:
                compiled = self._compiled = _compile(self._patterns)
            for pattern, replacement, builtin in compiled:
                if builtin is None:
                    if own:
                        scrubbed = pattern.sub(replacement, scrubbed)
                elif lowered is not None and _applies(builtin, scrubbed, lowered):
                    replaced = (
                        _key_values(scrubbed) if builtin is _KV_RULE else pattern.sub(replacement, scrubbed)
                    )
                    if replaced != scrubbed:
                        scrubbed, lowered = replaced, replaced.lower()
            if scrubbed != text:
                return scrubbed
        if len(text) <= _CLEAN_CACHE_MAX_LENGTH:
            clean = self._clean
            if len(clean) >= _CLEAN_CACHE_SIZE:
                clean.clear()
            clean[text] = None
        return text

    def attribute(self, key: str, value: Any) -> Any:
        """An attribute value as it may leave the process (the same object when nothing changed)."""
        if not self.enabled:
            return value
        if self.secret_key(key):
            if isinstance(value, str):
                return REDACTED
            if isinstance(value, (list, tuple)):
                return tuple(REDACTED for _ in value)
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            scrubbed = tuple(self.text(v) if isinstance(v, str) else v for v in value)
            return value if all(a is b for a, b in zip(scrubbed, value, strict=True)) else scrubbed
        return value

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A scrubbed copy of `attributes`, or None when nothing in them needs scrubbing."""
        if not self.enabled or not attributes:
            return None
        changed: dict[str, Any] | None = None
        known_keys = self._key_cache
        clean_texts = self._clean
        for key, value in attributes.items():
            # Inline fast path (this runs for every attribute of every exported span): a key known
            # not to name a secret, with a number or a text already found clean.
            if known_keys.get(key) is False and (
                value in clean_texts if type(value) is str else type(value) in _NUMBERS
            ):
                continue
            clean = self.attribute(key, value)
            if clean is not value:
                if changed is None:
                    changed = dict(attributes)
                changed[key] = clean
        return changed

    def value(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of `value`: secret-named mapping entries replaced, strings scrubbed."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.text(value)
        if depth > 20:
            return self.text(_short_text(value))
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED
                if self.enabled and self.secret_key(str(k)) and v is not None
                else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return self.text(bytes(value[:65536]).decode("utf-8", "replace"))
        dump = getattr(value, "model_dump", None)  # pydantic models (the clients' types)
        if callable(dump):
            try:
                return self.value(dump(mode="json", exclude_unset=True), depth + 1)
            except Exception:
                pass
        return self.text(_short_text(value))


class Redactor:
    """Captured content: the scrubber, then the user's `redactor` callable, then the length cut."""

    __slots__ = ("_function", "max_length", "scrubber")

    def __init__(
        self,
        patterns: Sequence[str] = ("builtin",),
        function: Callable[[str], str] | None = None,
        max_length: int = 8192,
        keys: Iterable[str] = ("builtin",),
    ) -> None:
        self.scrubber = Scrubber(patterns, keys)
        self._function = function
        self.max_length = max_length

    def text(self, text: str, max_length: int | None = None) -> str:
        """`text` scrubbed, passed through the redactor callable, then cut."""
        text = self.scrubber.text(text)
        if self._function is not None:
            result = self._function(text)
            text = result if isinstance(result, str) else str(result)
        limit = self.max_length if max_length is None else max_length
        if len(text) > limit:
            text = f"{text[:limit]}…[{len(text) - limit} more characters]"
        return text

    def value(self, value: Any) -> Any:
        """A JSON-ready copy of `value`: secret-named entries replaced, every string redacted."""
        return self._walk(self.scrubber.value(value))

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        return value

    def json(self, value: Any) -> str:
        """`value` redacted and encoded as JSON (what the GenAI content attributes hold)."""
        return json.dumps(self.value(value), ensure_ascii=False, separators=(",", ":"))


def _short_text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def redactor_for(config: Any) -> Redactor:
    """The Redactor for a Config's redaction settings (`config` None: the defaults)."""
    if config is None:
        key: tuple[Any, ...] = (("builtin",), None, 8192, ("builtin",))
    else:
        key = (tuple(config.redact_patterns), config.redactor, config.content_max_length, config.scrub_keys)
    return STATE.cached("redactors", key, lambda: Redactor(*key))


def scrubber_for(config: Any) -> Scrubber:
    """The Scrubber for a Config's `redact_patterns`, `scrub_keys` and `scrub` (`config` None: the defaults)."""
    if config is None:
        key: tuple[Any, ...] = (("builtin",), ("builtin",), True)
    else:
        key = (tuple(config.redact_patterns), tuple(config.scrub_keys), config.scrub)
    return STATE.cached("scrubbers", key, lambda: Scrubber(*key))
