"""Every use of a private OpenTelemetry name, in one place, each with a public-API fallback.

The SDK reads and writes a few of OpenTelemetry's private members where the public API would copy,
lock or validate again on every span, and uses a few private modules for which no public one
exists. Any minor release may change them, so no other module of the SDK touches them: they use
the functions here. `INTERNALS` lists each one: the names, why the SDK uses them, the
opentelemetry-sdk versions they were checked in, and the public path taken when they are missing.

Which path is taken is decided once per process, by looking at OpenTelemetry's classes (their
attributes and the names their methods' code uses: cheap, nothing is instantiated), when this
module is imported (the span path binds its functions then) or, for the logs and metrics SDKs, when
they are first used. `init()` calls `check()`: each internal found missing is said once in a
warning, counted in ``sdk.stats().otel_fallbacks`` and listed by ``python -m sdk doctor``.

The environment variable ``SESSIONTRACE_HIDE_OTEL_INTERNALS`` (keys of `INTERNALS` separated by
commas, or ``all``: every internal that has a public fallback) makes the SDK treat those internals
as missing: the test suite and the benchmarks run the public paths with it (docs/compatibility.md).
"""

from __future__ import annotations

import contextvars
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import opentelemetry.context as otel_context
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan, SynchronousMultiSpanProcessor

from sdk.guard import warn_once
from sdk.state import STATE
from sdk.version import release

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanContext, Status

HIDE_ENV = "SESSIONTRACE_HIDE_OTEL_INTERNALS"


class Internal(NamedTuple):
    """One private OpenTelemetry name (or group of names) the SDK uses."""

    key: str
    names: str
    why: str
    checked: str
    """The opentelemetry-sdk versions it was checked in (all releases between them were probed)."""
    fallback: str
    """What the SDK does without it."""
    since: str = ""
    """The first opentelemetry-sdk release that has it, when a supported release lacks it: missing
    before that is expected (no warning; doctor lists it), missing after it is a release the SDK
    does not know (a warning)."""


