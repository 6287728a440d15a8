"""Sessions and spans as data: the local traces, the session store and this process, read into rows.

    import sdk
    today = sdk.read_sessions(since="1d", user="u-42")     # SessionRow, most recent first
    spans = sdk.read_spans(session="ab33")                  # SpanRow, by start time; an id prefix works
    frame = today.to_pandas()                               # with the `pandas` extra

Where the rows come from:

- the **local traces**: the OTLP-JSON files the default exporter writes under
  ``<data_dir>/traces`` (every span, with its attributes, as exported: scrubbed);
- the **session store** (the ``session_store`` setting: the SQLite file by default, or Redis):
  one record per session with its segments and counters, also for sessions whose spans went only
  to an OTLP backend;
- **this process**: its open sessions (`sdk.sessions()`), and the spans a `SpanRecorder` kept in
  memory (the notebook extension adds one in a kernel, so a session exported only over OTLP can
  still be shown there).

A session found in several places is one row: identity from the store, counters the largest
seen (the store is written at intervals; the traces folder is pruned oldest first), the state of
the latest end seen. Rows are NamedTuples (`SpanRow`, `SessionRow`) in a `Rows` list, which
`to_pandas()` turns into a DataFrame. See docs/notebooks.md ("Sessions as data").
"""

from __future__ import annotations

import base64
import collections
import datetime
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan

from sdk import runtime
from sdk.export.jsonl import trace_files, trace_lines
from sdk.lifecycle import config as current_config
from sdk.session_api import sessions as open_session_infos
from sdk.store import latest_scores

if TYPE_CHECKING:
    from sdk.store import Score, SessionRecord, SessionStore

DEFAULT_RECORDED_SPANS = 5_000
"""How many ended spans a `SpanRecorder` keeps by default (the oldest are forgotten first)."""

SESSION_KIND = "session"
MARKER_KIND = "session.start"
LLM_KIND = "llm"
CELL_KIND = "cell"

_OTEL_KINDS = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}
_INPUT_KEYS = ("sessiontrace.input", "gen_ai.tool.call.arguments", "gen_ai.input.messages", "input.value")
_OUTPUT_KEYS = ("sessiontrace.output", "gen_ai.tool.call.result", "gen_ai.output.messages", "output.value")
_COST_KEYS = ("llm.cost.total", "gen_ai.usage.cost_usd")  # the second: traces of earlier versions
_ENDED_STATES = ("success", "fail", "indeterminate")
_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

R = TypeVar("R", bound=tuple[Any, ...])


class SpanRow(NamedTuple):
    """One span, as read from the local traces or a `SpanRecorder`. Times are epoch seconds."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    """``session``, ``llm``, ``tool``, ``agent``, ``task``, ``workflow``, ``cell`` (a notebook cell),
    else OpenTelemetry's span kind: ``internal``, ``server``, ``client``, ``producer``, ``consumer``."""
    start: float
    end: float
    duration: float
    status: str
    """``unset``, ``ok`` or ``error``."""
    error: str | None
    """For a failed span: the exception (``ZeroDivisionError: division by zero``) or the status message."""
    session_id: str | None
    service: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    input: str | None
    """Captured input (tool arguments, prompt messages), when content capture recorded it."""
    output: str | None
    """Captured output (return value, completion messages), when content capture recorded it."""
    links: tuple[tuple[str, str], ...]
    """(trace id, span id) of each linked span."""
    attributes: Mapping[str, Any]


