"""``%%session`` and ``%session``: run a cell as one session; show, end or replace sessions.

How ``%%session`` runs its cell: IPython cannot run a cell magic's body with top-level ``await``
(a cell magic is an ordinary function call), so the cell is not handed to a cell magic at all.

1. An input transformer (pure: it runs for completion checks too) removes the ``%%session ...``
   line from a cell whose arguments parse, so the body is compiled as the cell itself: top-level
   ``await``, the displayed value of the last expression, and tracebacks (same lines, same
   frames) are exactly those of the same code without the magic.
2. The ``pre_run_cell`` hook, which runs in the context the cell's code runs in, starts the
   session there (`sdk.start_session`): it is current for the whole cell.
3. The ``post_run_cell`` hook ends it with the cell's outcome and displays its timeline
   (`notebook_ext.timeline.SessionTimeline`: a summary, then one row per span).

The cell's session and the cell's span in the auto session link to each other (span links), so a
backend can go from one to the other.

A cell whose arguments do not parse is left to IPython, which calls the ``%%session`` cell magic,
which raises `UsageError` (one line, no traceback). A session that cannot start (say, its id is
in use) rejects the cell through a one-shot AST transformer that replaces the body with that
`UsageError`. The cell magic called directly (``get_ipython().run_cell_magic("session", ...)``)
runs the body with ``shell.run_cell``, as ``%%capture`` does (no top-level ``await`` there).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import shlex
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn, cast

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display as _untyped_display
from traitlets import Int, Unicode

import sdk
from notebook_ext.kernel import Cell, NotebookHooks, auto_session, guarded, init_settings
from notebook_ext.summary import (
    Row,
    SessionsView,
    error_counter,
    format_cost,
    format_duration,
    session_rows,
    span_recorder,
    trace_link,
)
from notebook_ext.timeline import MAX_ROWS, SessionList, SessionTimeline, format_clock

SESSION_CELLS = "session-cells"
"""The participant the extension adds to the shell's `NotebookHooks`."""

_MAGIC_LINE = re.compile(r"%%session(?=\s|$)(?P<args>.*)\Z", re.DOTALL)

END_STATES = ("success", "fail", "indeterminate")
DEFAULT_LISTED = 20

CELL_LINK = "notebook.cell"
"""`sessiontrace.link` of the link from a ``%%session`` cell's session to the cell's span."""
SESSION_LINK = "session"
"""`sessiontrace.link` of the link from the cell's span to the session the cell ran."""
CELL_SESSION_ID = "notebook.cell.session_id"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as IPython's UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


_CELL_PARSER = _Parser(prog="%%session", add_help=False)
_CELL_PARSER.add_argument("name", nargs="?", default=None)
_CELL_PARSER.add_argument("--id", dest="session_id", default=None)
_CELL_PARSER.add_argument("--user", dest="user_id", default=None)
_CELL_PARSER.add_argument("--tag", dest="tags", action="append", default=[])
_CELL_PARSER.add_argument("--resume", action="store_true")
BUDGET_FLAGS: tuple[tuple[str, str, type[float] | type[int]], ...] = (
    ("--budget-usd", "max_cost_usd", float),
    ("--budget-tokens", "max_tokens", int),
    ("--budget-llm-calls", "max_llm_calls", int),
    ("--budget-seconds", "max_duration_s", float),
    ("--budget-errors", "max_errors", int),
    ("--budget-repeats", "max_repeats", int),
)
"""``%%session`` flags that give the cell's session an `sdk.Budget` limit (see docs/budgets.md)."""
for _flag, _field, _type in BUDGET_FLAGS:
    _CELL_PARSER.add_argument(_flag, dest=_field, type=_type, default=None)
_CELL_PARSER.add_argument("--on-exceed", dest="on_exceed", choices=("raise", "warn"), default=None)


_LIST_PARSER = _Parser(prog="%sessions", add_help=False)
_LIST_PARSER.add_argument("--limit", type=int, default=DEFAULT_LISTED)
_LIST_PARSER.add_argument("--user", default=None)
_LIST_PARSER.add_argument("--state", choices=("running", *END_STATES), default=None)
_LIST_PARSER.add_argument("--tag", default=None)
_LIST_PARSER.add_argument("--since", default=None)


class SessionArgs(NamedTuple):
    """What the ``%%session`` line asks for."""

    name: str | None
    session_id: str | None
    user_id: str | None
    tags: tuple[str, ...]
    resume: bool = False
    budget: sdk.Budget | None = None