INTERNALS = (
    Internal(
        "span_fields",
        "Span._context; ReadableSpan._context, _parent, _name, _kind, _start_time, _end_time, "
        "_attributes, _events, _links, _status, _resource, _instrumentation_scope",
        "read a span's fields without the copies its public properties make: the trace id of every "
        "started span (which session it belongs to), and every field of every exported span (the "
        "OTLP encoder)",
        "1.30.0-1.45.2 (set in ReadableSpan.__init__ in all)",
        "the public properties (get_span_context(), attributes, events, links, dropped_*), which copy",
    ),
    Internal(
        "bounded_attributes",
        "Span._attributes -> BoundedAttributes._dict, _immutable, _lock",
        "write session.id and the SDK's own already-valid attributes without the span's lock and a "
        "second validation (every span), and put session.id back as the newest key",
        "1.30.0-1.45.2 (_lock an RLock before 1.44, a Lock since; Span.end sets _immutable only "
        "from 1.43: the SDK writes only spans it started, before they end)",
        "Span.set_attribute(s): takes the span's lock and validates each value again",
    ),
    Internal(
        "on_ending",
        "SpanProcessor._on_ending (called by Span.end on the provider's span processor)",
        "put session.id back on a span that lost it to the attribute-count limit (128 by default), "
        "before the span is frozen and handed to the exporters",
        "called by Span.end in 1.40.0-1.45.2; absent in 1.30.0-1.39.1",
        "the span the SDK's pipeline exports is a copy (public ReadableSpan) with session.id put "
        "back; span processors the application added see the span as OpenTelemetry ended it",
        since="1.40.0",
    ),
    Internal(
        "tracer_configurator",
        "opentelemetry.sdk.trace._TracerConfig, TracerProvider._set_tracer_configurator",
        "init(enabled=False): every tracer of the SDK's provider makes non-recording spans",
        "1.40.0-1.45.2 (1.40 reads it at each start_span, 1.41+ pushes it to the cached tracers); "
        "absent in 1.30.0-1.39.1",
        "each tracer's public `sampler` is set to ALWAYS_OFF (and back to the provider's sampler)",
        since="1.40.0",
    ),
    Internal(
        "provider_resource",
        "TracerProvider._resource (written); Tracer._set_resource where it exists (1.44+)",
        "init() with new settings replaces the resource of the provider, as `provider.resource` "
        "and new tracers see it",
        "_resource 1.30.0-1.45.2; _set_resource 1.44.0-1.45.2 (before it, the public attribute "
        "Tracer.resource, which is all _set_resource sets)",
        "every tracer gets the new resource through its public `resource` attribute, new ones as "
        "they are made; `provider.resource` keeps the first resource (the SDK never reads it)",
    ),
    Internal(
        "runtime_context_detach",
        "opentelemetry.context._RUNTIME_CONTEXT.detach",
        "detach a context token that belongs to another context (a generator closed from another "
        "task) without OpenTelemetry logging 'Failed to detach context'",
        "1.30.0-1.45.2 (ValueError for another context's token in all)",
        "ContextVar.reset on the token (what the default contextvars runtime context does), else "
        "opentelemetry.context.detach, which logs the failure",
    ),
    Internal(
        "suppress_instrumentation_key",
        "opentelemetry.context._SUPPRESS_INSTRUMENTATION_KEY",
        "the SDK's own export requests are not traced by the HTTP instrumentations",
        "1.30.0-1.45.2",
        "the context that opentelemetry-instrumentation's public suppress_instrumentation() sets, "
        "when that package (which the HTTP instrumentations need) is installed; else nothing to do",
    ),
    Internal(
        "encode_attributes",
        "opentelemetry.exporter.otlp.proto.common._internal._encode_attributes",
        "encode the rare attribute values the SDK's encoder leaves to OpenTelemetry's (mappings, "
        "bytes, mixed sequences), exactly as OpenTelemetry would",
        "1.30.0-1.45.2 (returns None for no attributes up to 1.42, [] from 1.43)",
        "the public trace_encoder.encode_spans of a one-attribute span (slower)",
    ),
    Internal(
        "proxy_meter_provider",
        "opentelemetry.metrics._internal._ProxyMeterProvider (its class name)",
        "tell that no global MeterProvider is set yet, so that the SDK's becomes the global one",
        "1.30.0-1.45.2",
        "the global provider is taken as unset when it is the metrics API's own placeholder (its "
        "class comes from the API package and is not the public NoOpMeterProvider)",
    ),
    Internal(
        "exporter_endpoint",
        "OTLPSpanExporter._endpoint (opentelemetry-exporter-otlp-proto-http and -grpc)",
        "export_mode auto: tell whether the application's own OTLP exporter already sends to the "
        "SDK's endpoint (sdk/foreign.py), so that its spans are not exported twice",
        "1.30.0-1.45.2 (the resolved endpoint: the URL over HTTP, host:port over gRPC)",
        "none: the application's exporter counts as an unknown destination (the SDK exports "
        "itself, and says so once)",
    ),
    Internal(
        "log_emit_keywords",
        "opentelemetry.sdk._logs.Logger.emit(timestamp=, observed_timestamp=, context=, ...)",
        "export_logs: emit a log record with the trace context of the code that logged it",
        "1.38.0-1.45.2; 1.30.0-1.37.0 take only a LogRecord",
        "a LogRecord is built and emitted (opentelemetry.sdk._logs' up to 1.38, the API's from 1.39; "
        "with context= from 1.35, trace_id/span_id/trace_flags before)",
        since="1.38.0",
    ),
    Internal(
        "logs_sdk",
        "opentelemetry.sdk._logs (LoggerProvider), opentelemetry.sdk._logs.export "
        "(BatchLogRecordProcessor), opentelemetry._logs (SeverityNumber), "
        "opentelemetry.exporter.otlp.proto.{http,grpc}._log_exporter (OTLPLogExporter)",
        "export_logs: OpenTelemetry's logs SDK has no public module in any release",
        "1.30.0-1.45.2",
        "none: export_logs is off, with a warning (log correlation still works)",
    ),
    Internal(
        "metric_reader_hook",
        "MetricReader._receive_metrics (the abstract method a custom reader implements: "
        "sdk/export/metrics.py)",
        "the SDK's metrics reader, whose destination and interval change on re-init",
        "1.30.0-1.45.2 (same signature)",
        "none: metrics are not exported, with a warning",
    ),
)
"""Every private OpenTelemetry name the SDK uses (docs/compatibility.md shows this table)."""

BY_KEY: Mapping[str, Internal] = {internal.key: internal for internal in INTERNALS}

