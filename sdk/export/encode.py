"""OTLP protobuf encoding of spans, written straight to bytes: the export worker's main cost.

`encode_spans(spans)` returns the bytes of the ``ExportTraceServiceRequest`` that OpenTelemetry's
``encode_spans(spans).SerializeToString()`` returns — the same message (tests compare them field by
field) — in about a third of the time. OpenTelemetry's encoder builds one protobuf object per
span, attribute and value and hashes each span's resource (a JSON dump of its attributes) to group
spans; here the common values (strings, booleans, integers, floats, and sequences of those) are
written as wire bytes directly, repeated attribute pairs and each resource and scope are encoded
once, and anything else (mappings, bytes, values OpenTelemetry would refuse) goes through
OpenTelemetry's own encoder, so the result never differs.

The export worker spends its time here, on the SDK's thread; a faster encoder is what lets it keep
up with many threads ending spans (docs/performance.md, the sustained-load benchmark).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from sdk.otel_internals import encode_attribute, span_fields, span_origin
from sdk.state import STATE

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_SMALL = [bytes((i,)) for i in range(128)]
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK.
_FLAGS_LOCAL = b"\x85\x01" + _fixed32(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _fixed32(0x300)
_LINK_FLAGS_LOCAL = b"\x35" + _fixed32(0x100)
_LINK_FLAGS_REMOTE = b"\x35" + _fixed32(0x300)
_EMPTY_STATUS = b"\x7a\x00"  # Span.status present, code UNSET, no message
_KIND = {0: b"\x30\x01", 1: b"\x30\x02", 2: b"\x30\x03", 3: b"\x30\x04", 4: b"\x30\x05"}

_CACHE_MAX = 4096
_PAIRS = "encoded attributes"
"""STATE.caches kind: (key, type, value) -> one encoded KeyValue (its bytes)."""
_GROUPS = "encoded resources and scopes"
"""STATE.caches kind: id(resource or scope) -> (it, its encoded bytes)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _any_value(value: Any) -> bytes | None:
    """An AnyValue's bytes for the common types; None for anything left to OpenTelemetry's encoder."""
    kind = type(value)
    if kind is str:
        try:
            return _field(b"\x0a", value.encode("utf-8"))
        except UnicodeEncodeError:
            return None
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return b"\x18" + _varint(value if value >= 0 else value + (1 << 64))
        return None
    if kind is float:
        return b"\x21" + _double(value)
    if kind is tuple or kind is list:
        items = []
        for item in value:
            encoded = _any_value(item)
            if encoded is None:
                return None
            items.append(_field(b"\x0a", encoded))
        return _field(b"\x2a", b"".join(items))
    return None


def _key_value(key: str, value: Any) -> bytes:
    """One KeyValue's bytes (empty when OpenTelemetry's encoder would skip the attribute)."""
    kind = type(value)
    cacheable = kind is str or kind is bool or kind is int or kind is float
    pairs = STATE.caches[_PAIRS]
    if cacheable:
        found = pairs.get((key, kind, value))  # the type too: 1, 1.0 and True are equal keys
        if found is not None:
            return bytes(found)
    encoded = _any_value(value)
    if encoded is None:
        return _fallback_key_value(key, value)
    try:
        key_bytes = _field(b"\x0a", key.encode("utf-8")) if key else b""
    except UnicodeEncodeError:
        return _fallback_key_value(key, value)
    pair = key_bytes + _field(b"\x12", encoded)
    if cacheable and (kind is not str or len(value) <= 256):
        if len(pairs) >= _CACHE_MAX:
            pairs.clear()
        pairs[(key, kind, value)] = pair
    return pair


def _fallback_key_value(key: str, value: Any) -> bytes:
    return encode_attribute(key, value)  # logs and skips what it cannot encode, as OpenTelemetry would


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        pair = _key_value(key, value)
        if pair:  # empty: OpenTelemetry's encoder skipped it (and logged why)
            parts.append(_field(tag, pair))
    return b"".join(parts)


def _cached(obj: object, encode: Any) -> bytes:
    groups = STATE.caches[_GROUPS]
    found = groups.get(id(obj))
    if found is not None and found[0] is obj:
        return bytes(found[1])
    data: bytes = encode(obj)
    if len(groups) >= 256:
        groups.clear()
    groups[id(obj)] = (obj, data)
    return data