def parse_cell_args(line: str) -> SessionArgs:
    """Parse ``[NAME] [--id ID] [--user U] [--tag T ...] [--resume] [--budget-usd X ...] [--on-exceed
    raise|warn]``; raise UsageError when they do not parse."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%session: {exc}") from None
    args = _CELL_PARSER.parse_args(argv)
    for flag, value in (("NAME", args.name), ("--id", args.session_id), ("--user", args.user_id)):
        if value is not None and not value.strip():
            raise UsageError(f"%%session: {flag} must not be empty")
    if args.resume and args.session_id is None:
        raise UsageError("%%session: --resume needs --id ID (the id of the session to resume)")
    return SessionArgs(args.name, args.session_id, args.user_id, tuple(args.tags), args.resume, _budget(args))


def _budget(args: argparse.Namespace) -> sdk.Budget | None:
    """The budget the ``--budget-*`` flags set (None when they set none)."""
    limits = {field: getattr(args, field) for _, field, _ in BUDGET_FLAGS}
    if all(value is None for value in limits.values()):
        if args.on_exceed is not None:
            raise UsageError("%%session: --on-exceed needs a limit (--budget-usd, --budget-tokens, ...)")
        return None
    try:
        return sdk.Budget(**limits, on_exceed=args.on_exceed or "raise")
    except ValueError as exc:
        raise UsageError(f"%%session: {exc}") from None


def split_session_cell(lines: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(arguments, body lines)`` when the first non-blank line is ``%%session ...``, else None."""
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines):
        return None
    match = _MAGIC_LINE.match(lines[start].rstrip("\r\n"))
    if match is None:
        return None
    return match.group("args").strip(), list(lines[start + 1 :])


class SessionCellTransformer:
    """Input transformer: a ``%%session`` cell whose arguments parse becomes its body (line numbers kept)."""

    has_side_effects = False  # IPython may also call it to check whether input is complete

    def __call__(self, lines: list[str]) -> list[str]:
        split = split_session_cell(lines)
        if split is None:
            return lines
        try:
            parse_cell_args(split[0])
        except UsageError:
            return lines  # IPython hands it to the cell magic, which raises the UsageError
        return split[1]


class RejectCell(ast.NodeTransformer):
    """AST transformer: once asked, replaces the next cell's code with ``raise UsageError(message)``."""

    def __init__(self) -> None:
        self.pending: str | None = None

    def visit_Module(self, node: ast.Module) -> ast.Module:
        message, self.pending = self.pending, None
        if message is None:
            return node
        raising = ast.parse(
            f"raise __import__('IPython.core.error', fromlist=['UsageError']).UsageError({message!r})"
        )
        return ast.Module(body=raising.body, type_ignores=[])


def display(obj: object) -> None:
    """Show `obj` in the cell's output (IPython's `display`, which is not annotated)."""
    _untyped_display(obj)  # type: ignore[no-untyped-call]  # IPython.display.display has no annotations


def end_for(session: sdk.Session, error: BaseException | None) -> None:
    """End a cell's session as the cell ended: as a ``with sdk.session()`` block would."""
    if error is None:
        session.end("success")
    elif isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)):
        # ipykernel interrupts a cell that awaits by cancelling it: both mean "interrupted".
        session.end("indeterminate", "interrupted")
    elif isinstance(error, SystemExit):
        ok = error.code is None or error.code == 0
        session.end("success" if ok else "fail", None if ok else f"exit {error.code}")
    elif isinstance(error, Exception):
        session.span.record_exception(error, escaped=True)
        session.end("fail", type(error).__name__)
    else:
        session.end("indeterminate", type(error).__name__)


def start_cell_session(args: SessionArgs) -> sdk.Session:
    """Start the session of a ``%%session`` cell, current in this context; its summary is ours to show."""
    options: dict[str, Any] = {
        "session_id": args.session_id,
        "user_id": args.user_id,
        "tags": args.tags,
        "resume": args.resume,
        "budget": args.budget,
    }
    try:
        session = sdk.start_session(args.name, overrides={"console_summary": False}, **options)
    except RuntimeError:  # per-session overrides need sdk.init(): the SDK is not started
        session = sdk.start_session(args.name, **options)
    counter = error_counter()
    if counter is not None:
        counter.watch(session.id)
    with guarded("%%session cell link"):
        link_to_cell(session)
    return session


