"""Python `logging` inside sessions: session and trace ids on records, and export as OpenTelemetry logs.

- `SessionLogFilter`: add it to a handler (``handler.addFilter(SessionLogFilter())``) and every
  record that handler formats has ``session_id``, ``trace_id`` and ``span_id`` attributes, for
  a format such as ``"%(levelname)s [%(session_id)s] %(message)s"``. The `log_correlation`
  setting does this for every record of the process instead, through the log record factory
  (a filter on the root logger would miss the records of other loggers, which do not pass
  through the root logger's filters).
- The `export_logs` setting: a handler on the root logger sends records to the OTLP logs
  endpoint (`logs_endpoint`, by default the traces endpoint's ``/v1/logs``), each with
  ``session.id`` and the trace and span ids of the code that logged it, so a backend shows a
  session's logs beside its trace.

A record belongs to a session by the rule spans follow: the session that owns the current span's
trace (also shortly after it ended), else the session set in the context, else the ``session.id``
of the context's W3C baggage (a session of another process), else the auto session. Attributes
the record already has (from ``extra=``) are left as they are; ``""`` stands for "none".

This module imports OpenTelemetry's logs SDK and exporter only when `export_logs` is on.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from sdk import otel_internals, runtime
from sdk.context import session_id_from
from sdk.guard import internal_error, warn_once
from sdk.redaction import scrubber_for
from sdk.semconv import SESSION_ID, SessionState
from sdk.session_core import Session
from sdk.settings import Config, Source
from sdk.state import STATE

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider

SESSION_ID_FIELD = "session_id"
TRACE_ID_FIELD = "trace_id"
SPAN_ID_FIELD = "span_id"
FIELDS = (SESSION_ID_FIELD, TRACE_ID_FIELD, SPAN_ID_FIELD)
"""The record attributes `SessionLogFilter` and `log_correlation` set."""

DEFAULT_OTLP_HTTP_LOGS_ENDPOINT = "http://localhost:4318/v1/logs"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"
_LAYER_RANK = {"default": 0, "file": 1, "env": 2, "init": 3, "session": 4}
# Never exported: the SDK's and OpenTelemetry's own records (an export failure that is logged
# and then exported would feed itself), and the HTTP client the exporter uses.
_NOT_EXPORTED = ("sessiontrace", "opentelemetry", "urllib3", "requests")


def current_ids() -> tuple[str, str, str]:
    """(session id, trace id, span id) of the code running now; ``""`` for each there is none of."""
    ctx = otel_context.get_current()
    span_context = trace.get_current_span(ctx).get_span_context()
    session: Session | None = None
    trace_id = span_id = ""
    if span_context.is_valid:
        trace_id = f"{span_context.trace_id:032x}"
        span_id = f"{span_context.span_id:016x}"
        session = STATE.registry.by_trace.get(span_context.trace_id)
        if session is None:
            ended_id = STATE.registry.ended_session_id_for_trace(span_context.trace_id)
            if ended_id is not None:  # its session ended a moment ago (see ended_session_grace)
                return ended_id, trace_id, span_id
    if session is None:
        session = STATE.current_session.get()
    if session is None:
        remote = _baggage_session_id(ctx)
        if remote is not None:
            return remote, trace_id, span_id
        auto = STATE.registry.auto
        session = auto if auto is not None and auto.state is SessionState.RUNNING else None
    if session is None:
        return "", trace_id, span_id
    if not trace_id:  # no span in the context: the session's own span stands for it
        trace_id, span_id = session.trace_id, session.span_id
    return session.id, trace_id, span_id


def _baggage_session_id(ctx: Any) -> str | None:

    return session_id_from(ctx)


def stamp(record: logging.LogRecord) -> None:
    """Set ``session_id``, ``trace_id`` and ``span_id`` on a record (those it does not have yet)."""
    if all(hasattr(record, name) for name in FIELDS):
        return
    try:
        values = current_ids()
    except Exception as exc:
        internal_error("log record stamping", exc)
        values = ("", "", "")
    for name, value in zip(FIELDS, values, strict=True):
        if not hasattr(record, name):
            setattr(record, name, value)


class SessionLogFilter(logging.Filter):
    """A logging filter that lets every record through with ``session_id``, ``trace_id`` and ``span_id``.

    Add it to a handler: ``handler.addFilter(SessionLogFilter())``. The ids are those of the code
    that logged the record when the handler runs in that code's thread (any handler but those fed
    by a queue; with a `QueueHandler`, add the filter to the QueueHandler, or turn on the
    `log_correlation` setting).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops one."""
        stamp(record)
        return True


# ---------------------------------------------------------------------------------------------
# log_correlation: a log record factory that stamps every record where it is created.


def _set_correlation(on: bool) -> None:
    if on and STATE.log_correlation["factory"] is None:
        previous = logging.getLogRecordFactory()

        def session_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if STATE.log_correlation["on"]:
                stamp(record)
            return record

        STATE.log_correlation["previous"] = previous
        STATE.log_correlation["factory"] = session_record_factory
        logging.setLogRecordFactory(session_record_factory)
    STATE.log_correlation["on"] = on
    # Off: put the previous factory back, unless another factory wraps ours since (then ours stays
    # in its chain, passing records through, and is used again when turned on).
    if (
        not on
        and STATE.log_correlation["factory"] is not None
        and logging.getLogRecordFactory() is STATE.log_correlation["factory"]
    ):
        logging.setLogRecordFactory(STATE.log_correlation["previous"])
        STATE.log_correlation["factory"] = STATE.log_correlation["previous"] = None


# ---------------------------------------------------------------------------------------------
# export_logs: OpenTelemetry logs over OTLP.


def _severity(levelno: int) -> Any:
    if levelno >= logging.CRITICAL:
        name = "FATAL"
    elif levelno >= logging.ERROR:
        name = "ERROR"
    elif levelno >= logging.WARNING:
        name = "WARN"
    elif levelno >= logging.INFO:
        name = "INFO"
    elif levelno >= logging.DEBUG:
        name = "DEBUG"
    else:
        name = "TRACE"
    return otel_internals.severity_number(name)


_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class SessionLogHandler(logging.Handler):
    """Sends records to an OpenTelemetry LoggerProvider, each with ``session.id`` and its trace context.

    The message and the exception's text are scrubbed of secrets first (the `scrub` setting).

    `export_logs` adds one to the root logger; it can be added to any logger by hand too.
    """

    def __init__(self, provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        """Translate and emit one record (never raises: failures are counted as internal errors)."""
        if record.name.startswith(_NOT_EXPORTED):
            return
        try:
            self._emit(record)
        except Exception as exc:
            internal_error("log export", exc)

    def _emit(self, record: logging.LogRecord) -> None:
        ctx = otel_context.get_current()
        session_id, trace_id, span_id = current_ids()
        if trace_id and not trace.get_current_span(ctx).get_span_context().is_valid:
            # Outside any span but inside a session: correlate with the session's own span.
            parent = trace.NonRecordingSpan(
                trace.SpanContext(int(trace_id, 16), int(span_id, 16), False, trace.TraceFlags(1))
            )
            ctx = trace.set_span_in_context(parent, ctx)
        attributes: dict[str, Any] = {
            "code.file.path": record.pathname,
            "code.function.name": record.funcName,
            "code.line.number": record.lineno,
            "logger.name": record.name,
        }
        if session_id:
            attributes[SESSION_ID] = session_id
        if record.exc_info and record.exc_info[0] is not None:
            attributes["exception.type"] = record.exc_info[0].__name__
            attributes["exception.message"] = str(record.exc_info[1])
            attributes["exception.stacktrace"] = logging.Formatter().formatException(record.exc_info)
        body = self.format(record) if self.formatter else record.getMessage()
        scrubber = scrubber_for(runtime.current().config)
        body = scrubber.text(body)
        attributes = scrubber.attributes(attributes) or attributes
        otel_internals.emit_log(
            self.provider,
            record.name,
            timestamp=int(record.created * 1e9),
            observed_timestamp=time.time_ns(),
            context=ctx,
            severity_number=_severity(record.levelno),
            severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
            body=body,
            attributes=attributes,
        )


def logs_endpoint(config: Config) -> str:
    """Where logs go: `logs_endpoint` when set at a layer at least as high as `endpoint`'s, else
    the traces endpoint with ``/v1/logs`` for ``/v1/traces`` (gRPC: the same URL)."""
    specific = config.logs_endpoint
    if specific is not None:
        rank = _LAYER_RANK[config.sources.get("logs_endpoint", Source("default")).layer]
        if rank >= _LAYER_RANK[config.sources.get("endpoint", Source("default")).layer]:
            return specific
    if config.endpoint is None:
        return DEFAULT_OTLP_GRPC_ENDPOINT if config.protocol == "grpc" else DEFAULT_OTLP_HTTP_LOGS_ENDPOINT
    if config.protocol == "grpc":
        return config.endpoint
    parts = urllib.parse.urlsplit(config.endpoint)
    path = parts.path
    path = path[: -len("/v1/traces")] + "/v1/logs" if path.endswith("/v1/traces") else "/v1/logs"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _exporter(config: Config, url: str) -> Any:
    if config.protocol == "grpc":
        try:
            grpc_log_exporter = otel_internals.log_exporter_class("grpc")
        except ImportError:
            warn_once(
                "logs-grpc",
                "sessiontrace: export_logs with protocol=grpc needs the grpc extra "
                "(pip install 'sessiontrace[grpc]'); logs are not exported",
            )
            return None
        return grpc_log_exporter(
            endpoint=url,
            headers=dict(config.headers),
            timeout=config.export_timeout,
            insecure=config.insecure,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression

    return otel_internals.log_exporter_class("http/protobuf")(
        endpoint=url,
        headers=dict(config.headers),
        timeout=config.export_timeout,
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
        certificate_file=str(config.certificate_file) if config.certificate_file else None,
        client_certificate_file=str(config.client_certificate_file)
        if config.client_certificate_file
        else None,
        client_key_file=str(config.client_key_file) if config.client_key_file else None,
    )


class LogExport:
    """One log export pipeline: a LoggerProvider with a batch processor, and its root-logger handler."""

    def __init__(self, key: tuple[Any, ...], provider: LoggerProvider, handler: SessionLogHandler) -> None:
        self.key = key
        self.provider = provider
        self.handler = handler

    def close(self, timeout: float) -> None:
        """Detach the handler, then flush and shut down within `timeout` seconds (in a thread)."""
        logging.getLogger().removeHandler(self.handler)
        provider = self.provider

        def flush_and_shut_down() -> None:
            try:
                provider.force_flush(int(timeout * 1000))
                provider.shutdown()
            except Exception as exc:
                internal_error("log export shutdown", exc)

        worker = threading.Thread(target=flush_and_shut_down, name="sessiontrace-logs-close", daemon=True)
        worker.start()
        worker.join(timeout)


def _export_key(config: Config, url: str) -> tuple[Any, ...]:
    return (
        url,
        config.protocol,
        tuple(sorted(config.headers.items())),
        config.export_timeout,
        config.compression,
        config.certificate_file,
        config.client_certificate_file,
        config.client_key_file,
        config.insecure,
        config.service_name,
        tuple(sorted(config.resource_attributes.items())),
        config.export_interval,
        config.max_queue_size,
        config.max_export_batch_size,
    )


def _start_export(config: Config) -> None:
    url = logs_endpoint(config)
    key = _export_key(config, url)
    with STATE.log_export_lock:
        current = STATE.log_export
        if current is not None and current.key == key:
            return
        # Without OpenTelemetry's logs SDK (said once in a warning, counted in stats()), none is exported.
        exporter = _exporter(config, url) if otel_internals.logs_supported() else None
        replacement: LogExport | None = None
        if exporter is not None:
            provider = otel_internals.new_logger_provider(runtime.build_resource(config))
            provider.add_log_record_processor(
                otel_internals.new_batch_log_processor(
                    exporter,
                    schedule_delay_millis=config.export_interval * 1000,
                    max_export_batch_size=min(config.max_export_batch_size, config.max_queue_size),
                    max_queue_size=config.max_queue_size,
                )
            )
            replacement = LogExport(key, provider, SessionLogHandler(provider))
            logging.getLogger().addHandler(replacement.handler)
        STATE.log_export = replacement
        if not STATE.log_exit_hook:
            STATE.log_exit_hook = True
            atexit.register(_close_at_exit)
    if current is not None:  # flushed in the background: init() never waits for the network
        threading.Thread(
            target=current.close, args=(config.flush_timeout,), name="sessiontrace-logs-close", daemon=True
        ).start()


def _close_at_exit() -> None:
    config = runtime.current().config
    close(config.flush_timeout if config is not None else 3.0)


def close(timeout: float, *, wait: bool = True) -> None:
    """Stop exporting logs: remove the handler, flush what is queued within `timeout` seconds.

    ``wait=False`` flushes in a background thread and returns at once.
    """
    with STATE.log_export_lock:
        current, STATE.log_export = STATE.log_export, None
    if current is None:
        return
    if wait:
        current.close(timeout)
    else:
        logging.getLogger().removeHandler(current.handler)
        threading.Thread(
            target=current.close, args=(timeout,), name="sessiontrace-logs-close", daemon=True
        ).start()


def configure(config: Config) -> None:
    """Apply `log_correlation` and `export_logs` (init() calls this; each is installed at most once)."""
    _set_correlation(config.enabled and config.log_correlation)
    if config.enabled and config.export_logs:
        _start_export(config)
    else:
        close(config.flush_timeout, wait=False)


def remove_all(timeout: float) -> threading.Thread | None:
    """Undo everything `configure` did (shutdown): the record factory at once; the export is
    flushed within `timeout` seconds by the returned thread (None when logs were not exported)."""
    _set_correlation(False)
    with STATE.log_export_lock:
        current, STATE.log_export = STATE.log_export, None
    if current is None:
        return None
    logging.getLogger().removeHandler(current.handler)
    closing = threading.Thread(
        target=current.close, args=(timeout,), name="sessiontrace-logs-close", daemon=True
    )
    closing.start()
    return closing