TRACE_KEYS = (
    "span_fields",
    "bounded_attributes",
    "on_ending",
    "tracer_configurator",
    "provider_resource",
    "runtime_context_detach",
    "suppress_instrumentation_key",
)
"""The internals `check()` looks at on every init() (the others: when their feature is used)."""


NO_PUBLIC_FALLBACK = ("logs_sdk", "metric_reader_hook", "exporter_endpoint")
"""Internals without which a feature is off (export, or telling an exporter's destination): ``all`` in
HIDE_ENV leaves them alone."""


def _hidden(key: str) -> bool:
    value = os.environ.get(HIDE_ENV, "")
    if not value:
        return False
    keys = {part.strip() for part in value.split(",")}
    return key in keys or ("all" in keys and key not in NO_PUBLIC_FALLBACK)


def _code_names(function: Any) -> frozenset[str]:
    code = getattr(function, "__code__", None)
    return frozenset(code.co_names) if code is not None else frozenset()


_SPAN_FIELDS = (
    "_context",
    "_parent",
    "_name",
    "_kind",
    "_start_time",
    "_end_time",
    "_attributes",
    "_events",
    "_links",
    "_status",
)
_SPAN_ORIGIN = ("_resource", "_instrumentation_scope")


def _probe_span_fields() -> bool:
    return {*_SPAN_FIELDS, *_SPAN_ORIGIN} <= _code_names(ReadableSpan.__init__)


def _probe_bounded_attributes() -> bool:
    return {"_dict", "_immutable", "_lock"} <= _code_names(BoundedAttributes.__init__) and (
        "_attributes" in _code_names(sdk_trace.Span.__init__)
    )


def _probe_on_ending() -> bool:
    return (
        "_on_ending" in _code_names(sdk_trace.Span.end)
        and callable(getattr(SynchronousMultiSpanProcessor, "_on_ending", None))
        and _probe_bounded_attributes()
    )


def _probe_tracer_configurator() -> bool:
    return hasattr(sdk_trace, "_TracerConfig") and callable(
        getattr(sdk_trace.TracerProvider, "_set_tracer_configurator", None)
    )


def _probe_provider_resource() -> bool:
    return "_resource" in _code_names(sdk_trace.TracerProvider.__init__) and (
        "_resource" in _code_names(getattr(vars(sdk_trace.TracerProvider).get("resource"), "fget", None))
    )


def _probe_runtime_context_detach() -> bool:
    return callable(getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "detach", None))


def _probe_suppress_key() -> bool:
    return isinstance(getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None), str)


def _probe_encode_attributes() -> bool:
    try:
        from opentelemetry.exporter.otlp.proto.common import _internal
    except ImportError:
        return False
    return callable(getattr(_internal, "_encode_attributes", None))


def _probe_proxy_meter_provider() -> bool:
    from opentelemetry.metrics import _internal

    return isinstance(getattr(_internal, "_ProxyMeterProvider", None), type)


def _probe_exporter_endpoint() -> bool:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return "_endpoint" in _code_names(OTLPSpanExporter.__init__)


def _probe_log_emit_keywords() -> bool:
    import inspect

    if not _probe_logs_sdk():
        return False
    from opentelemetry.sdk import _logs

    try:
        parameters = inspect.signature(_logs.Logger.emit).parameters
    except (TypeError, ValueError):
        return False
    return {"timestamp", "observed_timestamp", "context", "body", "attributes"} <= set(parameters)


def _probe_logs_sdk() -> bool:
    try:
        from opentelemetry import _logs as api_logs
        from opentelemetry.sdk import _logs
        from opentelemetry.sdk._logs import export
    except ImportError:
        return False
    return all(
        (
            hasattr(_logs, "LoggerProvider"),
            hasattr(export, "BatchLogRecordProcessor"),
            hasattr(api_logs, "SeverityNumber"),
        )
    )


def _probe_metric_reader_hook() -> bool:
    from opentelemetry.sdk.metrics.export import MetricReader

    return "_receive_metrics" in getattr(MetricReader, "__abstractmethods__", ())


_PROBES: Mapping[str, Callable[[], bool]] = {
    "span_fields": _probe_span_fields,
    "bounded_attributes": _probe_bounded_attributes,
    "on_ending": _probe_on_ending,
    "tracer_configurator": _probe_tracer_configurator,
    "provider_resource": _probe_provider_resource,
    "runtime_context_detach": _probe_runtime_context_detach,
    "suppress_instrumentation_key": _probe_suppress_key,
    "encode_attributes": _probe_encode_attributes,
    "proxy_meter_provider": _probe_proxy_meter_provider,
    "exporter_endpoint": _probe_exporter_endpoint,
    "log_emit_keywords": _probe_log_emit_keywords,
    "logs_sdk": _probe_logs_sdk,
    "metric_reader_hook": _probe_metric_reader_hook,
}


