"""A session's summary in a cell's output: a rich HTML table in Jupyter, plain text in a terminal.

`session_rows` are the summary rows a ``%%session`` timeline starts with (see timeline.py), and
`SessionsView` is what ``%session`` shows: a display object (``_repr_html_`` and
``_repr_pretty_``), so the front end picks the richest form it can show. `ErrorCounter` counts the
spans of watched sessions that ended with an error status, for the summary's ``errors`` row;
`span_recorder` keeps the kernel's recent spans for the timelines.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import StatusCode

import sdk

_COUNTER_ATTRIBUTE = "_sessiontrace_notebook_error_counter"
_RECORDER_ATTRIBUTE = "_sessiontrace_notebook_span_recorder"


class ErrorCounter(SpanProcessor):
    """Counts, per watched session id, the spans that end with an ERROR status (the session's own too).

    One per tracer provider (OpenTelemetry cannot remove a span processor, so it stays registered
    once added; it does nothing while no session is watched).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def watch(self, session_id: str) -> None:
        """Start counting the error spans of this session."""
        with self._lock:
            self._counts.setdefault(session_id, 0)

    def take(self, session_id: str) -> int | None:
        """Stop watching this session; return its count (None if it was not watched)."""
        with self._lock:
            return self._counts.pop(session_id, None)

    def forget_all(self) -> None:
        """Stop watching every session."""
        with self._lock:
            self._counts.clear()

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not self._counts or span.status.status_code is not StatusCode.ERROR:
            return
        session_id = (span.attributes or {}).get("session.id")
        if isinstance(session_id, str):
            with self._lock:
                if session_id in self._counts:
                    self._counts[session_id] += 1

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


P = TypeVar("P", bound=SpanProcessor)


def _provider_processor(attribute: str, kind: type[P], make: Callable[[], P]) -> P | None:
    """The processor of type `kind` kept on the global tracer provider under `attribute`, added on first
    use (None before ``sdk.init()``). The SDK's provider lives as long as the process and keeps the
    processors added to it across re-init, so each is added once."""
    provider = trace.get_tracer_provider()
    existing = getattr(provider, attribute, None)
    if isinstance(existing, kind):
        return existing
    add = getattr(provider, "add_span_processor", None)
    if add is None:  # OpenTelemetry's placeholder provider: the SDK has not started
        return None
    processor = make()
    add(processor)
    setattr(provider, attribute, processor)
    return processor


def error_counter() -> ErrorCounter | None:
    """The error counter of the global tracer provider, added on first use (None before ``sdk.init()``)."""
    return _provider_processor(_COUNTER_ATTRIBUTE, ErrorCounter, ErrorCounter)


def span_recorder() -> sdk.SpanRecorder | None:
    """The kernel's in-memory `sdk.SpanRecorder` (its last `sdk.records.DEFAULT_RECORDED_SPANS` ended
    spans of sessions), added to the global tracer provider on first use (None before ``sdk.init()``).

    It lets the notebook show a session whose spans went only to an OTLP backend, and the session a
    ``%%session`` cell just ended before the batch exporter has written it anywhere.
    """
    return _provider_processor(_RECORDER_ATTRIBUTE, sdk.SpanRecorder, sdk.SpanRecorder)


def trace_link(template: str, session: sdk.Session | sdk.SessionRow) -> str | None:
    """The backend UI's address for a session: `template` with ``{trace_id}`` and ``{session_id}`` filled in."""
    if not template or not session.trace_id:
        return None
    return template.replace("{trace_id}", session.trace_id).replace("{session_id}", session.id)


def llm_rows(session: sdk.Session) -> list[Row]:
    """LLM calls, tokens and cost of the session (none when it made no LLM call)."""
    usage = session.usage
    if not usage.llm_calls:
        return []
    return [
        Row("LLM calls", str(usage.llm_calls)),
        Row("LLM input tokens", str(usage.input_tokens)),
        Row("LLM output tokens", str(usage.output_tokens)),
        Row("LLM cost", format_cost(usage.cost_usd)),
    ]


def format_cost(cost: float | None) -> str:
    """``$0.00042``, ``$0.0000048`` (never in exponent notation), ``-`` for none."""
    if cost is None:
        return "-"
    return "$" + (f"{cost:.8f}".rstrip("0").rstrip(".") or "0")


def format_duration(seconds: float) -> str:
    """``0.042 s``, ``3.20 s``, ``2 min 5 s``."""
    if seconds < 1:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


class Row(NamedTuple):
    """One line of a summary: a label, the value as text, and an optional link for the value."""

    label: str
    value: str
    href: str | None = None


def session_rows(session: sdk.Session, *, errors: int | None = None, link: str | None = None) -> list[Row]:
    """The rows describing one session, now."""
    state = session.state.value
    if session.reason:
        state = f"{state} ({session.reason})"
    rows = [
        Row("session", f"{session.name} · {session.id}"),
        Row("state", state),
        Row("duration", format_duration(session.duration)),
        Row("spans", str(session.span_count)),
    ]
    if errors is not None:
        rows.append(Row("errors", str(errors)))
    rows.extend(llm_rows(session))
    if not session.span.get_span_context().is_valid:
        rows.append(Row("note", "not recorded: sdk.init() has not run, or tracing is off"))
    if link:
        rows.append(Row("trace", session.trace_id, link))
    return rows


def rows_html(title: str, rows: Iterable[Row]) -> str:
    """A small two-column HTML table."""
    cells = []
    for row in rows:
        value = html.escape(row.value)
        if row.href:
            value = f'<a href="{html.escape(row.href, quote=True)}" target="_blank">{value}</a>'
        cells.append(
            f'<tr><th style="text-align:left;padding-right:1em">{html.escape(row.label)}</th>'
            f'<td style="text-align:left">{value}</td></tr>'
        )
    return (
        f'<table class="sessiontrace-summary"><caption style="text-align:left">{html.escape(title)}'
        f"</caption>{''.join(cells)}</table>"
    )


def rows_text(title: str, rows: Iterable[Row]) -> str:
    """The same rows as aligned plain text, for terminals."""
    listed = list(rows)
    width = max((len(row.label) for row in listed), default=0)
    lines = [title]
    for row in listed:
        value = f"{row.value} <{row.href}>" if row.href else row.value
        lines.append(f"  {row.label.ljust(width)}  {value}")
    return "\n".join(lines)


class _View:
    """A display object made of titled groups of rows."""

    def __init__(self, groups: Sequence[tuple[str, Sequence[Row]]]) -> None:
        self.groups = groups

    def _repr_html_(self) -> str:
        return "".join(rows_html(title, rows) for title, rows in self.groups)

    def text(self) -> str:
        """The plain-text form."""
        return "\n".join(rows_text(title, rows) for title, rows in self.groups)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


class SessionsView(_View):
    """The current and the auto session (what ``%session`` shows)."""

    def __init__(
        self, current: sdk.Session | None, auto: sdk.Session | None, *, link_template: str = ""
    ) -> None:
        groups: list[tuple[str, Sequence[Row]]] = []
        if current is not None:
            groups.append(("current session", session_rows(current, link=trace_link(link_template, current))))
        if auto is not None:
            groups.append(("auto session", session_rows(auto, link=trace_link(link_template, auto))))
        if not groups:
            groups.append(("sessiontrace", [Row("session", "none (no current session and no auto session)")]))
        super().__init__(groups)
