"""The notebook extension's process state: what it holds between calls that no object owns.

notebook_ext reaches the SDK through its face only (``import sdk``), so it cannot keep state in the
SDK's process state (`sdk.state.STATE`); this is its own, one object made once. What belongs to an
object the extension attaches to stays on that object: the cell hooks on the IPython shell
(`kernel.NotebookHooks`), the span recorder and error counter on the tracer provider (`summary`).
"""

from __future__ import annotations

from collections.abc import Hashable


class NotebookState:
    """Everything notebook_ext holds for the process outside the objects it attaches (one instance, `STATE`)."""

    def __init__(self) -> None:
        self.logged: set[Hashable] = set()
        """What `kernel.guarded` has logged an internal error about (one line per place and error type)."""

    def first_time(self, key: Hashable) -> bool:
        """True the first time `key` is seen for logging, False after.

        Lock-free: two threads seeing the same key at once may both get True (a line logged twice),
        never neither, and there is no lock to re-create in a forked child.
        """
        if key in self.logged:
            return False
        self.logged.add(key)
        return True


STATE = NotebookState()
