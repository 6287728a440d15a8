"""Property tests: whatever the environment, init() keywords or config file hold, load_config
returns a Config or raises ConfigError — never any other exception — and never shows a secret."""

from __future__ import annotations

import datetime
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sdk.settings import SETTINGS, Config, ConfigError, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

ENV_VARS = sorted({var.name for s in SETTINGS.values() for var in s.env})
PER_SESSION = sorted(name for name, s in SETTINGS.items() if s.per_session)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def resolve(kwargs=None, environ=None, cwd: Path | None = None) -> Config | None:
    """load_config; None for a ConfigError. Any other exception propagates and fails the test."""
    try:
        config = load_config(kwargs, environ=environ or {}, cwd=cwd)
    except ConfigError as err:
        str(err)  # the message itself must be buildable
        return None
    config.explain()  # a resolved config can always be shown
    return config


# ---------------------------------------------------------------------------------------------
# Strategies

# Text that parsers accept or nearly accept, mixed with arbitrary text, so both paths get exercised.
PLAUSIBLE_TEXT = st.sampled_from(
    [
        "true", "False", "1", "0", "yes", "off", "auto", "maybe", "",
        "10", "-1", "0.5", "1e400", "nan", "inf", "9" * 30, "1_000",
        "http://localhost:4318", "https://h/otlp/", "http://u:p@h:4318/x?q=1", "http://[::1", "ftp://h",
        "http://h:0", "http://h:99999", "a=b", "a=b,c=d%20e", "a", "=b", "a=\r\n", ",,", "service.name=x",
        "grpc", "http/protobuf", "http/json", "otlp", "console", "none", "file", "zipkin",
        ".", "..", "/", "sessiontrace.toml", "pyproject.toml", "\x00",
    ]
)  # fmt: skip
ENV_TEXT = st.one_of(st.text(max_size=40), PLAUSIBLE_TEXT)


class Odd:
    """Base of the deliberately broken objects below; hypothesis prints them by class name."""

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(f"<{type(self).__name__}>")


class RaisingStr(Odd):
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ fails")


class RaisingBool(Odd):
    def __bool__(self) -> bool:
        raise RuntimeError("__bool__ fails")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ fails")

    __hash__ = object.__hash__


class RaisingPath(Odd, os.PathLike):
    def __fspath__(self) -> str:
        raise RuntimeError("__fspath__ fails")


class RaisingMapping(Odd, Mapping):
    def __getitem__(self, key):
        raise RuntimeError("__getitem__ fails")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("__iter__ fails")

    def __len__(self) -> int:
        raise RuntimeError("__len__ fails")


class RaisingSequence(Odd, Sequence):
    def __getitem__(self, index):
        raise RuntimeError("__getitem__ fails")

    def __len__(self) -> int:
        return 3


class StrSub(str):
    pass


class IntSub(int):
    pass


# Factories, not instances: hypothesis shows a strategy's elements in its repr.
ODD_FACTORIES = (
    RaisingStr,
    RaisingBool,
    RaisingPath,
    RaisingMapping,
    RaisingSequence,
    lambda: StrSub("http://h:4318"),
    lambda: StrSub("x"),
    lambda: IntSub(5),
    lambda: 10**5000,
    lambda: -(10**5000),
    lambda: float("nan"),
    lambda: float("inf"),
    object,
    lambda: type,
    lambda: print,
    lambda: Ellipsis,
    InMemorySpanExporter,
    SpanProcessor,
    lambda: [SpanProcessor(), SpanProcessor()],
    lambda: range(10),
    lambda: range(10**30),
)
ODD_OBJECTS = st.sampled_from(ODD_FACTORIES).map(lambda make: make())

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    PLAUSIBLE_TEXT,
    st.binary(max_size=20),
    st.complex_numbers(),
    st.decimals(),
    st.fractions(),
    st.datetimes(),
    st.timedeltas(),
    st.uuids(),
    st.builds(Path, st.text()),
    ODD_OBJECTS,
)
HASHABLE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), PLAUSIBLE_TEXT, st.binary()
)