def link_to_cell(session: sdk.Session) -> None:
    """Link a ``%%session`` cell's session and the cell's span in the auto session, both ways."""
    auto = auto_session()
    step = auto.step if auto is not None and auto is not session else None
    if step is None:
        return
    cell, own = step.get_span_context(), session.span.get_span_context()
    if not (cell.is_valid and own.is_valid):
        return
    session.span.add_link(cell, {"sessiontrace.link": CELL_LINK})
    step.add_link(own, {"sessiontrace.link": SESSION_LINK})
    step.set_attribute(CELL_SESSION_ID, session.id)


class SessionCells:
    """The hooks' participant for ``%%session`` cells: start before the body, end and summarize after it."""

    def __init__(self, magics: SessionMagics) -> None:
        self.magics = magics
        self._open: list[tuple[int, sdk.Session | None]] = []

    def before_cell(self, cell: Cell) -> None:
        args = self.magics.transformed_cell_args(cell.source)
        if args is None:
            return
        try:
            session = start_cell_session(args)
        except (ValueError, TypeError, sdk.ConfigError) as exc:
            self.magics.rejector.pending = f"%%session: {exc}"
            self._open.append((cell.depth, None))
            return
        self._open.append((cell.depth, session))

    def adopt_cell(self, cell: Cell) -> None:
        pass

    def after_cell(self, cell: Cell, error: BaseException | None) -> None:
        if not self._open or self._open[-1][0] != cell.depth:
            return
        _, session = self._open.pop()
        self.magics.rejector.pending = None  # unused if the cell did not even parse
        if session is not None:
            self.magics.finish(session, error)

    def abandon(self) -> None:
        """End what is still open (the extension is being unloaded mid-cell)."""
        while self._open:
            _, session = self._open.pop()
            if session is not None:
                session.end("indeterminate", "extension unloaded")


