"""The SDK's TracerProvider, set into OpenTelemetry's globals once per process, and its span processor.

OpenTelemetry lets a process set its global TracerProvider only once. The SDK installs its own
provider on the first `init()` and never replaces it: each `init()` swaps the pipeline behind
its one span processor (see runtime.py) and updates the resource of every tracer in place.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, Tracer, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link
from opentelemetry.util.types import Attributes

from sdk import foreign, otel_internals, runtime
from sdk.attributes import write_attributes
from sdk.guard import internal_error, warn_once
from sdk.otel_internals import RESTORES_BEFORE_END, set_attribute, span_trace_id
from sdk.semconv import REMOTE_SESSION_KEY, ROOT_KEY, SESSION_ID, TRACER_NAME
from sdk.state import STATE
from sdk.version import __version__


class SessionSpanProcessor(otel_internals.EndingSpanProcessor):
    """Stamps `session.id` on every span and hands spans to the current pipeline.

    A span belongs to the open session that owns its trace; else to the session set in its
    context; else to the trusted session of another process or service its context continues
    (see `sdk.context.extract`); else to the auto session. Processors added to the provider by the application
    (``provider.add_span_processor``) run after the pipeline's.
    """

    kept_key = SESSION_ID

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.active = True
        """False once `sdk.shutdown()` ran while this processor sits on the application's provider
        (OpenTelemetry cannot remove a span processor): it then only hands spans on to the
        processors added after it."""
        self._forked_at = 0
        registry = STATE.registry  # its dicts are never replaced, only changed: read them directly
        self._by_trace = registry.by_trace
        self._ended_traces = registry.ended_traces
        self._remote_traces = registry.remote_traces
        STATE.at_fork(self, after_in_child=self._after_fork_in_child)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self.active:
            if self.fans_out:
                super().on_start(span, parent_context)
            return
        STATE.counters.spans_started.add()
        try:
            trace_id = span_trace_id(span)
            session = self._by_trace.get(trace_id)
            late = None
            if session is None and self._ended_traces:
                late = self._ended_traces.get(trace_id)
                if late is not None and late[1] >= STATE.clock.monotonic():  # its session ended moments ago
                    write_attributes(span, {SESSION_ID: late[0]})
                else:
                    late = None
            if (
                session is None
                and late is None
                and not (parent_context is not None and ROOT_KEY in parent_context)
            ):
                session = STATE.current_session.get()
                if session is not None and session.ended_elsewhere:
                    session = STATE.registry.auto  # still set in this context, but ended by another thread
                elif session is None:
                    remote = otel_context.get_value(REMOTE_SESSION_KEY, parent_context)
                    if isinstance(remote, str):  # a trusted session of another process or service
                        write_attributes(span, {SESSION_ID: remote})
                        STATE.registry.note_remote_trace(trace_id, remote)
                    elif self._remote_traces and (
                        remote := STATE.registry.remote_session_id_for_trace(trace_id)
                    ):
                        write_attributes(span, {SESSION_ID: remote})
                    else:
                        session = STATE.registry.auto
            if session is not None:
                set_attribute(span, SESSION_ID, session.id)
                session.note_span()
        except Exception as exc:
            internal_error("session stamping", exc)
        self._start_in_pipeline(span, parent_context)

    def _start_in_pipeline(self, span: Span, parent_context: Context | None) -> None:
        rt = STATE.runtime or runtime.OFF
        if rt.starters:
            rt.on_start(span, parent_context)
        if self.fans_out:
            super().on_start(span, parent_context)

    def put_back(self, span: Span) -> None:
        # OpenTelemetry drops the oldest attribute when a span has more than its limit (128), and
        # session.id, set at start, is among the oldest: put it back before the span is exported.
        if not self.active:
            return
        try:
            session_id = _session_id_to_restore(span.get_span_context().trace_id)
            if session_id is not None:
                otel_internals.put_back_attribute(span, SESSION_ID, session_id)
        except Exception as exc:
            internal_error("session.id restore", exc)

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            STATE.counters.spans_ended.add()
            exported = span
            if not RESTORES_BEFORE_END and otel_internals.lost_attribute(span, SESSION_ID):
                exported = _with_session_id(span)
            (STATE.runtime or runtime.OFF).on_end(exported)
        if self.fans_out:
            super().on_end(span)

    def _after_fork_in_child(self) -> None:
        # Only the child pays for the check: its on_end is replaced on the instance.
        self._forked_at = time.time_ns()
        self.on_end = self._on_end_after_fork  # type: ignore[method-assign]

    def _on_end_after_fork(self, span: ReadableSpan) -> None:
        """`on_end` in a forked child: a span that started before the fork is the parent's (the parent
        ends and exports it); the child lets it go uncounted, so that it is exported once."""
        start = span.start_time
        if start is not None and start < self._forked_at:
            return
        SessionSpanProcessor.on_end(self, span)


def _session_id_to_restore(trace_id: int) -> str | None:
    """The session id of a span that lost it to the attribute limit: its session resolved again (by its trace first)."""
    session = STATE.registry.by_trace.get(trace_id)
    if session is None:
        candidate = STATE.current_session.get() or STATE.registry.auto
        session = candidate if candidate is not None and candidate.trace_id_int == trace_id else None
    session_id = (
        session.id
        if session is not None
        else STATE.registry.ended_session_id_for_trace(trace_id) or otel_context.get_value(REMOTE_SESSION_KEY)
    )
    return session_id if isinstance(session_id, str) and session_id else None


def _with_session_id(span: ReadableSpan) -> ReadableSpan:
    """An ended span that lost session.id to the attribute limit, as the pipeline exports it: a copy
    with session.id put back (where OpenTelemetry has no `_on_ending` hook; see otel_internals)."""
    try:
        context = span.context
        session_id = _session_id_to_restore(context.trace_id) if context is not None else None
        if session_id is not None:
            return otel_internals.copy_with_attribute(span, SESSION_ID, session_id)
    except Exception as exc:
        internal_error("session.id restore", exc)
    return span


class SegmentIds(IdGenerator):
    """The SDK tracer's id generator: the wrapped one's ids, except for a resumed segment's span.

    A resumed segment's span must have the stored trace id and the span id claimed in the store
    before it started; `forced()` hands those to the next span this thread starts.
    """

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._local = threading.local()
        self.forcing = 0

    def generate_span_id(self) -> int:
        if self.forcing:
            span_id = getattr(self._local, "span_id", None)
            if span_id is not None:
                self._local.span_id = None
                return int(span_id)
        return self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        if self.forcing:
            trace_id = getattr(self._local, "trace_id", None)
            if trace_id is not None:
                self._local.trace_id = None
                return int(trace_id)
        return self.inner.generate_trace_id()

    def start_span(
        self,
        tracer: trace.Tracer,
        ids: tuple[int, int],
        name: str,
        context: Context,
        links: list[Link],
        start_time: int,
    ) -> trace.Span:
        """Start a root span with exactly these (trace id, span id)."""
        self.forcing += 1
        self._local.trace_id, self._local.span_id = ids
        try:
            return tracer.start_span(name, context=context, links=links, start_time=start_time)
        finally:
            self._local.trace_id = self._local.span_id = None
            self.forcing -= 1


class SessionTracer(Tracer):
    """A Tracer whose spans with no parent join the auto session's trace.

    Tracers of the SDK's provider are of this class only while an auto session runs (see
    `SessionTracerProvider.adopt_orphans`), so that spans pay for the check only then. Only spans
    created outside any explicit session, with no valid parent span (a new thread, a callback, a
    later notebook cell), are adopted. A context carrying the SDK's new-trace key (sessions' own
    root spans) is left alone.
    """

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        auto = STATE.registry.auto
        local = STATE.current_session.get() if auto is not None else None
        if auto is not None and (local is None or local.ended_elsewhere):
            try:
                parent = trace.get_current_span(context).get_span_context()
                if not parent.is_valid and not (context is not None and ROOT_KEY in context):
                    context = trace.set_span_in_context(auto.step or auto.span, context)
            except Exception as exc:
                internal_error("auto session parenting", exc)
        return Tracer.start_span(
            self,
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )


class SessionTracerProvider(TracerProvider):
    """The SDK's TracerProvider: one per process; its resource is replaced in place on re-init.

    It keeps its own (weak) set of the tracers it made: OpenTelemetry caches tracers only from
    1.41, in a private dict. Its attributes are prefixed ``_st_`` to stay clear of the base class's.
    """

    def __init__(self, resource: Resource) -> None:
        self.session_processor = SessionSpanProcessor()
        super().__init__(
            resource=resource, shutdown_on_exit=False, active_span_processor=self.session_processor
        )
        self._st_lock = threading.Lock()
        self._st_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()
        self._st_resource = resource
        self._st_enabled = True
        STATE.registry.auto_listeners.append(self.adopt_orphans)
        STATE.at_fork(self, after_in_child=self._after_fork_in_child)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        """Add an application's processor (it runs after the SDK's pipeline); the SDK then plans again
        where it exports, so that what that processor exports is not exported twice (see foreign.py)."""
        super().add_span_processor(span_processor)
        changed = STATE.pipeline_changed
        if changed is not None:
            changed()

    def application_processors(self) -> tuple[SpanProcessor, ...]:
        """The processors the application added to this provider (``provider.add_span_processor``)."""
        return self.session_processor.added()

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        if type(tracer) in (Tracer, SessionTracer):
            with self._st_lock:
                self._st_tracers.add(tracer)  # type: ignore[arg-type]
                tracer.__class__ = SessionTracer if STATE.registry.auto is not None else Tracer
                otel_internals.set_tracer_resource(tracer, self._st_resource)
                if not self._st_enabled:
                    otel_internals.set_tracers_enabled(self, (tracer,), False)
        return tracer

    def _st_all_tracers(self) -> Iterable[Tracer]:
        return list(self._st_tracers)

    def set_enabled(self, enabled: bool) -> None:
        """Make every tracer of this provider record spans (or make non-recording ones: `enabled=False`)."""
        with self._st_lock:
            self._st_enabled = enabled
            otel_internals.set_tracers_enabled(self, self._st_all_tracers(), enabled)

    def adopt_orphans(self, on: bool) -> None:
        """Switch every tracer to (or from) SessionTracer as the auto session starts (or ends).

        The SDK has no tracer factory hook, and SessionTracer adds behaviour only, no state, so a
        tracer's class can change in place; one already inside start_span finishes as it began.
        """
        with self._st_lock:
            for tracer in self._st_all_tracers():
                if type(tracer) in (Tracer, SessionTracer):
                    tracer.__class__ = SessionTracer if on else Tracer

    def _after_fork_in_child(self) -> None:
        self._st_lock = threading.Lock()  # another thread may have held it at fork time
        self.replace_resource(self._st_resource.merge(Resource({"process.pid": os.getpid()})))

    def replace_resource(self, resource: Resource) -> None:
        """Use `resource` for every tracer, existing ones included (new settings after re-init)."""
        with self._st_lock:
            self._st_resource = resource
            otel_internals.set_provider_resource(self, resource)
            for tracer in self._st_all_tracers():
                otel_internals.set_tracer_resource(tracer, resource)

    def shutdown(self) -> None:
        """The SDK's provider lives as long as the process; `sdk.shutdown()` closes the pipeline."""
        runtime.current().force_flush(1.0)