def _probe(key: str) -> bool:
    if _hidden(key):
        return False
    try:
        return _PROBES[key]()
    except Exception:
        return False


def available(key: str) -> bool:
    """Whether the internal `key` of `INTERNALS` is there (and not hidden); else its fallback is used.

    Checked once per process (the installed OpenTelemetry does not change); a missing one is
    reported (a warning once, ``sdk.stats().otel_fallbacks``) the first time this is asked.
    """
    found = STATE.cached(_CACHE, key, lambda: _probe(key))
    if not found:
        _report(key)
    return found


_CACHE = "otel internals"
"""STATE.caches kind: internal key -> whether it is there."""


def _report(key: str) -> None:
    if key in STATE.otel_fallbacks:
        return
    STATE.otel_fallbacks.add(key)
    internal = BY_KEY[key]
    if not _hidden(key) and expected_missing(internal):
        return  # a supported release from before the internal existed: docs/compatibility.md says so
    state = "is hidden" if _hidden(key) else "is not there"
    # All in the message itself (logged without arguments): one distinct message per internal.
    warn_once(
        f"otel-internal-{key}",
        f"sessiontrace: opentelemetry-sdk {otel_version()}: {internal.names} {state}; the SDK uses its "
        f"fallback: {internal.fallback} (see python -m sdk doctor and docs/compatibility.md)",
    )


def expected_missing(internal: Internal) -> bool:
    """Whether the installed OpenTelemetry is older than the first release with `internal`."""
    return bool(internal.since) and release(otel_version()) < release(internal.since)


def check() -> list[str]:
    """Look at the internals the span path uses (init() calls this); the keys of those missing."""
    return [key for key in TRACE_KEYS if not available(key)]


def status() -> list[tuple[Internal, bool]]:
    """Every internal with whether it is there (doctor: the logs and metrics SDKs are imported)."""
    return [(internal, available(internal.key)) for internal in INTERNALS]


def otel_version() -> str:
    """The installed opentelemetry-sdk's version."""
    from opentelemetry.sdk.version import __version__

    return str(__version__)


# ---------------------------------------------------------------------------------------------
# Spans: the fast paths are bound when this module is imported (the span path calls them).

_FAST_SPANS = _probe("span_fields")
_FAST_ATTRIBUTES = _probe("bounded_attributes")
RESTORES_BEFORE_END = _probe("on_ending")
"""Whether a span's lost attribute is put back in place as it ends (else: in the exported copy)."""


def _trace_id_public(span: Any) -> int:
    return int(span.get_span_context().trace_id)


span_trace_id: Callable[[Any], int] = (
    operator.attrgetter("_context.trace_id") if _FAST_SPANS else _trace_id_public
)
"""The trace id of a span the OpenTelemetry SDK started."""


class _Counted(dict[str, Any]):
    """A span's attributes with the number dropped, as BoundedAttributes has it."""

    dropped = 0


class _CountedList(list[Any]):
    dropped = 0


def _fields_public(
    span: ReadableSpan,
) -> tuple[SpanContext | None, SpanContext | None, str, Any, int | None, int | None, Any, Any, Any, Status]:
    attributes: Any = span.attributes or {}
    events: Any = span.events
    links: Any = span.links
    # Copied only to carry a count (readers take a missing `dropped` as 0).
    if span.dropped_attributes:
        attributes = _Counted(attributes)
        attributes.dropped = span.dropped_attributes
    if span.dropped_events:
        events = _CountedList(events)
        events.dropped = span.dropped_events
    if span.dropped_links:
        links = _CountedList(links)
        links.dropped = span.dropped_links
    return (
        span.context,
        span.parent,
        span.name,
        span.kind,
        span.start_time,
        span.end_time,
        attributes,
        events,
        links,
        span.status,
    )


span_fields: Callable[[ReadableSpan], tuple[Any, ...]] = (
    operator.attrgetter(*_SPAN_FIELDS) if _FAST_SPANS else _fields_public
)
"""(context, parent, name, kind, start_time, end_time, attributes, events, links, status) of a
span; the attributes, events and links may have a ``dropped`` count (read it with
``getattr(x, "dropped", 0)``)."""