def _resource(resource: Any) -> bytes:
    """Resource message bytes (its attributes)."""
    return _attributes(b"\x0a", resource.attributes)


def _scope(scope: Any) -> bytes:
    """InstrumentationScope message bytes."""
    if scope is None:
        return b""
    out = b""
    if scope.name:
        out += _field(b"\x0a", scope.name.encode("utf-8"))
    if scope.version:
        out += _field(b"\x12", scope.version.encode("utf-8"))
    return out + _attributes(b"\x1a", scope.attributes)


def _trace_state(state: Any) -> bytes:
    if not state:
        return b""
    text = ",".join(f"{key}={value}" for key, value in state.items())
    return _field(b"\x1a", text.encode("utf-8")) if text else b""


def _events(events: Sequence[Any]) -> bytes:
    parts = []
    for event in events:
        body = b""
        if event.timestamp:
            body += b"\x09" + _fixed64(event.timestamp)
        if event.name:
            body += _field(b"\x12", event.name.encode("utf-8"))
        body += _attributes(b"\x1a", event.attributes)
        dropped = event.dropped_attributes
        if dropped:
            body += b"\x20" + _varint(dropped)
        parts.append(_field(b"\x5a", body))
    return b"".join(parts)


def _links(links: Sequence[Any]) -> bytes:
    parts = []
    for link in links:
        context = link.context
        body = (
            b"\x0a\x10"
            + context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + context.span_id.to_bytes(8, "big")
        )
        body += _attributes(b"\x22", link.attributes)
        dropped = link.dropped_attributes
        if dropped:
            body += b"\x28" + _varint(dropped)
        body += _LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL
        parts.append(_field(b"\x6a", body))
    return b"".join(parts)


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    code = status.status_code.value
    message = status.description
    if not code and not message:
        return _EMPTY_STATUS
    body = _field(b"\x12", message.encode("utf-8")) if message else b""
    if code:
        body += b"\x18" + _SMALL[code]
    return _field(b"\x7a", body)


def encode_span(span: ReadableSpan) -> bytes:
    """One Span message's bytes."""
    context, parent, name, kind, start_time, end_time, attributes, events, links, status = span_fields(span)
    assert context is not None
    out = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        _trace_state(context.trace_state),
    ]
    if parent is not None:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if name:
        out.append(_field(b"\x2a", name.encode("utf-8")))
    out.append(_KIND[kind.value])
    if start_time:
        out.append(b"\x39" + _fixed64(start_time))
    if end_time:
        out.append(b"\x41" + _fixed64(end_time))
    out.append(_attributes(b"\x4a", attributes))
    dropped = getattr(attributes, "dropped", 0)
    if dropped:
        out.append(b"\x50" + _varint(dropped))
    if events:
        out.append(_events(events))
    dropped = getattr(events, "dropped", 0)
    if dropped:
        out.append(b"\x60" + _varint(dropped))
    if links:
        out.append(_links(links))
    dropped = getattr(links, "dropped", 0)
    if dropped:
        out.append(b"\x70" + _varint(dropped))
    out.append(_status(status))
    out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(out)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The ``ExportTraceServiceRequest`` bytes for `spans`, grouped by resource and scope as
    OpenTelemetry groups them (equal resources and scopes share one group)."""
    groups: dict[tuple[bytes, str], dict[tuple[bytes, str], list[bytes]]] = {}
    for span in spans:
        resource, scope = span_origin(span)
        scope = scope or None
        resource_key = (_cached(resource, _resource), resource.schema_url or "")
        scope_key = (_cached(scope, _scope), scope.schema_url or "") if scope is not None else (b"", "")
        by_scope = groups.get(resource_key)
        if by_scope is None:
            by_scope = groups[resource_key] = {}
        encoded = by_scope.get(scope_key)
        if encoded is None:
            encoded = by_scope[scope_key] = []
        encoded.append(_field(b"\x12", encode_span(span)))
    out = []
    for (resource_bytes, resource_schema), by_scope in groups.items():
        body = [_field(b"\x0a", resource_bytes)]
        for (scope_bytes, scope_schema), encoded in by_scope.items():
            scope_body = _field(b"\x0a", scope_bytes) + b"".join(encoded)
            if scope_schema:
                scope_body += _field(b"\x1a", scope_schema.encode("utf-8"))
            body.append(_field(b"\x12", scope_body))
        if resource_schema:
            body.append(_field(b"\x1a", resource_schema.encode("utf-8")))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)
