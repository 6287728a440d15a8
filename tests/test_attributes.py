"""Attribute conversion: any Python value becomes a valid OpenTelemetry attribute value."""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common._internal import _encode_value

import sdk
from sdk.attributes import to_attribute_value, to_attributes

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# The validator: OpenTelemetry's own cleaning must accept the value unchanged, without a warning,
# and the OTLP encoder must be able to serialize it.


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def otel_warnings() -> Iterator[list[logging.LogRecord]]:
    """Collects what opentelemetry.attributes logs (it warns about values it has to change)."""
    handler = _Records()
    logger = logging.getLogger("opentelemetry.attributes")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _valid_scalar(value: object) -> bool:
    if type(value) is str:
        value.encode("utf-8")  # raises for lone surrogates
        return True
    if type(value) is int:
        return INT64_MIN <= value <= INT64_MAX
    return type(value) in (bool, float)


def assert_valid_attribute(value: object) -> None:
    """`value` is what the OpenTelemetry spec allows as an attribute value, and the SDK agrees."""
    if isinstance(value, list):
        assert len({type(v) for v in value}) <= 1, f"not homogeneous: {value!r}"
        assert all(_valid_scalar(v) for v in value), value
    else:
        assert _valid_scalar(value), f"{type(value).__name__}: {value!r}"
    with otel_warnings() as records:
        # (OpenTelemetry's own cleaner, _clean_attribute_value, is private: absent in 1.43-1.44.)
        attributes = BoundedAttributes(attributes={"k": value}, max_value_len=None)
    assert records == []
    assert same(attributes["k"], value)
    _encode_value(value).SerializeToString()  # the OTLP exporter can send it


# ---------------------------------------------------------------------------------------------
# Odd objects


class RaisingStr:
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")


class RaisingBoth:
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ fails")

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text("<RaisingBoth>")


class RaisingSequence(Sequence):
    def __getitem__(self, index):
        raise RuntimeError("__getitem__ fails")

    def __len__(self) -> int:
        raise RuntimeError("__len__ fails")

    def __repr__(self) -> str:
        return "RaisingSequence()"


class RaisingMapping(Mapping):
    def __getitem__(self, key):
        raise RuntimeError("__getitem__ fails")

    def __iter__(self):
        raise RuntimeError("__iter__ fails")

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "RaisingMapping()"


class Color(enum.IntEnum):
    RED = 1


class Tag(str):
    def __len__(self) -> int:
        raise RuntimeError("odd str subclass")


# ---------------------------------------------------------------------------------------------
# Examples


def test_short_string_passes_unchanged():
    """A string within max_length is returned as is."""
    assert to_attribute_value("hello", 10) == "hello"


def test_long_string_is_truncated_to_max_length():
    """A longer string is cut to exactly max_length characters, the last one an ellipsis."""
    value = to_attribute_value("abcdefghij", 5)
    assert value == "abcd…"
    assert len(value) == 5


def test_tiny_max_lengths_are_respected():
    """max_length 1 leaves just the ellipsis and 0 (or less) leaves nothing: never longer than asked."""
    assert to_attribute_value("abc", 1) == "…"
    assert to_attribute_value("abc", 0) == ""
    assert to_attribute_value("abc", -5) == ""


def test_scalars_keep_their_type():
    """bool, int and float pass through with their exact type (True stays a bool, not 1)."""
    for value in (True, False, 0, -7, INT64_MIN, INT64_MAX, 1.5, float("inf")):
        result = to_attribute_value(value, 10)
        assert same(result, value)
        assert_valid_attribute(result)
    assert math.isnan(to_attribute_value(float("nan"), 10))


def test_int_outside_int64_becomes_text():
    """Ints that do not fit OTLP's int64 become their decimal text (truncated like any string)."""
    assert to_attribute_value(INT64_MAX + 1, 100) == str(INT64_MAX + 1)
    assert to_attribute_value(INT64_MIN - 1, 100) == str(INT64_MIN - 1)
    assert to_attribute_value(10**40, 5) == "1000…"