def _origin_public(span: ReadableSpan) -> tuple[Resource, Any]:
    return span.resource, span.instrumentation_scope


span_origin: Callable[[ReadableSpan], tuple[Any, Any]] = (
    operator.attrgetter(*_SPAN_ORIGIN) if _FAST_SPANS else _origin_public
)
"""(resource, instrumentation scope) of a span."""


def _plain_attributes_fast(attributes: Any) -> Mapping[str, Any]:
    # `BoundedAttributes._dict`: its Mapping methods are Python code, the dict's are C.
    return attributes._dict if type(attributes) is BoundedAttributes else attributes or {}


def _plain_attributes_public(attributes: Any) -> Mapping[str, Any]:
    return attributes or {}


plain_attributes: Callable[[Any], Mapping[str, Any]] = (
    _plain_attributes_fast if _FAST_ATTRIBUTES else _plain_attributes_public
)
"""The mapping to read an ended span's attributes from (the attributes `span_fields` gives; only
read, never written: the span is frozen)."""


def _write_attributes_fast(span: Any, attributes: Mapping[str, Any]) -> None:
    bounded = getattr(span, "_attributes", None)
    if type(bounded) is BoundedAttributes and not bounded._immutable and bounded.max_value_len is None:
        limit = bounded.maxlen
        if limit is None or len(bounded._dict) + len(attributes) <= limit:
            bounded._dict.update(attributes)
            return
    span.set_attributes(attributes)


def _write_attributes_public(span: Any, attributes: Mapping[str, Any]) -> None:
    span.set_attributes(attributes)


write_attributes: Callable[[Any, Mapping[str, Any]], None] = (
    _write_attributes_fast if _FAST_ATTRIBUTES else _write_attributes_public
)
"""Put already-valid attributes on a recording span the SDK has just started (or is ending).

`Span.set_attribute` takes a lock and validates every value again. For values the SDK produced
(or constant keys and strings) neither is needed, and this runs for every span: they are written
straight into the span's attribute dict, within its attribute-count limit (each dict write is
atomic; the SDK writes only spans it started, at start and at end). Anything else goes through
the public API."""


def _set_attribute_fast(span: Any, key: str, value: Any) -> None:
    bounded = span._attributes
    if (
        type(bounded) is BoundedAttributes
        and not bounded._immutable
        and bounded.max_value_len is None
        and (bounded.maxlen is None or len(bounded._dict) < bounded.maxlen)
    ):
        bounded._dict[key] = value
    else:
        span.set_attribute(key, value)


def _set_attribute_public(span: Any, key: str, value: Any) -> None:
    span.set_attribute(key, value)


set_attribute: Callable[[Any, str, Any], None] = (
    _set_attribute_fast if _FAST_ATTRIBUTES else _set_attribute_public
)
"""`write_attributes` for one key (session.id on every started span)."""


class EndingSpanProcessor(SynchronousMultiSpanProcessor):
    """A multi-span processor that keeps one attribute through the attribute-count limit.

    OpenTelemetry drops a span's oldest attribute past its limit, and an attribute set at start is
    among the oldest. Where Span.end calls `_on_ending` before freezing the span, `put_back(span)`
    runs there for a span that lost `kept_key`; elsewhere the subclass puts it back in the copy it
    exports (`copy_with_attribute`). `fans_out` tells whether the application added processors.
    """

    kept_key = ""
    fans_out = False

    def add_span_processor(self, span_processor: sdk_trace.SpanProcessor) -> None:
        """Add an application's processor (they run after the SDK's own work)."""
        super().add_span_processor(span_processor)
        self.fans_out = True

    def added(self) -> tuple[sdk_trace.SpanProcessor, ...]:
        """The processors added with `add_span_processor` (the application's, on the SDK's provider)."""
        # `_span_processors`: the processors' tuple in every release checked (1.30.0-1.45.2).
        return tuple(self._span_processors)

    def put_back(self, span: sdk_trace.Span) -> None:
        """Put `kept_key` back on a span that lost it (the subclass knows its value)."""

    def _on_ending(self, span: sdk_trace.Span) -> None:
        if RESTORES_BEFORE_END:
            attrs = span._attributes
            if type(attrs) is BoundedAttributes and attrs.dropped and self.kept_key not in attrs._dict:
                self.put_back(span)
        if self.fans_out:
            super()._on_ending(span)


