"""Kernel awareness: one child span per executed cell, and sessions that outlive the cell that started them.

`attach_to_kernel` is the ``sessiontrace.hooks`` entry point: the SDK calls it after every
``sdk.init()`` when IPython is imported. It attaches one `NotebookHooks` to the running IPython
shell (a Jupyter kernel or a terminal IPython); calling it again changes nothing.

Nothing here depends on a ContextVar set in one cell being visible in the next (ipykernel runs a
cell that contains top-level ``await`` in a task of its own, so what such a cell sets is gone when it
ends). What must carry over lives in the process instead:

- the auto session is process-wide, and each cell is a *step* of it (`Session.begin_step`): the
  step's span ``cell[N]`` is the parent of every span of the cell that has no other parent;
- a session that ``sdk.start_session()`` made current in a cell is found again at the start of each
  later cell (`Session.last_started`) and made current for that cell (`Session.use`).

The hooks run inside IPython's ``pre_run_cell`` and ``post_run_cell`` events, which ipykernel fires
in the context the cell's code runs in (pre) and after the cell (post).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple, Protocol

import IPython
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell

import sdk
from notebook_ext.state import STATE
from notebook_ext.summary import span_recorder

logger = logging.getLogger("sessiontrace.notebook")

COUNTS_BEFORE_PRE_RUN_CELL = IPython.version_info >= (9, 8)
"""IPython 9.8 moved ``execution_count += 1`` before ``pre_run_cell``; earlier releases count after it."""

CELL_EXECUTION_COUNT = "notebook.cell.execution_count"
CELL_SOURCE_SHA256 = "notebook.cell.source_sha256"
CELL_ID = "notebook.cell.id"

CELLS = "cells"
"""The participant `attach_to_kernel` adds: cell spans and sessions carried from cell to cell."""


@contextmanager
def guarded(where: str) -> Iterator[None]:
    """Run hook code inside the user's kernel: a failure is logged once and swallowed.

    Under the SDK's own tests (``SESSIONTRACE_RAISE_INTERNAL_ERRORS=1``, the SDK's switch for the
    same purpose) it is re-raised, so IPython prints it in the cell's output and the tests see it.
    """
    try:
        yield
    except Exception as exc:
        if STATE.first_time((where, type(exc).__name__)):
            logger.error(
                "sessiontrace: internal error in the notebook hooks (%s); your code continues",
                where,
                exc_info=exc,
            )
        if os.environ.get("SESSIONTRACE_RAISE_INTERNAL_ERRORS", "") == "1":
            raise


class Cell(NamedTuple):
    """One execution of a cell, as the hooks see it."""

    execution_count: int
    source: str
    cell_id: str | None
    depth: int
    """1 for a cell the kernel runs; 2 and more for code a magic runs with ``shell.run_cell``."""


class CellParticipant(Protocol):
    """Something done around each cell: `before_cell` in the cell's context, `after_cell` once it ended."""

    def before_cell(self, cell: Cell) -> None: ...

    def after_cell(self, cell: Cell, error: BaseException | None) -> None: ...

    def adopt_cell(self, cell: Cell) -> None:
        """Called when attached while `cell` is already running (``sdk.init()`` in that cell)."""


def init_settings(config: sdk.Config) -> dict[str, Any]:
    """The settings `config` got from ``sdk.init()`` keywords: what to give ``init()`` to get it again."""
    return {key: getattr(config, key) for key, source in config.sources.items() if source.layer == "init"}


def say(message: str) -> None:
    """A line for the user in the running cell's output, as normal output (not stderr, which notebooks paint red)."""
    print(message, flush=True)


def auto_session() -> sdk.Session | None:
    """The process's auto session, if one is running."""
    for info in sdk.sessions():
        if info.auto:
            return info.session
    return None


def _current_task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None