class SessionRow(NamedTuple):
    """One session, from the store, the local traces and this process together. Times are epoch seconds."""

    id: str
    name: str
    user_id: str | None
    state: str
    """``running``, ``success``, ``fail`` or ``indeterminate``."""
    reason: str | None
    started: float
    ended: float | None
    """When the latest segment ended (None while it runs, or when nothing says it ended)."""
    duration: float
    """Start to end; while running, start to the latest activity seen."""
    spans: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    errors: int
    tags: tuple[str, ...]
    trace_id: str
    segments: int
    service: str | None
    sources: tuple[str, ...]
    """Where the session was found: ``store``, ``traces``, ``process`` (in that order)."""
    scores: tuple[Score, ...] = ()
    """The scores given to the session (`sdk.score`), as the session store keeps them, oldest first."""

    @property
    def tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    @property
    def latest_scores(self) -> dict[str, float | int | bool | str]:
        """The latest value of each score name."""
        return latest_scores(self.scores)


class Rows(list[R]):
    """A list of rows (`SpanRow` or `SessionRow`) that can become a pandas DataFrame."""

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame``, one column per field; times as UTC timestamps (needs the `pandas` extra)."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "to_pandas() needs pandas: pip install 'sessiontrace[pandas]' (the rows are plain "
                "NamedTuples without it)"
            ) from None
        fields = _fields_of(self)
        frame = pandas.DataFrame.from_records([tuple(row) for row in self], columns=list(fields))
        for column in ("start", "end", "started", "ended"):
            if column in frame.columns:
                frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
        return frame


def _fields_of(rows: Sequence[tuple[Any, ...]]) -> tuple[str, ...]:
    if rows:
        return tuple(getattr(rows[0], "_fields", ()))
    return SessionRow._fields  # an empty frame still has the columns of a session list


# --- finding a session by id prefix -------------------------------------------------------------


class SessionNotFound(LookupError):
    """No session has this id (or an id starting with it)."""


class AmbiguousSessionId(LookupError):
    """Several sessions have ids starting with the prefix given; `candidates` lists them."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        self.prefix = prefix
        self.candidates = tuple(sorted(candidates))
        shown = ", ".join(self.candidates[:10]) + (", ..." if len(self.candidates) > 10 else "")
        super().__init__(
            f"session id prefix {prefix!r} is ambiguous: {len(self.candidates)} sessions match ({shown}); "
            "give more characters"
        )


def resolve_session_id(prefix: str, ids: Iterable[str]) -> str:
    """The one id in `ids` equal to `prefix`, else the one starting with it (as git takes commit ids).

    Raises `SessionNotFound` when none matches and `AmbiguousSessionId` when several do.
    """
    if not prefix:
        raise SessionNotFound("an empty session id matches nothing")
    matching = set()
    for session_id in ids:
        if session_id == prefix:
            return session_id
        if session_id.startswith(prefix):
            matching.add(session_id)
    if not matching:
        raise SessionNotFound(f"no session with id {prefix!r} (nor one starting with it)")
    if len(matching) > 1:
        raise AmbiguousSessionId(prefix, sorted(matching))
    return matching.pop()


# --- time filters --------------------------------------------------------------------------------


def parse_time(value: float | datetime.datetime | str, now: float | None = None) -> float:
    """Epoch seconds from epoch seconds, a datetime (naive: local time), ``30s``/``15m``/``1h``/``2d``/``1w``
    ago, or an ISO date or date-time (local time unless it says). Raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"expected a time, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if not isinstance(value, str):
        raise ValueError(f"expected a time (epoch seconds, datetime, '1h', '2025-01-31'), not {value!r}")
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if match:
        return now - float(match.group(1)) * _SINCE_UNITS[match.group(2)]
    iso = value.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"expected a duration like 30m, 1h, 2d or an ISO date like 2025-01-31 or 2025-01-31T14:00, not {value!r}"
        ) from None
    return when.timestamp()  # a naive date-time is local time


# --- OTLP-JSON spans into rows -------------------------------------------------------------------