def put_back_attribute(span: sdk_trace.Span, key: str, value: Any) -> None:
    """Set `key` as the newest attribute of an ending span, within its limit (the oldest goes)."""
    attrs = span._attributes
    if type(attrs) is not BoundedAttributes:
        return
    with attrs._lock:
        if attrs.maxlen is not None and len(attrs._dict) >= attrs.maxlen:
            del attrs._dict[next(iter(attrs._dict))]
        attrs._dict[key] = value


def lost_attribute(span: ReadableSpan, key: str) -> bool:
    """Whether an ended span dropped attributes and `key` is not among those it kept (public API)."""
    return bool(span.dropped_attributes) and key not in (span.attributes or {})


def copy_with_attribute(span: ReadableSpan, key: str, value: Any) -> ReadableSpan:
    """A copy of an ended span with `key` as its newest attribute (the oldest dropped for it)."""
    from opentelemetry.sdk.util import BoundedList

    attributes = dict(span.attributes or {})
    attributes.pop(key, None)
    dropped = span.dropped_attributes
    if attributes and dropped:
        del attributes[next(iter(attributes))]
        dropped += 1
    attributes[key] = value
    bounded = BoundedAttributes(maxlen=None, attributes=attributes, immutable=True)
    bounded.dropped = dropped
    events = BoundedList.from_seq(len(span.events), span.events)
    events.dropped = span.dropped_events
    links = BoundedList.from_seq(len(span.links), span.links)
    links.dropped = span.dropped_links
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=bounded,
        events=events,
        links=links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# ---------------------------------------------------------------------------------------------
# The tracer provider


def set_tracers_enabled(provider: sdk_trace.TracerProvider, tracers: Iterable[Any], enabled: bool) -> None:
    """Make the provider's tracers record spans or not (`tracers`: every tracer it has made)."""
    if available("tracer_configurator"):
        config = sdk_trace._TracerConfig(is_enabled=enabled)  # type: ignore[attr-defined,unused-ignore]
        provider._set_tracer_configurator(tracer_configurator=lambda _scope: config)  # type: ignore[attr-defined,unused-ignore]
        return
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    for tracer in tracers:
        tracer.sampler = provider.sampler if enabled else ALWAYS_OFF


def set_provider_resource(provider: sdk_trace.TracerProvider, resource: Resource) -> None:
    """Make `resource` the provider's (`provider.resource`, and what new tracers get from it)."""
    if available("provider_resource"):
        provider._resource = resource


def set_tracer_resource(tracer: Any, resource: Resource) -> None:
    """Make `resource` the resource of the spans `tracer` starts from now on."""
    setter = getattr(tracer, "_set_resource", None)
    if setter is not None and not _hidden("provider_resource"):
        setter(resource)
    else:
        tracer.resource = resource


# ---------------------------------------------------------------------------------------------
# Context


def _detach_public(token: object) -> None:
    if isinstance(token, contextvars.Token):
        token.var.reset(token)
    else:
        otel_context.detach(token)  # type: ignore[arg-type]


detach: Callable[[object], None] = (
    otel_context._RUNTIME_CONTEXT.detach  # type: ignore[assignment]
    if _probe("runtime_context_detach")
    else _detach_public
)
"""Detach an OpenTelemetry context token; ValueError (nothing logged) for another context's token."""


def suppressed_context(ctx: Context | None = None) -> Context:
    """`ctx` (default: the current context) with the flag every OpenTelemetry instrumentation reads
    to record nothing: the SDK's own export threads, and calls another instrumentation would double."""
    if ctx is None:
        ctx = otel_context.get_current()
    if available("suppress_instrumentation_key"):
        return otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True, ctx)
    try:
        from opentelemetry.instrumentation.utils import suppress_instrumentation
    except ImportError:
        return ctx
    before = otel_context.get_current()
    with suppress_instrumentation():  # the public way sets the flag in the current context: copy it over
        flags = {key: value for key, value in otel_context.get_current().items() if key not in before}
    for key, value in flags.items():
        ctx = otel_context.set_value(key, value, ctx)
    return ctx


# ---------------------------------------------------------------------------------------------
# Export: the OTLP encoder's fallback, metrics, logs