class CellSpans:
    """Each outermost cell is a step of the auto session: a ``cell[N]`` span, parent of the cell's orphans.

    When the auto session has ended (``sdk.end_session()``, ``%session end``, the idle timeout)
    while ``auto_start_session`` is still on, the next cell starts a new one, with the settings of
    the last ``sdk.init()``, and says so in its output: the kernel's work never becomes traces
    without a session. When the setting was turned off since, the next cell says once that cells
    no longer belong to a session. After ``sdk.shutdown()`` nothing is recorded and nothing is said.
    """

    def __init__(self) -> None:
        self._session: sdk.Session | None = None
        self._last_auto: sdk.Session | None = None
        self._config: sdk.Config | None = None
        self._restarting = False
        self._said_off = False

    def before_cell(self, cell: Cell) -> None:
        if cell.depth == 1:
            self._begin(cell)

    def adopt_cell(self, cell: Cell) -> None:
        # After each init(): the init() cell itself gets its span, or the cell in which the auto
        # session started; a cell that has a span already (in a session ended since) gets no other.
        self._config = sdk.config()
        if self._restarting:
            return  # the init() _restart_auto runs: _begin goes on with the new auto session
        self._said_off = False
        if cell.depth == 1 and self._session is None:
            self._begin(cell)

    def _begin(self, cell: Cell) -> None:
        self._session = None
        auto = auto_session()
        if auto is None:
            auto = self._restart_auto()
        if auto is None:
            return
        self._last_auto = auto
        attributes: dict[str, Any] = {
            CELL_EXECUTION_COUNT: cell.execution_count,
            CELL_SOURCE_SHA256: hashlib.sha256(cell.source.encode("utf-8", "surrogatepass")).hexdigest(),
        }
        if cell.cell_id:
            attributes[CELL_ID] = cell.cell_id
        auto.begin_step(f"cell[{cell.execution_count}]", attributes)
        self._session = auto

    def after_cell(self, cell: Cell, error: BaseException | None) -> None:
        if cell.depth != 1:
            return
        session, self._session = self._session, None
        if session is not None:
            session.end_step(error)  # already ended (and its step with it) if the cell ended the session

    def _restart_auto(self) -> sdk.Session | None:
        """A new auto session when the last one ended and the settings still ask for one."""
        previous = self._last_auto
        if previous is None or not previous.ended:
            return None  # there never was one here
        config = sdk.config()
        if config is not self._config or not config.enabled:
            return None  # sdk.shutdown() ran (or the SDK is off): nothing is recorded
        if not config.auto_start_session:
            if not self._said_off:
                self._said_off = True
                say(
                    "sessiontrace: the kernel's auto session has ended and auto_start_session is off, so "
                    "cells outside a %%session or sdk.session() now belong to no session; "
                    "sdk.init(auto_start_session=True) starts a new one."
                )
            return None
        self._restarting = True
        try:
            sdk.init(**init_settings(config))
        except Exception as exc:  # the config file or environment changed into something invalid
            if not self._said_off:
                self._said_off = True
                say(f"sessiontrace: the auto session has ended and a new one could not start: {exc}")
            return None
        finally:
            self._restarting = False
        auto = auto_session()
        if auto is not None:
            say(
                f"sessiontrace: the auto session {previous.name!r} had ended; "
                f"this cell starts a new one ({auto.id})."
            )
        return auto


class CarriedSessions:
    """Keeps a session that ``sdk.start_session()`` made current in a cell current in the cells after it.

    At the start of each cell, the running session most recently started that way in the kernel's
    cell thread is made current for the cell, unless it already is (when the kernel kept the
    ContextVar). At the end of the cell that is undone where it was done: in the cell's own context.
    """

    def __init__(self) -> None:
        self._use: AbstractContextManager[sdk.Session] | None = None
        self._where: tuple[int, object | None] | None = None

    def before_cell(self, cell: Cell) -> None:
        if cell.depth != 1:
            return
        self._use = None
        started = sdk.Session.last_started()
        if started is None or sdk.current_session() is started:
            return
        use = started.use()
        use.__enter__()
        self._use = use
        self._where = (threading.get_ident(), _current_task())

    def adopt_cell(self, cell: Cell) -> None:
        pass

    def after_cell(self, cell: Cell, error: BaseException | None) -> None:
        if cell.depth != 1:
            return
        use, self._use = self._use, None
        # In another task (a cell with top-level await ran in its own), the cell's context is gone
        # with what was made current in it: there is nothing to undo, and undoing here would touch
        # the kernel's context instead.
        if use is not None and self._where == (threading.get_ident(), _current_task()):
            use.__exit__(None, None, None)