def install(resource: Resource) -> trace.Tracer:
    """Make sure spans flow through the SDK; return the tracer the SDK's own API uses.

    - No provider set yet: install SessionTracerProvider as OpenTelemetry's global provider.
    - Our provider already installed (re-init): update its resource.
    - The application installed an OpenTelemetry SDK TracerProvider first (or a proxy holding one,
      as Logfire's): join it, once (see `join`); the application keeps its provider, resource and
      processors, and sdk/foreign.py decides what the SDK still exports itself.
    - Anything else: keep it, and use a private SessionTracerProvider for the SDK's own spans.
    """
    provider = trace.get_tracer_provider()
    if isinstance(provider, SessionTracerProvider):
        provider.replace_resource(resource)
        provider.session_processor.active = True
    elif isinstance(provider, trace.ProxyTracerProvider):
        provider = SessionTracerProvider(resource)
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:  # another thread won the race
            return install(resource)
    elif (joined := foreign.sdk_provider_of(provider)) is not None:
        join(joined, shown=provider)
        provider = joined
    else:
        warn_once(
            "unknown-provider",
            "sessiontrace: the global TracerProvider is a %s, not OpenTelemetry's SDK provider; only "
            "spans made through sessiontrace's API are recorded",
            type(provider).__name__,
        )
        private = STATE.private_provider
        if not isinstance(private, SessionTracerProvider):
            private = SessionTracerProvider(resource)
            STATE.private_provider = private
        private.replace_resource(resource)
        provider = private
    STATE.provider = provider
    tracer = provider.get_tracer(TRACER_NAME, __version__)
    generator = getattr(tracer, "id_generator", None)
    if generator is not None and not isinstance(generator, SegmentIds):
        # Only the SDK's own tracer: a resumed session's span takes the ids claimed in the store.
        tracer.id_generator = SegmentIds(generator)  # type: ignore[attr-defined]
    return tracer


