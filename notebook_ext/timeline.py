"""A session as a waterfall in a cell's output, and a list of recent sessions.

`SessionTimeline` is what ``%%session`` shows after its cell and ``%session show [ID]`` shows on
demand: one row per span (name, kind, a duration bar on the session's time axis, status, tokens
and cost on LLM rows, the error on failed rows, captured input and output when recorded), nested
by parent in HTML ``<details>`` elements, so a subtree folds with no JavaScript. `SessionList`
is what ``%sessions`` shows.

Both are display objects: the front end picks ``text/html`` (JupyterLab, classic Notebook, VS
Code) or ``text/plain`` (a terminal IPython, ``nbconvert --to markdown``). The HTML is
self-contained: one ``<style>`` block and inline styles, no script, no font or image to fetch.
Colours come from the front end's theme variables (``--jp-*`` in Jupyter, ``--vscode-*`` in VS
Code) with fallbacks, text inherits the notebook's colour, and ``prefers-color-scheme`` adjusts
the fallbacks for dark themes. Everything shown that comes from a program or its users (span
names, attribute values, errors) is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import sdk
from notebook_ext.summary import Row, format_cost, format_duration, rows_text, trace_link

MAX_ROWS = 300
"""Spans shown at most; past this the rest are counted, not drawn (the notebook file stays small)."""
FOLD_OVER = 40
"""A subtree with more spans than this starts folded."""
MAX_CONTENT = 2000
"""Characters of captured input or output shown per span."""

_CSS = """
.st-tl{--st-border:var(--jp-border-color2,var(--vscode-panel-border,rgba(128,128,128,.35)));
--st-muted:var(--jp-content-font-color2,var(--vscode-descriptionForeground,rgba(110,110,110,1)));
--st-error:var(--jp-error-color1,var(--vscode-errorForeground,#d32f2f));
--st-track:var(--jp-layout-color2,var(--vscode-editorWidget-background,rgba(128,128,128,.12)));
--st-session:#6b7f99;--st-llm:#8e5cd9;--st-tool:#2e8b57;--st-agent:#c77800;--st-cell:#5c7cfa;--st-other:#3d8fd1;
font-family:var(--jp-ui-font-family,var(--vscode-font-family,system-ui,sans-serif));font-size:12px;
color:inherit;line-height:1.5;max-width:100%;overflow-x:auto}
@media (prefers-color-scheme:dark){.st-tl{--st-muted:var(--jp-content-font-color2,var(--vscode-descriptionForeground,#a0a0a0));
--st-error:var(--jp-error-color1,var(--vscode-errorForeground,#ff6b6b));--st-session:#8fa3bf;--st-llm:#b48cf2;
--st-tool:#4cc38a;--st-agent:#f0a020;--st-cell:#8aa0ff;--st-other:#5eb0ef}}
.st-tl .st-head{margin:0 0 6px 0}
.st-tl .st-head table{border-collapse:collapse}
.st-tl .st-head th{text-align:left;padding:0 1em 0 0;font-weight:600}
.st-tl .st-head td{text-align:left;padding:0}
.st-tl .st-grid{display:grid;grid-template-columns:minmax(180px,2fr) 64px minmax(160px,3fr) 70px 52px 90px 80px;
column-gap:8px;align-items:center;min-width:760px}
.st-tl .st-axis{color:var(--st-muted);border-bottom:1px solid var(--st-border);font-size:11px}
.st-tl .st-ticks{position:relative;height:16px}
.st-tl .st-ticks span{position:absolute;transform:translateX(-50%);white-space:nowrap}
.st-tl .st-ticks span:first-child{transform:none}.st-tl .st-ticks span:last-child{transform:translateX(-100%)}
.st-tl details>summary{list-style:none;cursor:pointer}
.st-tl details>summary::-webkit-details-marker{display:none}
.st-tl .st-row{border-bottom:1px solid var(--st-border);padding:1px 0}
.st-tl .st-name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.st-tl .st-tw{display:inline-block;width:1.1em;color:var(--st-muted)}
.st-tl details>summary .st-tw::before{content:"\\25B8"}
.st-tl details[open]>summary .st-tw::before{content:"\\25BE"}
.st-tl .st-kind{color:var(--st-muted);font-size:11px}
.st-tl .st-track{position:relative;height:12px;background:var(--st-track);border-radius:2px}
.st-tl .st-bar{position:absolute;top:1px;height:10px;min-width:2px;border-radius:2px;background:var(--st-other)}
.st-tl .st-k-session{background:var(--st-session)}.st-tl .st-k-llm{background:var(--st-llm)}
.st-tl .st-k-tool{background:var(--st-tool)}.st-tl .st-k-agent,.st-tl .st-k-workflow,.st-tl .st-k-task{background:var(--st-agent)}
.st-tl .st-k-cell{background:var(--st-cell)}.st-tl .st-bar.st-failed{background:var(--st-error)}
.st-tl .st-num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.st-tl .st-status-error{color:var(--st-error);font-weight:600}
.st-tl .st-status-ok,.st-tl .st-status-unset{color:var(--st-muted)}
.st-tl .st-error{color:var(--st-error);padding:0 0 2px 0;white-space:pre-wrap;word-break:break-word}
.st-tl .st-io{margin:0 0 2px 0;color:var(--st-muted)}
.st-tl .st-io pre{margin:0;white-space:pre-wrap;word-break:break-word;max-height:12em;overflow:auto;
background:var(--st-track);padding:2px 4px;border-radius:2px;color:inherit}
.st-tl .st-more{color:var(--st-muted);padding:4px 0}
.st-tl table.st-list{border-collapse:collapse;min-width:760px}
.st-tl table.st-list th{text-align:left;border-bottom:1px solid var(--st-border);padding:2px 8px 2px 0;font-weight:600}
.st-tl table.st-list td{border-bottom:1px solid var(--st-border);padding:2px 8px 2px 0;white-space:nowrap}
.st-tl table.st-list td,.st-tl .st-head td,.st-tl .st-head th{text-align:left}
.st-tl table.st-list td.st-num,.st-tl table.st-list th.st-num{text-align:right}
.st-tl .st-io>summary::before{content:"\\25B8  "}.st-tl .st-io[open]>summary::before{content:"\\25BE  "}
.st-tl .st-state-fail{color:var(--st-error);font-weight:600}
.st-tl .st-state-running{color:var(--st-other)}
.st-tl code{font-family:var(--jp-code-font-family,var(--vscode-editor-font-family,monospace))}
""".replace("\n", "")


def esc(value: object) -> str:
    """Text from a program or its users, safe inside HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def format_tokens(input_tokens: int | None, output_tokens: int | None) -> str:
    """``12→5`` (input → output), ``-`` for none."""
    if input_tokens is None and output_tokens is None:
        return "-"
    return f"{input_tokens or 0:,}\u2192{output_tokens or 0:,}"


def format_clock(ts: float) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def shortened(text: str, limit: int = MAX_CONTENT) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


class Node(NamedTuple):
    """A span and its children, in start order."""

    span: sdk.SpanRow
    children: list[Node]
    size: int
    """Spans in this subtree, this one included."""


def build_tree(spans: Iterable[sdk.SpanRow]) -> list[Node]:
    """The spans as a forest: each under its parent when the parent is among them, else a root."""
    ordered = sorted(spans, key=lambda s: (s.start, -s.end, s.name))
    by_id = {s.span_id: s for s in ordered}
    children: dict[str | None, list[sdk.SpanRow]] = {}
    for span in ordered:
        parent = span.parent_span_id if span.parent_span_id in by_id else None
        children.setdefault(parent, []).append(span)

    def node(span: sdk.SpanRow, depth: int) -> Node:
        kids = [node(child, depth + 1) for child in children.get(span.span_id, ())] if depth < 200 else []
        return Node(span, kids, 1 + sum(k.size for k in kids))

    return [node(span, 0) for span in children.get(None, ())]


def walk(nodes: Sequence[Node], depth: int = 0) -> Iterator[tuple[Node, int]]:
    """Every node with its depth, parents before children."""
    for item in nodes:
        yield item, depth
        yield from walk(item.children, depth + 1)


class _Axis(NamedTuple):
    start: float
    end: float

    @property
    def length(self) -> float:
        return max(self.end - self.start, 1e-9)

    def place(self, span: sdk.SpanRow) -> tuple[float, float]:
        """Left offset and width of the span's bar, in percent of the axis."""
        left = (span.start - self.start) / self.length * 100
        width = (span.end - span.start) / self.length * 100
        left = min(max(left, 0.0), 100.0)
        return left, min(max(width, 0.0), 100.0 - left)


def _axis(spans: Sequence[sdk.SpanRow], running_until: float | None) -> _Axis:
    start = min((s.start for s in spans), default=0.0)
    end = max((s.end for s in spans), default=start)
    if running_until is not None:
        end = max(end, running_until)
    return _Axis(start, end)


class SessionTimeline:
    """One session as a waterfall: a header of rows (`summary.Row`), then its spans on a shared time axis."""

    def __init__(
        self,
        title: str,
        header: Sequence[Row],
        spans: Sequence[sdk.SpanRow],
        *,
        running: bool = False,
        note: str | None = None,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.title = title
        self.header = list(header)
        self.spans = list(spans)
        self.tree = build_tree(self.spans)
        self.axis = _axis(self.spans, time.time() if running else None)
        self.note = note
        self.max_rows = max_rows

    @property
    def hidden(self) -> int:
        """Spans past `max_rows`, counted but not drawn."""
        return max(len(self.spans) - self.max_rows, 0)

    # --- HTML --------------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        parts = [f'<div class="st-tl sessiontrace-timeline"><style>{_CSS}</style>', self._header_html()]
        if self.spans:
            parts.append(self._axis_html())
            budget = [self.max_rows]
            parts.extend(self._nodes_html(self.tree, 0, budget))
            if self.hidden:
                parts.append(
                    f'<div class="st-more">{self.hidden:,} more span{"s" if self.hidden != 1 else ""} not '
                    f"shown (the first {self.max_rows:,} are); <code>sdk.read_spans(session_id)</code> has them all"
                    "</div>"
                )
        elif self.note is None:
            parts.append('<div class="st-more">no spans of this session are recorded here</div>')
        if self.note:
            parts.append(f'<div class="st-more">{esc(self.note)}</div>')
        parts.append("</div>")
        return "".join(parts)

    def _header_html(self) -> str:
        cells = []
        for row in self.header:
            value = esc(row.value)
            if row.href:
                value = f'<a href="{esc(row.href)}" target="_blank" rel="noopener noreferrer">{value}</a>'
            cells.append(f"<tr><th>{esc(row.label)}</th><td>{value}</td></tr>")
        return (
            f'<div class="st-head"><table class="sessiontrace-summary"><caption style="text-align:left;'
            f'font-weight:600">{esc(self.title)}</caption>{"".join(cells)}</table></div>'
        )

    def _axis_html(self) -> str:
        ticks = "".join(
            f'<span style="left:{fraction * 100:.2f}%">{esc(format_duration(self.axis.length * fraction))}</span>'
            for fraction in (0.0, 0.25, 0.5, 0.75, 1.0)
        )
        labels = "".join(f"<div>{label}</div>" for label in ("span", "kind"))
        rest = "".join(
            f'<div class="st-num">{label}</div>' for label in ("duration", "status", "tokens", "cost")
        )
        return f'<div class="st-grid st-axis">{labels}<div class="st-ticks">{ticks}</div>{rest}</div>'

    def _nodes_html(self, nodes: Sequence[Node], depth: int, budget: list[int]) -> Iterator[str]:
        for item in nodes:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            row = self._row_html(item, depth)
            extra = self._extra_html(item.span, depth)
            if item.children:
                opened = " open" if item.size <= FOLD_OVER or depth == 0 else ""
                yield f'<details{opened} class="st-node"><summary>{row}</summary>{extra}'
                yield from self._nodes_html(item.children, depth + 1, budget)
                yield "</details>"
            else:
                yield f'<div class="st-node">{row}{extra}</div>'

    def _row_html(self, item: Node, depth: int) -> str:
        span = item.span
        left, width = self.axis.place(span)
        kind = esc(span.kind)
        failed = " st-failed" if span.status == "error" else ""
        twisty = '<span class="st-tw"></span>'  # a triangle when the row is a <summary> (see the CSS)
        name = (
            f'<div class="st-name" style="padding-left:{depth * 14}px" title="{esc(span.name)}">'
            f"{twisty}{esc(span.name)}</div>"
        )
        bar = (
            f'<div class="st-track"><div class="st-bar st-k-{kind}{failed}" '
            f'style="left:{left:.3f}%;width:{width:.3f}%" title="{esc(format_duration(span.duration))}"></div></div>'
        )
        llm = span.kind == "llm"
        tokens = format_tokens(span.input_tokens, span.output_tokens) if llm else ""
        cost = format_cost(span.cost_usd) if llm and span.cost_usd is not None else ""
        status = "error" if span.status == "error" else ("ok" if span.status == "ok" else "")
        return (
            f'<div class="st-grid st-row" data-span-id="{esc(span.span_id)}" data-kind="{kind}" '
            f'data-status="{esc(span.status)}">{name}<div class="st-kind">{kind}</div>{bar}'
            f'<div class="st-num">{esc(format_duration(span.duration))}</div>'
            f'<div class="st-num st-status-{esc(span.status)}">{status}</div>'
            f'<div class="st-num st-tokens">{esc(tokens)}</div><div class="st-num st-cost">{esc(cost)}</div></div>'
        )

    def _extra_html(self, span: sdk.SpanRow, depth: int) -> str:
        indent = f' style="padding-left:{depth * 14 + 18}px"'
        parts = []
        if span.error:
            parts.append(f'<div class="st-error"{indent}>{esc(shortened(span.error, 500))}</div>')
        for label, content in (("input", span.input), ("output", span.output)):
            if content:
                parts.append(
                    f'<details class="st-io"{indent}><summary>{label}</summary>'
                    f"<pre>{esc(shortened(content))}</pre></details>"
                )
        return "".join(parts)

    # --- text --------------------------------------------------------------------------------

    def text(self) -> str:
        """The plain-text form: the header, then one indented line per span."""
        lines = [rows_text(self.title, self.header)]
        if self.spans:
            lines.append("")
            for shown, (item, depth) in enumerate(walk(self.tree)):
                if shown >= self.max_rows:
                    break
                span = item.span
                offset = format_duration(max(span.start - self.axis.start, 0.0))
                line = (
                    f"  {'  ' * depth}{span.name}  [{span.kind}]  +{offset}  {format_duration(span.duration)}"
                )
                if span.status == "error":
                    line += "  ERROR"
                if span.kind == "llm":
                    line += f"  tokens {format_tokens(span.input_tokens, span.output_tokens)}"
                    if span.cost_usd is not None:
                        line += f"  {format_cost(span.cost_usd)}"
                lines.append(printable(line))
                if span.error:
                    lines.append(printable(f"  {'  ' * depth}  ! {shortened(span.error, 300)}"))
            if self.hidden:
                lines.append(f"  ... {self.hidden:,} more spans not shown")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


def printable(text: str) -> str:
    """Text for a terminal: control characters escaped (names come from users)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def unique_prefixes(ids: Sequence[str], minimum: int = 8) -> dict[str, str]:
    """For each id, its shortest prefix of at least `minimum` characters that no other id starts with."""
    found = {}
    for session_id in ids:
        length = min(minimum, len(session_id))
        while length < len(session_id) and any(
            other != session_id and other.startswith(session_id[:length]) for other in ids
        ):
            length += 1
        found[session_id] = session_id[:length]
    return found


class SessionList:
    """Recent sessions as a table (what ``%sessions`` shows): one row per `sdk.SessionRow`."""

    COLUMNS = (
        "id",
        "name",
        "user",
        "state",
        "started",
        "duration",
        "spans",
        "LLM calls",
        "tokens",
        "cost",
        "scores",
    )
    NUMERIC = range(5, 10)

    def __init__(
        self, rows: Sequence[sdk.SessionRow], *, link_template: str = "", note: str | None = None
    ) -> None:
        self.rows = list(rows)
        self.link_template = link_template
        self.note = note
        self.prefixes = unique_prefixes([r.id for r in self.rows])

    def link(self, row: sdk.SessionRow) -> str | None:
        """The backend UI's address of the session, when a template is configured."""
        return trace_link(self.link_template, row)

    def cells(self, row: sdk.SessionRow) -> list[str]:
        """The row's values as text, in `COLUMNS` order."""
        state = row.state if not row.reason else f"{row.state} ({row.reason})"
        return [
            self.prefixes[row.id],
            row.name,
            row.user_id or "-",
            state,
            format_clock(row.started) if row.started else "-",
            format_duration(row.duration),
            str(row.spans),
            str(row.llm_calls),
            f"{row.tokens:,}",
            format_cost(row.cost_usd) if row.llm_calls or row.cost_usd else "-",
            ", ".join(f"{name}={value}" for name, value in row.latest_scores.items()) or "-",
        ]

    def _repr_html_(self) -> str:
        numeric = ' class="st-num"'
        head = "".join(
            f"<th{numeric if i in self.NUMERIC else ''}>{esc(c)}</th>" for i, c in enumerate(self.COLUMNS)
        )
        if self.link_template:
            head += "<th>trace</th>"
        body = []
        for row in self.rows:
            cells = self.cells(row)
            tds = []
            for index, value in enumerate(cells):
                css = ' class="st-num"' if index in self.NUMERIC else ""
                if index == 3:
                    css = f' class="st-state-{esc(row.state)}"'
                text = esc(value)
                if index == 0:
                    text = f'<code title="{esc(row.id)} — %session show {esc(self.prefixes[row.id])}">{text}</code>'
                tds.append(f"<td{css}>{text}</td>")
            if self.link_template:
                href = self.link(row)
                tds.append(
                    f'<td><a href="{esc(href)}" target="_blank" rel="noopener noreferrer">open</a></td>'
                    if href
                    else "<td></td>"
                )
            body.append(f'<tr data-session-id="{esc(row.id)}">{"".join(tds)}</tr>')
        note = f'<div class="st-more">{esc(self.note)}</div>' if self.note else ""
        if not self.rows:
            note = '<div class="st-more">no sessions found</div>' + note
        return (
            f'<div class="st-tl sessiontrace-sessions"><style>{_CSS}</style><table class="st-list">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}</div>"
        )

    def text(self) -> str:
        """The plain-text form: an aligned table."""
        if not self.rows:
            return "no sessions found" + (f"\n{self.note}" if self.note else "")
        table = [list(self.COLUMNS), *(self.cells(r) for r in self.rows)]
        widths = [max(len(printable(row[i])) for row in table) for i in range(len(self.COLUMNS))]
        lines = [
            "  ".join(
                printable(cell).rjust(w) if i in self.NUMERIC else printable(cell).ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in table
        ]
        for row in self.rows:
            href = self.link(row)
            if href:
                lines.append(f"{self.prefixes[row.id]}: {href}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()