class NotebookHooks:
    """What sessiontrace adds to one IPython shell: one ``pre_run_cell`` and one ``post_run_cell`` callback.

    Participants are added by name (`CELLS` by ``sdk.init()``, the ``%%session`` cells by the
    extension) with an order: before a cell they run in that order (so a session carried over from
    an earlier cell is current before a ``%%session`` cell starts its own, which then nests in it),
    after it in the reverse order. The callbacks are registered while there is a participant;
    adding one twice changes nothing.
    """

    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell
        self.participants: dict[str, CellParticipant] = {}
        self._order: dict[str, int] = {}
        self._cells: list[Cell] = []

    @classmethod
    def of(cls, shell: InteractiveShell) -> NotebookHooks | None:
        """The hooks attached to `shell`, if any (found among its registered callbacks)."""
        for callback in shell.events.callbacks["pre_run_cell"]:
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, NotebookHooks):
                return owner
        return None

    @classmethod
    def attach(cls, shell: InteractiveShell) -> NotebookHooks:
        """The hooks of `shell`, attached now if they were not."""
        hooks = cls.of(shell)
        if hooks is None:
            hooks = cls(shell)
            shell.events.register("pre_run_cell", hooks.pre_run_cell)
            shell.events.register("post_run_cell", hooks.post_run_cell)
        return hooks

    def add(self, name: str, participant: CellParticipant, order: int = 0) -> CellParticipant:
        """Add `participant` under `name` unless one is there already; return the one in place."""
        existing = self.participants.get(name)
        if existing is not None:
            return existing
        self._order[name] = order
        ordered = sorted([*self.participants, name], key=self._order.__getitem__)
        self.participants = {key: self.participants.get(key, participant) for key in ordered}
        return participant

    def remove(self, name: str) -> None:
        """Remove a participant; with none left, unregister the callbacks."""
        self.participants.pop(name, None)
        self._order.pop(name, None)
        if not self.participants:
            events = self.shell.events
            for event, callback in (
                ("pre_run_cell", self.pre_run_cell),
                ("post_run_cell", self.post_run_cell),
            ):
                if callback in events.callbacks[event]:
                    events.unregister(event, callback)

    def adopt_running_cell(self) -> None:
        """Attached (or init() run again) in the middle of a cell: let participants take that cell in."""
        with guarded("adopting the running cell"):
            if not self._cells:
                result = getattr(self.shell.displayhook, "exec_result", None)
                if not isinstance(result, ExecutionResult) or result.info is None:
                    return
                info = result.info
                count = result.execution_count
                self._cells.append(
                    Cell(count if isinstance(count, int) else 0, info.raw_cell or "", info.cell_id, 1)
                )
            outermost = self._cells[0]
            for participant in list(self.participants.values()):
                participant.adopt_cell(outermost)

    def pre_run_cell(self, info: ExecutionInfo) -> None:
        """IPython ``pre_run_cell``: runs in the context the cell's code will run in."""
        with guarded("pre_run_cell"):
            count = self.shell.execution_count
            if info.store_history and COUNTS_BEFORE_PRE_RUN_CELL:
                count -= 1  # IPython has counted this cell already
            cell = Cell(count, info.raw_cell or "", info.cell_id, len(self._cells) + 1)
            self._cells.append(cell)
            for participant in list(self.participants.values()):
                participant.before_cell(cell)

    def post_run_cell(self, result: ExecutionResult | None) -> None:
        """IPython ``post_run_cell``: after the cell, not necessarily in its context."""
        with guarded("post_run_cell"):
            if not self._cells:
                return  # attached during this cell, after its start, by something that did not adopt it
            cell = self._cells.pop()
            error: BaseException | None = None
            if result is not None:
                error = result.error_before_exec or result.error_in_exec
            for participant in reversed(list(self.participants.values())):
                participant.after_cell(cell, error)


def attach_to_kernel() -> None:
    """The ``sessiontrace.hooks`` entry point: cell spans and carried sessions in a running IPython.

    Called by the SDK after every ``sdk.init()`` while IPython is imported. Does nothing outside an
    IPython shell; attaches once per shell however often it is called; when called from inside a
    cell (the usual ``sdk.init()`` cell), that cell gets its span too.
    """
    with guarded("attach_to_kernel"):
        shell = get_ipython()
        if not isinstance(shell, InteractiveShell):
            return
        span_recorder()  # the kernel's recent spans, for the notebook's timelines
        _calm_warnings()
        hooks = NotebookHooks.attach(shell)
        hooks.add(CELLS, _CellsParticipant(), order=0)
        hooks.adopt_running_cell()


def _calm_warnings() -> None:
    """The SDK's own warnings as normal cell output, not on stderr (which notebooks paint red).

    Only when nothing else would show them: the application configured no logging handler, so they
    would go to Python's last-resort handler on stderr. Added once per kernel.
    """
    logger = logging.getLogger("sessiontrace")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


class _CellsParticipant:
    """`CellSpans` then `CarriedSessions`: the carried session is made current inside the cell's step."""

    def __init__(self) -> None:
        self.spans = CellSpans()
        self.carried = CarriedSessions()

    def before_cell(self, cell: Cell) -> None:
        self.spans.before_cell(cell)
        self.carried.before_cell(cell)

    def adopt_cell(self, cell: Cell) -> None:
        self.spans.adopt_cell(cell)

    def after_cell(self, cell: Cell, error: BaseException | None) -> None:
        self.carried.after_cell(cell, error)
        self.spans.after_cell(cell, error)