def join(provider: TracerProvider, shown: object) -> None:
    """Add the SDK's span processor to the application's provider, once however often init() runs
    (a processor left inactive by `shutdown()` is switched on again, never added twice)."""
    processor = getattr(provider, "_sessiontrace_processor", None)
    if isinstance(processor, SessionSpanProcessor):
        processor.active = True
        return
    processor = SessionSpanProcessor()
    provider.add_span_processor(processor)
    provider._sessiontrace_processor = processor  # type: ignore[attr-defined]
    warn_once(
        "foreign-provider",
        "sessiontrace: an OpenTelemetry TracerProvider (%s) was already installed; sessiontrace adds "
        "its span processor to it, so that its spans carry their sessions",
        type(shown).__name__,
    )


def leave_application_provider() -> bool:
    """`sdk.shutdown()`: where the application's processors share the provider, the SDK's processor
    stops stamping and exporting (OpenTelemetry cannot remove a span processor) and the
    application's go on. True when that is so (the provider must then stay enabled)."""
    provider = STATE.provider
    if isinstance(provider, SessionTracerProvider):
        if not provider.application_processors():
            return False
        provider.session_processor.active = False
        return True
    processor = getattr(provider, "_sessiontrace_processor", None)
    if isinstance(processor, SessionSpanProcessor):
        processor.active = False
        return True
    return False


def application_pipeline(provider: object = None) -> tuple[tuple[object, ...], object] | None:
    """What the application's own span processors hang from, and the SDK's processor among them
    (not to be looked into); None when the application has no pipeline of its own.

    `provider`: the SDK TracerProvider spans are made on (default: the one `install` chose)."""
    provider = STATE.provider if provider is None else provider
    if isinstance(provider, SessionTracerProvider):
        processors = provider.application_processors()
        return (processors, None) if processors else None
    if isinstance(provider, TracerProvider):
        return (provider,), getattr(provider, "_sessiontrace_processor", None)
    return None


def flush_application_processors(timeout: float) -> None:
    """At exit: flush the processors the application added to the SDK's provider, as OpenTelemetry
    does for a provider of the application's own (the SDK's provider is not shut down at exit)."""
    provider = STATE.provider
    if isinstance(provider, SessionTracerProvider) and provider.application_processors():
        provider.session_processor.force_flush(int(timeout * 1000))


def installed_provider() -> trace.TracerProvider | None:
    """The provider the SDK uses, once `init()` has run."""
    provider = STATE.provider
    return provider if isinstance(provider, trace.TracerProvider) else None