def test_int_too_long_to_print_still_converts():
    """An int beyond Python's int-to-str digit limit becomes (hex) text instead of raising."""
    value = to_attribute_value(10**5000, 20)
    assert isinstance(value, str)
    assert value.startswith("0x")
    assert len(value) == 20


def test_subclasses_become_plain_types():
    """An IntEnum becomes a plain int and a str subclass a plain str, so exporters see core types."""
    assert type(to_attribute_value(Color.RED, 10)) is int
    assert type(to_attribute_value(Tag.__new__(Tag, "x"), 10)) is str
    assert type(to_attribute_value([Tag.__new__(Tag, "x")], 10)[0]) is str


def test_object_whose_str_raises_uses_repr():
    """An object whose __str__ raises converts through its repr()."""
    value = to_attribute_value(RaisingStr(), 100)
    assert "RaisingStr object" in value


def test_object_whose_str_and_repr_raise_still_converts():
    """An object whose __str__ and __repr__ both raise becomes a placeholder naming its type."""
    assert to_attribute_value(RaisingBoth(), 100) == "<unprintable RaisingBoth>"


def test_homogeneous_lists_pass():
    """Lists (and tuples) of only str, only bool, only int or only float pass as lists."""
    assert to_attribute_value(["a", "b"], 10) == ["a", "b"]
    assert to_attribute_value((True, False), 10) == [True, False]
    assert to_attribute_value([1, 2, 3], 10) == [1, 2, 3]
    assert to_attribute_value([1.5, 2.5], 10) == [1.5, 2.5]
    for value in (["a"], [True], [1], [0.5]):
        assert_valid_attribute(to_attribute_value(value, 10))


def test_strings_in_lists_are_truncated():
    """Each string in a list of strings is truncated to max_length."""
    assert to_attribute_value(["short", "much too long"], 6) == ["short", "much …"]


def test_empty_sequence_is_an_empty_list():
    """An empty list or tuple is a valid (empty) array attribute, not the text '[]'."""
    assert to_attribute_value([], 10) == []
    assert to_attribute_value((), 10) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([1, "a"], "[1, 'a']"),
        ([True, 1], "[True, 1]"),
        ([1, 2.5], "[1, 2.5]"),
        (["a", None], "['a', None]"),
        ([1, 2**64], f"[1, {2**64}]"),
        ([[1], [2]], "[[1], [2]]"),
    ],
)
def test_mixed_lists_become_text(value, text):
    """Lists mixing types (bool with int too), holding None, nested lists or out-of-range ints become text."""
    result = to_attribute_value(value, 100)
    assert result == text
    assert_valid_attribute(result)


def test_bytes_are_decoded_with_replacement():
    """bytes become UTF-8 text; undecodable bytes become U+FFFD."""
    assert to_attribute_value(b"caf\xc3\xa9", 10) == "café"
    assert to_attribute_value(bytearray(b"\xff"), 10) == "\ufffd"


def test_lone_surrogates_are_replaced():
    """Lone surrogates (valid in a Python str, invalid in UTF-8) become U+FFFD so OTLP can encode the value."""
    value = to_attribute_value("a\ud800b", 10)
    assert value == "a\ufffdb"
    assert_valid_attribute(value)
    assert to_attribute_value(["\udcff"], 10) == ["\ufffd"]


def test_mapping_becomes_text():
    """A dict becomes its text."""
    assert to_attribute_value({"a": 1}, 100) == "{'a': 1}"


def test_sequence_that_raises_still_converts():
    """A Sequence whose len/iteration raises falls back to its text."""
    assert to_attribute_value(RaisingSequence(), 100) == "RaisingSequence()"


def test_huge_lazy_sequence_is_not_materialized():
    """A huge range becomes its short text instead of a list of 10**12 items."""
    assert to_attribute_value(range(10**12), 100) == "range(0, 1000000000000)"
    assert to_attribute_value(range(3), 100) == [0, 1, 2]


def test_to_attributes_skips_none_and_stringifies_keys():
    """to_attributes drops None values, turns keys into text and replaces an empty key by '_'."""
    result = to_attributes({"a": 1, "b": None, 3: "x", "": True, RaisingBoth(): 2.0}, 10)
    assert result == {"a": 1, "3": "x", "_": True, "<unprintable RaisingBoth>": 2.0}