def _value(value: Mapping[str, Any]) -> Any:
    """An OTLP-JSON AnyValue as a plain value (ints from their JSON strings, arrays as tuples)."""
    for key, item in value.items():
        if key == "stringValue" or key == "boolValue":
            return item
        if key == "intValue":
            return int(item)
        if key == "doubleValue":
            return float(item)
        if key == "arrayValue":
            return tuple(_value(v) for v in item.get("values", ()))
        if key == "kvlistValue":
            return {kv.get("key", ""): _value(kv.get("value", {})) for kv in item.get("values", ())}
        if key == "bytesValue":
            return base64.b64decode(item)
    return None


def _attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {kv.get("key", ""): _value(kv.get("value", {})) for kv in items}


def _nanos(value: Any) -> float:
    try:
        return int(value or 0) / 1e9
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _kind(attributes: Mapping[str, Any], otel_kind: Any) -> str:
    kind = attributes.get("sessiontrace.span.kind")
    if isinstance(kind, str) and kind:
        return kind
    if "notebook.cell.execution_count" in attributes:
        return CELL_KIND
    if "gen_ai.usage.input_tokens" in attributes or "gen_ai.request.model" in attributes:
        return LLM_KIND
    return _OTEL_KINDS.get(otel_kind if isinstance(otel_kind, int) else 0, "internal")


def _error(status: str, message: str | None, events: Iterable[Mapping[str, Any]]) -> str | None:
    if status != "error":
        return None
    for event in events:
        if event.get("name") == "exception":
            found = _attributes(event.get("attributes", ()))
            kind, text = found.get("exception.type"), found.get("exception.message")
            if kind or text:
                return f"{kind}: {text}" if kind and text else str(kind or text)
    return message or "error"