# The odd objects get their own branch so they also come up at the top level, not only nested.
ANY_VALUE = st.one_of(
    ODD_OBJECTS,
    SCALARS,
    st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(HASHABLE, children, max_size=3),
            st.frozensets(HASHABLE, max_size=3),
        ),
        max_leaves=8,
    ),
)

# TOML documents: key-value tables serialized by hand (no TOML writer is a dependency).
TOML_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    TOML_TEXT,
    PLAUSIBLE_TEXT.filter(lambda s: "\x00" not in s),
    st.datetimes(),
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(TOML_TEXT, st.sampled_from(list(SETTINGS))), children, max_size=3),
    ),
    max_leaves=6,
)
TOML_TABLES = st.dictionaries(st.one_of(st.sampled_from(list(SETTINGS)), TOML_TEXT), TOML_VALUES, max_size=5)


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # inf, -inf, 1e+16, 0.5 are all TOML
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_table(table: dict[str, object]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())


# Documents assembled from TOML-ish fragments reach the parser's deeper error paths.
TOML_FRAGMENTS = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "[sessiontrace]", "[tool.sessiontrace]", "[tool]", "[[sessiontrace]]", "sessiontrace = 1",
                'service_name = "x"', "enabled = ", "enabled = false", "max_queue_size = 0",
                'headers = { authorization = "Bearer x" }', "headers = 5", 'endpoint = "ftp://x"',
                'config_file = "a"', "span_processors = []", "a.b = 1", '"', "'''", "[", "= 1",
                "x = [1, 'a']", "x = {", "x = 1979-05-27T07:32:00Z", "\ufeff", "# comment",
            ]
        ),
        st.text(max_size=20),
    ),
    max_size=8,
).map("\n".join)  # fmt: skip


@pytest.fixture(scope="module")
def new_folder(tmp_path_factory):
    """Makes a fresh empty folder per example (module-scoped: hypothesis refuses function-scoped fixtures)."""
    base = tmp_path_factory.mktemp("config-properties").resolve()
    return lambda: Path(tempfile.mkdtemp(dir=base))


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    """An empty folder to resolve from, for properties that write no config file."""
    return tmp_path_factory.mktemp("config-empty").resolve()


# ---------------------------------------------------------------------------------------------
# Properties


def test_env_vars_gathered_from_settings():
    """The property tests cover every standard variable the issue names, gathered from SETTINGS."""
    for name in (
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SDK_DISABLED",
        "SESSIONTRACE_CONFIG_FILE",
    ):
        assert name in ENV_VARS


@PROPERTY
@given(env=st.dictionaries(st.sampled_from(ENV_VARS), ENV_TEXT))
def test_any_environment_gives_config_or_config_error(empty, env):
    """Arbitrary text in any of the SDK's environment variables yields a Config or a ConfigError."""
    resolve(environ=env, cwd=empty)


@PROPERTY
@given(kwargs=st.dictionaries(st.sampled_from(list(SETTINGS)), ANY_VALUE, max_size=5))
def test_any_init_keywords_give_config_or_config_error(empty, kwargs):
    """Arbitrary values of arbitrary types for any init() keywords yield a Config or a ConfigError."""
    resolve(kwargs, cwd=empty)


def test_every_odd_object_for_every_keyword(empty):
    """Each deliberately broken object, for every init() keyword and as an override, gives a Config or a ConfigError."""
    base = load_config(environ={}, cwd=empty)
    for name in SETTINGS:
        for make in ODD_FACTORIES:
            resolve({name: make()}, cwd=empty)
            try:
                base.with_overrides({name: make()})
            except ConfigError as err:
                str(err)


@PROPERTY
@given(key=st.text(), value=ANY_VALUE)
def test_any_keyword_name_gives_config_or_config_error(empty, key, value):
    """An arbitrary keyword name yields a Config or a ConfigError; an unknown one always a ConfigError."""
    result = resolve({key: value}, cwd=empty)
    if key not in SETTINGS:
        assert result is None