def test_to_attributes_of_nothing_is_empty():
    """None or an empty mapping gives an empty dict."""
    assert to_attributes(None, 10) == {}
    assert to_attributes({}, 10) == {}


def test_to_attributes_never_raises_on_broken_mapping():
    """A mapping that cannot be iterated gives an empty dict instead of an exception."""
    assert to_attributes(RaisingMapping(), 10) == {}


def test_session_attributes_of_any_type_reach_the_span(captured):
    """Values of odd types given to sdk.session(attributes=...) arrive on the exported span as valid attributes."""
    attributes = {"big": 2**70, "obj": RaisingStr(), "mixed": [1, "a"], "ok": [1, 2], "text": "x" * 50}
    with sdk.session("odd", attributes=attributes):
        pass
    span = captured.named("odd")
    assert span.attributes["big"] == str(2**70)
    assert span.attributes["mixed"] == "[1, 'a']"
    assert tuple(span.attributes["ok"]) == (1, 2)
    assert "RaisingStr object" in span.attributes["obj"]
    for key in attributes:
        value = span.attributes[key]
        assert_valid_attribute(list(value) if isinstance(value, tuple) else value)


# ---------------------------------------------------------------------------------------------
# Properties

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(max_size=20),
    st.complex_numbers(),
    st.decimals(),
    st.fractions(),
    st.datetimes(),
    st.uuids(),
    st.sampled_from([RaisingStr, RaisingBoth, RaisingSequence, RaisingMapping, object]).map(lambda c: c()),
    st.sampled_from(
        [
            lambda: Color.RED,
            lambda: Tag.__new__(Tag, "t"),
            lambda: 10**5000,
            lambda: range(10**15),
            lambda: type,
        ]
    ).map(lambda make: make()),
)
ANY_VALUE = st.one_of(
    SCALARS,
    st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(st.text(max_size=5), children, max_size=3),
            st.frozensets(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
        ),
        max_leaves=8,
    ),
    # homogeneous lists, which must pass as lists
    st.lists(st.text(), max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.lists(st.integers(), max_size=4),
    st.lists(st.floats(), max_size=4),
)
MAX_LENGTH = st.integers(min_value=1, max_value=40)


@PROPERTY
@given(value=ANY_VALUE, max_length=MAX_LENGTH)
def test_any_value_becomes_valid_attribute(value, max_length):
    """Any value converts to something OpenTelemetry accepts unchanged, with strings at most max_length long."""
    result = to_attribute_value(value, max_length)
    assert_valid_attribute(result)
    for text in result if isinstance(result, list) else [result]:
        if isinstance(text, str):
            assert len(text) <= max_length


@PROPERTY
@given(text=st.text(), max_length=MAX_LENGTH)
def test_strings_are_kept_or_truncated_prefix(text, max_length):
    """A string is kept whole when short enough, else cut to max_length keeping its start."""
    result = to_attribute_value(text, max_length)
    cleaned = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    if len(text) <= max_length:
        assert result == cleaned
    else:
        assert len(result) == max_length
        assert result == cleaned[: max_length - 1] + "…"


@PROPERTY
@given(value=st.integers())
def test_ints_stay_ints_exactly_when_int64(value):
    """An int stays the same int when it fits int64 and becomes its text otherwise."""
    result = to_attribute_value(value, 10_000)
    if INT64_MIN <= value <= INT64_MAX:
        assert same(result, value)
    else:
        assert result == str(value)


@PROPERTY
@given(
    values=st.one_of(
        st.none(),
        st.dictionaries(st.one_of(st.text(), st.integers(), st.none(), st.floats()), ANY_VALUE, max_size=5),
        st.just(RaisingMapping()),
    ),
    max_length=MAX_LENGTH,
)
def test_to_attributes_never_raises_and_gives_valid_attributes(values, max_length):
    """to_attributes never raises and returns non-empty string keys with valid values."""
    result = to_attributes(values, max_length)
    for key, value in result.items():
        assert type(key) is str
        assert key
        key.encode("utf-8")
        assert_valid_attribute(value)