@magics_class
class SessionMagics(Magics):
    """``%%session`` and ``%session`` (``%load_ext notebook_ext``)."""

    ui_url = Unicode(
        "",
        help="Address of a trace in your backend's UI, with {trace_id} and/or {session_id}; when set, "
        "summaries link to it (e.g. http://localhost:16686/trace/{trace_id} for Jaeger).",
    ).tag(config=True)
    max_rows = Int(
        MAX_ROWS,
        help="Spans a session's timeline draws at most; the rest are counted (sdk.read_spans has them all).",
    ).tag(config=True)

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell=shell)
        self.ipython = shell
        self.transformer = SessionCellTransformer()
        self.rejector = RejectCell()
        self.cells = SessionCells(self)

    # --- installing ---------------------------------------------------------------------------

    def install(self) -> None:
        """Register the magics, the transformers and the cell hooks (each once)."""
        shell = self.ipython
        span_recorder()  # from now on (or from sdk.init(), if later) spans are kept for the timelines
        shell.register_magics(self)
        if self.transformer not in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.append(self.transformer)
        if self.rejector not in shell.ast_transformers:
            shell.ast_transformers.append(self.rejector)
        NotebookHooks.attach(shell).add(SESSION_CELLS, self.cells, order=1)

    def uninstall(self) -> None:
        """Remove everything `install` added."""
        shell = self.ipython
        self.cells.abandon()
        hooks = NotebookHooks.of(shell)
        if hooks is not None and hooks.participants.get(SESSION_CELLS) is self.cells:
            hooks.remove(SESSION_CELLS)
        if self.transformer in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.remove(self.transformer)
        if self.rejector in shell.ast_transformers:
            shell.ast_transformers.remove(self.rejector)
        manager = shell.magics_manager
        for kind, table in self.magics.items():
            for name, func in table.items():
                if manager.magics[kind].get(name) == func:
                    del manager.magics[kind][name]
        if manager.registry.get(type(self).__name__) is self:
            del manager.registry[type(self).__name__]
        configurables = cast("list[object]", shell.configurables)  # annotated too narrowly by IPython
        if self in configurables:
            configurables.remove(self)

    def transformed_cell_args(self, source: str) -> SessionArgs | None:
        """The arguments of `source` if it is a ``%%session`` cell the transformer turns into its body.

        The decision is the transformer's own: made on the lines IPython's cleanup transforms
        before it (leading blank lines, indentation, prompts) hand to it.
        """
        lines = source.splitlines(keepends=True)
        try:
            for transform in list(self.ipython.input_transformers_cleanup):
                if transform is self.transformer:
                    break
                lines = transform(lines)
            else:
                return None  # not installed: IPython hands the cell to the cell magic
        except Exception:  # input IPython will reject too; it runs no code
            return None
        split = split_session_cell(lines)
        if split is None:
            return None
        try:
            return parse_cell_args(split[0])
        except UsageError:
            return None

    # --- the magics ---------------------------------------------------------------------------

    @line_cell_magic
    def session(self, line: str, cell: str | None = None) -> None:
        """Run a cell as one session (``%%session``); show, end or replace sessions (``%session``).

        %%session [NAME] [--id ID] [--user U] [--tag T ...] [--resume] [--budget-usd X]
                  [--budget-tokens N] [--budget-llm-calls N] [--budget-seconds S]
                  [--budget-errors N] [--budget-repeats N] [--on-exceed raise|warn]

        The cell's code runs inside a new session (``sdk.start_session``) named NAME (default
        ``session``), with session id ID (default: a random one), user id U and tags T (repeat
        ``--tag`` for several). ``--resume`` (with ``--id``) continues session ID from the session
        store, also after a kernel restart: same session id, same trace, a new segment. The
        ``--budget-*`` flags give the session an `sdk.Budget` (cost in USD, tokens, LLM calls,
        seconds, errors, repeated tool calls): over it, the next LLM call raises
        `sdk.BudgetExceeded` before it is sent (``--on-exceed warn``: records it and goes on). Top-level
        ``await`` works as in any cell. An exception ends the session as ``fail`` and is shown
        as it would be without the magic; interrupting the kernel ends it as ``indeterminate``
        (reason ``interrupted``). After the cell its timeline is shown: session id, state,
        duration, spans, errors (and LLM calls, tokens and cost when the session made LLM calls;
        a link when ``%config SessionMagics.ui_url`` is set), then one row per span on a shared
        time axis. ``%%session`` must be the cell's first line; other cell magics may follow it.

        %session               show the current session and the auto session
        %session show [ID]     the timeline of session ID (an id or a unique prefix; default:
                               the current session, else the most recent one)
        %session end [STATE]   end the current session (else the auto session) as STATE:
                               success (default), fail or indeterminate
        %session new NAME      end the auto session and start a new one named NAME
        """
        if cell is None:
            self._line(line)
        else:
            self._cell(line, cell)

    def _cell(self, line: str, cell: str) -> None:
        args = parse_cell_args(line)  # raises UsageError: the transformer leaves only such cells to us
        # Called directly (run_cell_magic) rather than as a cell's first line: run the body as a
        # nested cell, as %%capture does.
        try:
            session = start_cell_session(args)
        except (ValueError, TypeError, sdk.ConfigError) as exc:
            raise UsageError(f"%%session: {exc}") from None
        shell: Any = self.ipython  # InteractiveShell.run_cell has no annotations
        result = shell.run_cell(cell, store_history=False)
        self.finish(session, result.error_before_exec or result.error_in_exec)

    def _line(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%session: {exc}") from None
        if not words:
            current = sdk.current_session()
            explicit = current if current is not None and not current.auto else None
            display(SessionsView(explicit, auto_session(), link_template=self.ui_url))
        elif words[0] == "end":
            if len(words) > 2:
                raise UsageError("%session end [STATE]: one state at most")
            state = words[1] if len(words) == 2 else "success"
            if state not in END_STATES:
                raise UsageError(f"%session end: STATE must be one of {', '.join(END_STATES)}, not {state!r}")
            sdk.end_session(state=state)
        elif words[0] == "new":
            if len(words) != 2 or not words[1].strip():
                raise UsageError("%session new NAME: give the new auto session's name")
            new_auto_session(words[1])
        elif words[0] == "show":
            if len(words) > 2:
                raise UsageError("%session show [ID]: one session id (or prefix) at most")
            display(self.timeline_of(words[1] if len(words) == 2 else None))
        else:
            raise UsageError(
                f"%session: unknown command {words[0]!r} (use: show [ID], end [STATE], new NAME)"
            )

    @line_magic
    def sessions(self, line: str) -> None:
        """List recent sessions: from the session store, the local traces and this kernel.

        %sessions [--limit N] [--user U] [--state STATE] [--tag T] [--since WHEN]

        Newest first, at most N (default 20): id (the shortest unique prefix, for ``%session show
        ID``), name, user, state, start, duration, spans, LLM calls, tokens and cost, and a link to
        each session's trace when ``%config SessionMagics.ui_url`` is set. WHEN: ``30m``, ``2h``,
        ``1d`` ago, or an ISO date. The same rows as data: ``sdk.read_sessions()``.
        """
        try:
            args = _LIST_PARSER.parse_args(shlex.split(line))
        except ValueError as exc:
            raise UsageError(f"%sessions: {exc}") from None
        if args.limit < 1:
            raise UsageError("%sessions: --limit must be at least 1")
        try:
            rows = sdk.read_sessions(
                user=args.user,
                state=args.state,
                tag=args.tag,
                since=args.since,
                limit=args.limit + 1,
                recorder=span_recorder(),
            )
        except ValueError as exc:
            raise UsageError(f"%sessions: {exc}") from None
        note = None
        if len(rows) > args.limit:
            note = f"the {args.limit} most recent shown; more match (%sessions --limit N)"
        display(SessionList(rows[: args.limit], link_template=self.ui_url, note=note))

    def timeline_of(self, prefix: str | None) -> SessionTimeline:
        """The timeline of the session `prefix` names (default: the current session, else the latest one)."""
        recorder = span_recorder()
        if prefix is None:
            current = sdk.current_session()
            if current is not None:
                prefix = current.id
        try:
            found = sdk.read_sessions(prefix, limit=1, recorder=recorder)
            if not found:
                raise UsageError(
                    "%session show: no sessions recorded yet (none in this kernel, the store or the local traces)"
                )
            row = found[0]
            spans = sdk.read_spans(row.id, recorder=recorder)
        except LookupError as exc:
            raise UsageError(f"%session show: {exc}") from None
        return SessionTimeline(
            "sessiontrace",
            record_rows(row, link=trace_link(self.ui_url, row)),
            spans,
            running=row.state == "running",
            max_rows=self.max_rows,
        )

    # --- shared -------------------------------------------------------------------------------

    def finish(self, session: sdk.Session, error: BaseException | None) -> None:
        """End a cell's session with the cell's outcome and display its timeline."""
        with guarded("%%session end"):
            end_for(session, error)
        counter = error_counter()
        errors = counter.take(session.id) if counter is not None else None
        with guarded("%%session summary"):
            recorder = span_recorder()
            spans = recorder.rows(session.id) if recorder is not None else []
            header = session_rows(session, errors=errors, link=trace_link(self.ui_url, session))
            display(SessionTimeline("sessiontrace", header, spans, max_rows=self.max_rows))


def record_rows(row: sdk.SessionRow, *, link: str | None = None) -> list[Row]:
    """The header rows of a session read back as data (`sdk.SessionRow`)."""
    state = f"{row.state} ({row.reason})" if row.reason else row.state
    rows = [
        Row("session", f"{row.name} · {row.id}"),
        Row("state", state),
        Row("user", row.user_id or "-"),
        Row("started", format_clock(row.started) if row.started else "-"),
        Row("duration", format_duration(row.duration)),
        Row("spans", str(row.spans)),
        Row("errors", str(row.errors)),
    ]
    if row.llm_calls:
        rows += [
            Row("LLM calls", str(row.llm_calls)),
            Row("LLM input tokens", str(row.input_tokens)),
            Row("LLM output tokens", str(row.output_tokens)),
            Row("LLM cost", format_cost(row.cost_usd)),
        ]
    if link:
        rows.append(Row("trace", row.trace_id, link))
    return rows


def new_auto_session(name: str) -> sdk.Session | None:
    """End the running auto session and start a new one named `name`, keeping every other setting.

    The settings given to ``sdk.init()`` are kept (the config file and environment are read
    again, as by any ``init()``); only ``auto_session_name`` changes.
    """
    current = auto_session()
    if current is not None:
        current.end("success", "replaced by %session new")
    settings = init_settings(sdk.config())
    settings.update(auto_start_session=True, auto_session_name=name)
    try:
        sdk.init(**settings)
    except sdk.ConfigError as exc:
        raise UsageError(f"%session new: {exc}") from None
    return auto_session()


def load(shell: InteractiveShell) -> SessionMagics:
    """Install the extension in `shell`, once: a second load returns what is installed."""
    existing = shell.magics_manager.registry.get(SessionMagics.__name__)
    if isinstance(existing, SessionMagics):
        existing.install()
        return existing
    magics = SessionMagics(shell)
    magics.install()
    return magics


def unload(shell: InteractiveShell) -> None:
    """Remove everything the extension installed in `shell`."""
    existing = shell.magics_manager.registry.get(SessionMagics.__name__)
    if isinstance(existing, SessionMagics):
        existing.uninstall()