def exporter_endpoint(exporter: object) -> str | None:
    """Where one of OpenTelemetry's OTLP span exporters sends (the URL over HTTP, host:port over
    gRPC), or None when that is not known."""
    if not available("exporter_endpoint"):
        return None
    endpoint = getattr(exporter, "_endpoint", None)
    return endpoint if isinstance(endpoint, str) and endpoint else None


def encode_attribute(key: str, value: Any) -> bytes:
    """One KeyValue's bytes as OpenTelemetry's encoder makes them (empty when it skips the value)."""
    if available("encode_attributes"):
        from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes

        encoded = _encode_attributes({key: value})
        return encoded[0].SerializeToString() if encoded else b""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.trace import SpanContext

    request = encode_spans([ReadableSpan("", SpanContext(1, 1, False), attributes={key: value})])
    found = request.resource_spans[0].scope_spans[0].spans[0].attributes
    return found[0].SerializeToString() if found else b""


def global_meter_provider_unset() -> bool:
    """Whether no global MeterProvider has been set in this process."""
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    if available("proxy_meter_provider"):
        return type(provider).__name__ == "_ProxyMeterProvider"
    return type(provider).__module__.startswith("opentelemetry.metrics") and not isinstance(
        provider, metrics.NoOpMeterProvider
    )


def metrics_reader_supported() -> bool:
    """Whether a custom MetricReader can be written for this OpenTelemetry (`_receive_metrics`)."""
    return available("metric_reader_hook")


def logs_supported() -> bool:
    """Whether OpenTelemetry's logs SDK is there (export_logs needs it)."""
    return available("logs_sdk")


def new_logger_provider(resource: Resource) -> Any:
    """An OpenTelemetry LoggerProvider with this resource, not shut down at exit by OpenTelemetry."""
    from opentelemetry.sdk._logs import LoggerProvider

    return LoggerProvider(resource=resource, shutdown_on_exit=False)


def new_batch_log_processor(
    exporter: Any, *, schedule_delay_millis: float, max_export_batch_size: int, max_queue_size: int
) -> Any:
    """OpenTelemetry's BatchLogRecordProcessor."""
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    return BatchLogRecordProcessor(
        exporter,
        schedule_delay_millis=schedule_delay_millis,
        max_export_batch_size=max_export_batch_size,
        max_queue_size=max_queue_size,
    )


def log_exporter_class(protocol: str) -> Any:
    """The OTLP log exporter class for ``http/protobuf`` or ``grpc`` (ImportError without the package)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc

        return Grpc
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter


def severity_number(name: str) -> Any:
    """OpenTelemetry's SeverityNumber member of this name (``INFO``, ``WARN``, ...)."""
    from opentelemetry._logs import SeverityNumber

    return SeverityNumber[name]


def emit_log(
    provider: Any,
    logger_name: str,
    *,
    timestamp: int,
    observed_timestamp: int,
    context: Context,
    severity_number: Any,
    severity_text: str,
    body: Any,
    attributes: Mapping[str, Any],
) -> None:
    """Emit one log record through `provider`'s logger `logger_name`."""
    logger = provider.get_logger(logger_name)
    if available("log_emit_keywords"):
        logger.emit(
            timestamp=timestamp,
            observed_timestamp=observed_timestamp,
            context=context,
            severity_number=severity_number,
            severity_text=severity_text,
            body=body,
            attributes=attributes,
        )
        return
    import inspect

    from opentelemetry import trace
    from opentelemetry.sdk import _logs as sdk_logs

    fields: dict[str, Any] = {
        "timestamp": timestamp,
        "observed_timestamp": observed_timestamp,
        "severity_text": severity_text,
        "severity_number": severity_number,
        "body": body,
        "attributes": dict(attributes),
    }
    record_class: Any = getattr(
        sdk_logs, "LogRecord", None
    )  # the SDK's record up to 1.38, the API's from 1.39
    if record_class is not None:
        fields["resource"] = provider.resource
    else:
        from opentelemetry._logs import LogRecord

        record_class = LogRecord
    if "context" in inspect.signature(record_class.__init__).parameters:  # from 1.35
        fields["context"] = context
    else:
        span_context = trace.get_current_span(context).get_span_context()
        fields.update(
            trace_id=span_context.trace_id, span_id=span_context.span_id, trace_flags=span_context.trace_flags
        )
    logger.emit(record_class(**fields))