def _first(attributes: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        if key in attributes:
            return _text(attributes[key])
    return None


def span_row(span: Mapping[str, Any]) -> SpanRow:
    """One OTLP-JSON span (as the file exporter writes it: ids in hex) as a `SpanRow`.

    The span may carry its resource's attributes under ``resource`` (as `read_otlp_json_spans` gives it).
    """
    attributes = _attributes(span.get("attributes", ()))
    status_json = span.get("status") or {}
    code = status_json.get("code", 0)
    status = _STATUS.get(code if isinstance(code, int) else 0, "unset")
    events = span.get("events", ())
    start, end = _nanos(span.get("startTimeUnixNano")), _nanos(span.get("endTimeUnixNano"))
    resource = _attributes((span.get("resource") or {}).get("attributes", ()))
    model = attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model")
    return SpanRow(
        trace_id=str(span.get("traceId", "")),
        span_id=str(span.get("spanId", "")),
        parent_span_id=span.get("parentSpanId") or None,
        name=str(span.get("name", "")),
        kind=_kind(attributes, span.get("kind")),
        start=start,
        end=end,
        duration=max(end - start, 0.0),
        status=status,
        error=_error(status, status_json.get("message"), events),
        session_id=_text(attributes.get("session.id")),
        service=_text(resource.get("service.name")),
        model=_text(model),
        input_tokens=_int(attributes.get("gen_ai.usage.input_tokens")),
        output_tokens=_int(attributes.get("gen_ai.usage.output_tokens")),
        cost_usd=_number(next((attributes[k] for k in _COST_KEYS if k in attributes), None)),
        input=_first(attributes, _INPUT_KEYS),
        output=_first(attributes, _OUTPUT_KEYS),
        links=tuple(
            (str(link.get("traceId", "")), str(link.get("spanId", ""))) for link in span.get("links", ())
        ),
        attributes=attributes,
    )


# --- the local trace files ----------------------------------------------------------------------

"""A line longer than this is not one the SDK wrote: it is skipped, never read into memory whole."""


def _request_rows(resource_spans: Iterable[Mapping[str, Any]]) -> Iterator[SpanRow]:
    for resource_span in resource_spans:
        resource = resource_span.get("resource", {})
        for scope_spans in resource_span.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                yield span_row({**span, "resource": resource})


# --- spans kept in memory ------------------------------------------------------------------------


class SpanRecorder(SpanProcessor):
    """A span processor that keeps the last `max_spans` ended spans of sessions in memory.

    For a process whose spans go only to an OTLP backend (no local traces), so that it can still
    read its own recent sessions (`read_spans(recorder=...)`); the notebook extension adds one to
    a kernel. Add it with ``sdk.init(span_processors=[recorder])``, or to the tracer provider.

    Memory is bounded by the span count: the oldest spans are forgotten first. `on_end` only
    appends a reference; the spans are converted (and scrubbed of secrets, as the exporters do)
    when read.
    """

    def __init__(self, max_spans: int = DEFAULT_RECORDED_SPANS) -> None:
        if isinstance(max_spans, bool) or not isinstance(max_spans, int) or max_spans < 1:
            raise ValueError(f"max_spans must be a positive integer, not {max_spans!r}")
        self.max_spans = max_spans
        self._spans: collections.deque[ReadableSpan] = collections.deque(maxlen=max_spans)
        self._lock = threading.Lock()
        self.forgotten = 0
        """Spans dropped to stay within `max_spans`."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes
        if not attributes or "session.id" not in attributes:
            return
        with self._lock:
            if len(self._spans) == self.max_spans:
                self.forgotten += 1
            self._spans.append(span)

    def __len__(self) -> int:
        return len(self._spans)

    def rows(self, session_id: str | None = None) -> list[SpanRow]:
        """The kept spans (of one session, if given) as rows, scrubbed as the configured exporters would."""
        with self._lock:
            spans = list(self._spans)
        if session_id is not None:
            spans = [s for s in spans if (s.attributes or {}).get("session.id") == session_id]
        if not spans:
            return []
        from sdk.export.jsonl import spans_to_otlp_json
        from sdk.export.scrub import scrub_spans
        from sdk.redaction import scrubber_for

        cleaned = scrub_spans(spans, scrubber_for(current_config()))
        return list(_request_rows(spans_to_otlp_json(cleaned).get("resourceSpans", ())))

    def clear(self) -> None:
        """Forget every kept span."""
        with self._lock:
            self._spans.clear()

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# --- reading -------------------------------------------------------------------------------------


def traces_folder(data_dir: Path | str | None = None) -> Path:
    """``<data_dir>/traces``: where the file exporter writes (`data_dir` default: the setting)."""
    root = Path(data_dir) if data_dir is not None else Path(current_config().data_dir)
    return root / "traces"


def local_span_rows(folder: Path) -> list[SpanRow]:
    """Every span in the trace files of `folder` (none when it does not exist), live markers included;
    lines that are not OTLP-JSON are left out."""
    rows: list[SpanRow] = []
    for path in trace_files(folder):
        try:
            for line in trace_lines(path):
                if line.resource_spans is not None:
                    rows.extend(_request_rows(line.resource_spans))
        except OSError:  # pruned by a running program meanwhile
            continue
    return rows


def open_store_for_reading(spec: Any, data_dir: Path, expiry: float | None) -> SessionStore | None:
    """The store `spec` names, to read; None for ``none`` and ``memory`` (which lives inside its program)
    and for a SQLite file that does not exist yet (nothing is created)."""
    if spec in ("none", "memory"):
        return None
    from sdk.store import open_store
    from sdk.store.sqlite import SQLiteStore

    store = open_store(spec, data_dir, expiry)
    if isinstance(store, SQLiteStore) and not store.path.exists():
        store.close()
        return None
    return store


class _Sources(NamedTuple):
    spans: list[SpanRow]
    records: list[SessionRecord]
    live: list[Any]


def _gather(
    data_dir: Path | str | None,
    store: str | SessionStore | None,
    recorder: SpanRecorder | None,
) -> _Sources:
    config = current_config()
    root = Path(data_dir) if data_dir is not None else Path(config.data_dir)
    spans = local_span_rows(root / "traces")
    seen = {(s.trace_id, s.span_id) for s in spans}
    if recorder is not None:
        spans.extend(s for s in recorder.rows() if (s.trace_id, s.span_id) not in seen)
    records: list[SessionRecord] = []
    from sdk.store import SessionStore

    writer = runtime.current().store_writer
    if writer is not None and (store is None or store is writer.store):
        # Read this process's own writes: the sessions it ended are queued for the store still.
        writer.catch_up()
    opened = (
        store
        if isinstance(store, SessionStore)
        else open_store_for_reading(store if store is not None else config.session_store, root, None)
    )
    if opened is not None:
        try:
            records = opened.list(limit=None)
        finally:
            if opened is not store:
                opened.close()
    live = [info for info in open_session_infos() if info.session.span.get_span_context().is_valid]
    return _Sources(spans, records, live)


class _Builder:
    """What is known of one session while the sources are merged."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.name = ""
        self.user_id: str | None = None
        self.tags: tuple[str, ...] = ()
        self.trace_id = ""
        self.service: str | None = None
        self.started = math.inf
        self.last = 0.0
        self.ended: float | None = None
        self.state: str | None = None
        self.reason: str | None = None
        self.latest_segment_start = -math.inf
        self.segments: set[str] = set()
        self.sources: set[str] = set()
        self.scores: tuple[Score, ...] = ()
        self.counted = [0, 0, 0, 0, 0.0, 0]  # spans, llm calls, input, output, cost, errors (from spans)
        self.totals = [0, 0, 0, 0, 0.0, 0]  # the same, as the store or this process report them
        self.by_segment: dict[str, tuple[int, int, int, int, float, int]] = {}
        """The totals each ended session span (one per segment) reports."""

    def raise_totals(self, values: Sequence[float]) -> None:
        self.totals = [max(a, b) for a, b in zip(self.totals, values, strict=True)]

    def add_span(self, span: SpanRow) -> None:
        self.sources.add("traces")
        if not self.trace_id:
            self.trace_id = span.trace_id
        self.service = self.service or span.service
        self.started = min(self.started, span.start)
        self.last = max(self.last, span.end)
        attrs = span.attributes
        if span.kind in (SESSION_KIND, MARKER_KIND):
            self.name = self.name or _text(attrs.get("session.name")) or span.name
            self.user_id = self.user_id or _text(attrs.get("user.id"))
            tags = attrs.get("session.tags")
            if isinstance(tags, tuple) and not self.tags:
                self.tags = tuple(str(t) for t in tags)
            if span.kind == MARKER_KIND:
                return
            self.segments.add(span.span_id)
            state = attrs.get("session.state")
            if span.start >= self.latest_segment_start and state in _ENDED_STATES:
                self.latest_segment_start = span.start
                self.state, self.ended = str(state), span.end
                self.reason = _text(attrs.get("session.end_reason"))
            self.by_segment[span.span_id] = (
                1,
                _int(attrs.get("session.llm.calls")) or 0,
                _int(attrs.get("session.llm.input_tokens")) or 0,
                _int(attrs.get("session.llm.output_tokens")) or 0,
                _number(attrs.get("session.llm.cost_usd")) or 0.0,
                _int(attrs.get("session.errors")) or 0,
            )
        counted = self.counted
        counted[0] += 1
        if span.kind == LLM_KIND:
            counted[1] += 1
            counted[2] += span.input_tokens or 0
            counted[3] += span.output_tokens or 0
            counted[4] += span.cost_usd or 0.0
        if span.status == "error":
            counted[5] += 1

    def add_record(self, record: SessionRecord) -> None:
        self.sources.add("store")
        self.name = record.name or self.name
        self.user_id = record.user_id if record.user_id is not None else self.user_id
        self.tags = record.tags or self.tags
        self.trace_id = record.trace_id or self.trace_id
        self.started = min(self.started, record.started)
        self.last = max(self.last, record.last_activity, record.ended or 0.0)
        self.segments.update(record.span_ids)
        self.scores = tuple(sorted(record.scores, key=lambda score: score.at))
        latest = record.latest if record.segments else None
        if latest is not None and latest.started >= self.latest_segment_start:
            self.latest_segment_start = latest.started
            self.state, self.reason, self.ended = latest.state, latest.reason, latest.ended
        usage = record.usage
        self.raise_totals(
            (
                usage.spans,
                usage.llm_calls,
                usage.input_tokens,
                usage.output_tokens,
                usage.cost_usd,
                usage.errors,
            )
        )

    def add_live(self, info: Any) -> None:
        self.sources.add("process")
        session = info.session
        self.name = self.name or info.name
        self.user_id = self.user_id if self.user_id is not None else info.user_id
        self.tags = self.tags or info.tags
        self.trace_id = self.trace_id or info.trace_id
        started = session.started_ns / 1e9
        self.started = min(self.started, started)
        self.last = max(self.last, time.time() - info.idle)
        self.segments.add(session.span_id)
        if started >= self.latest_segment_start:
            self.latest_segment_start = started
            self.state, self.reason, self.ended = "running", None, None
        usage = session.usage
        self.raise_totals(
            (
                usage.spans,
                usage.llm_calls,
                usage.input_tokens,
                usage.output_tokens,
                usage.cost_usd,
                usage.errors,
            )
        )

    def row(self, now: float) -> SessionRow:
        if self.by_segment:
            summed = [sum(values) for values in zip(*self.by_segment.values(), strict=True)]
            summed[0] = 0  # a session span counts itself only; the spans are counted one by one
            self.raise_totals(summed)
        counts = [max(a, b) for a, b in zip(self.totals, self.counted, strict=True)]
        state = self.state or "running"
        started = self.started if math.isfinite(self.started) else 0.0
        end = self.ended if self.ended is not None else (self.last or now)
        return SessionRow(
            id=self.id,
            name=self.name,
            user_id=self.user_id,
            state=state,
            reason=self.reason,
            started=started,
            ended=self.ended if state != "running" else None,
            duration=max(end - started, 0.0),
            spans=int(counts[0]),
            llm_calls=int(counts[1]),
            input_tokens=int(counts[2]),
            output_tokens=int(counts[3]),
            cost_usd=round(float(counts[4]), 10),
            errors=int(counts[5]),
            tags=self.tags,
            trace_id=self.trace_id,
            segments=max(len(self.segments), 1),
            service=self.service,
            sources=tuple(s for s in ("store", "traces", "process") if s in self.sources),
            scores=self.scores,
        )


def _sessions_from(sources: _Sources, now: float) -> dict[str, SessionRow]:
    builders: dict[str, _Builder] = {}

    def builder(session_id: str) -> _Builder:
        found = builders.get(session_id)
        if found is None:
            found = builders[session_id] = _Builder(session_id)
        return found

    for record in sources.records:
        builder(record.id).add_record(record)
    for span in sources.spans:
        if span.session_id:
            builder(span.session_id).add_span(span)
    for info in sources.live:
        builder(info.id).add_live(info)
    return {session_id: b.row(now) for session_id, b in builders.items()}


def _time_filter(
    since: float | datetime.datetime | str | None, until: float | datetime.datetime | str | None, now: float
) -> tuple[float | None, float | None]:
    return (
        parse_time(since, now) if since is not None else None,
        parse_time(until, now) if until is not None else None,
    )


def _session_filter(
    rows: Mapping[str, SessionRow],
    session: str | None,
    user: str | None,
    state: str | None,
    tag: str | None,
    since: float | None,
    until: float | None,
) -> Callable[[SessionRow], bool]:
    if state is not None and state not in ("running", *_ENDED_STATES):
        raise ValueError(f"state must be one of running, {', '.join(_ENDED_STATES)}, not {state!r}")
    wanted = resolve_session_id(session, rows) if session is not None else None

    def keep(row: SessionRow) -> bool:
        active_until = row.ended if row.ended is not None else row.started + row.duration
        return (
            (wanted is None or row.id == wanted)
            and (user is None or row.user_id == user)
            and (state is None or row.state == state)
            and (tag is None or tag in row.tags)
            and (since is None or active_until >= since)
            and (until is None or row.started <= until)
        )

    return keep


def read_sessions(
    session: str | None = None,
    *,
    user: str | None = None,
    state: str | None = None,
    tag: str | None = None,
    since: float | datetime.datetime | str | None = None,
    until: float | datetime.datetime | str | None = None,
    limit: int | None = None,
    data_dir: Path | str | None = None,
    store: str | SessionStore | None = None,
    recorder: SpanRecorder | None = None,
) -> Rows[SessionRow]:
    """The sessions of the local traces, the session store and this process, most recently started first.

    Filters combine: `session` (an id, or a prefix of exactly one id: `SessionNotFound` /
    `AmbiguousSessionId` otherwise), `user` (user id), `state` (``running``, ``success``, ``fail``,
    ``indeterminate``), `tag`, `since` / `until` (sessions active in that window: epoch seconds, a
    datetime, ``"30m"``/``"2d"`` ago, or an ISO date). `data_dir` and `store` (a ``session_store``
    value or a `SessionStore`) default to the settings; `recorder` adds the spans it kept.
    """
    now = time.time()
    since_ts, until_ts = _time_filter(since, until, now)
    rows = _sessions_from(_gather(data_dir, store, recorder), now)
    keep = _session_filter(rows, session, user, state, tag, since_ts, until_ts)
    found = sorted((row for row in rows.values() if keep(row)), key=lambda r: (-r.started, r.id))
    return Rows(found[:limit] if limit is not None else found)


def read_spans(
    session: str | None = None,
    *,
    user: str | None = None,
    state: str | None = None,
    since: float | datetime.datetime | str | None = None,
    until: float | datetime.datetime | str | None = None,
    trace_id: str | None = None,
    data_dir: Path | str | None = None,
    store: str | SessionStore | None = None,
    recorder: SpanRecorder | None = None,
) -> Rows[SpanRow]:
    """The spans of the local traces (and of `recorder`), ordered by start time; live markers left out.

    Filters combine: `session` (an id or a unique prefix, as for `read_sessions`), `user` and
    `state` (of the span's session), `since` / `until` (the span's start), `trace_id`.
    """
    now = time.time()
    since_ts, until_ts = _time_filter(since, until, now)
    sources = _gather(data_dir, store, recorder)
    spans = [s for s in sources.spans if s.kind != MARKER_KIND]
    keep_session: Callable[[SpanRow], bool] = lambda _span: True  # noqa: E731
    if session is not None or user is not None or state is not None:
        rows = _sessions_from(sources, now)
        keep = _session_filter(rows, session, user, state, None, None, None)
        kept = {row.id for row in rows.values() if keep(row)}
        traces = {rows[session_id].trace_id for session_id in kept}
        keep_session = lambda span: (  # noqa: E731
            span.session_id in kept if span.session_id else span.trace_id in traces
        )
    found = [
        s
        for s in spans
        if keep_session(s)
        and (trace_id is None or s.trace_id == trace_id)
        and (since_ts is None or s.start >= since_ts)
        and (until_ts is None or s.start <= until_ts)
    ]
    found.sort(key=lambda s: (s.start, s.end))
    return Rows(found)


__all__ = [
    "DEFAULT_RECORDED_SPANS",
    "AmbiguousSessionId",
    "Rows",
    "SessionNotFound",
    "SessionRow",
    "SpanRecorder",
    "SpanRow",
    "open_store_for_reading",
    "parse_time",
    "read_sessions",
    "read_spans",
    "resolve_session_id",
    "span_row",
]