@PROPERTY
@given(
    overrides=st.dictionaries(st.one_of(st.sampled_from(list(SETTINGS)), st.text()), ANY_VALUE, max_size=3)
)
def test_any_session_overrides_give_config_or_config_error(empty, overrides):
    """Arbitrary per-session overrides yield a Config (only for per-session keys) or a ConfigError."""
    base = load_config(environ={}, cwd=empty)
    try:
        config = base.with_overrides(overrides)
    except ConfigError as err:
        str(err)
        return
    assert set(overrides) <= set(PER_SESSION)
    config.explain()


@PROPERTY
@given(
    document=st.one_of(st.text(), TOML_FRAGMENTS), as_bytes=st.binary(max_size=40), use_bytes=st.booleans()
)
def test_any_toml_document_gives_config_or_config_error(new_folder, document, as_bytes, use_bytes):
    """Any text or bytes in a sessiontrace.toml yields a Config or a ConfigError."""
    folder = new_folder()
    path = folder / "sessiontrace.toml"
    path.write_bytes(as_bytes if use_bytes else document.encode("utf-8", "surrogatepass"))
    resolve(cwd=folder)


@PROPERTY
@given(table=TOML_TABLES, form=st.sampled_from(["top-level", "[sessiontrace]", "pyproject", "named"]))
def test_any_config_table_gives_config_or_config_error(new_folder, table, form):
    """Any key-value table in any config-file form yields a Config or a ConfigError."""
    body_text = toml_table(table)
    if form == "[sessiontrace]":
        body_text = "[sessiontrace]\n" + body_text
    elif form == "pyproject":
        body_text = '[project]\nname = "x"\n\n[tool.sessiontrace]\n' + body_text
    tomllib.loads(body_text)  # the generator writes valid TOML, so the table itself is what is tested

    folder = new_folder()
    name = {"pyproject": "pyproject.toml", "named": "custom.toml"}.get(form, "sessiontrace.toml")
    (folder / name).write_text(body_text, encoding="utf-8")
    config = resolve({"config_file": name} if form == "named" else None, cwd=folder)
    if config is not None:
        assert config.config_file == folder / name
        for key in table:
            assert config.sources[key].detail == str(folder / name)


SECRET_ALPHABET = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=10, max_size=16)
HEADER_NAMES = st.one_of(
    st.sampled_from(["authorization", "x-api-key", "X-Tenant", "Authorization: Bearer", "bad name", ""]),
    st.text(max_size=8),
)


@PROPERTY
@given(
    pairs=st.lists(st.tuples(HEADER_NAMES, st.one_of(SECRET_ALPHABET, st.text(max_size=6))), max_size=4),
    secret=SECRET_ALPHABET,
    separator=st.sampled_from(["=", ":", " ", "=\r\n", "=\x01"]),
    var=st.sampled_from(["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]),
    as_keyword=st.booleans(),
)
def test_header_secret_never_shown(empty, pairs, secret, separator, var, as_keyword):
    """A header value never appears in a ConfigError or explain(), whatever shape the headers have."""
    secret = "QX" + secret  # upper-case letters and digits: never a header name, a layer or a message word
    members = [(name, value) for name, value in pairs] + [("authorization", secret)]
    text = ",".join(f"{name}{separator}{value}" for name, value in members)
    if as_keyword:
        kwargs = {"headers": dict(members)}
        environ = {}
    else:
        kwargs, environ = None, {var: text}
    secrets = [v for _, v in members if len(v) >= 10] + [secret]

    try:
        config = load_config(kwargs, environ=environ, cwd=empty)
    except ConfigError as err:
        shown = str(err)
    else:
        shown = repr(config.explain()) + config.masked("headers") + repr(config)
    for value in secrets:
        assert value not in shown


@PROPERTY
@given(
    value=st.one_of(
        st.integers(),
        st.floats(),
        st.text(),
        st.decimals(allow_nan=True),
        st.fractions(),
        st.uuids(),
        st.timedeltas(),
    )
)
def test_numeric_settings_accept_numbers_or_refuse_cleanly(empty, value):
    """Numbers of any kind for size and duration settings give a Config or a ConfigError."""
    for key in ("max_queue_size", "flush_timeout", "export_interval", "attribute_max_length"):
        resolve({key: value}, cwd=empty)
