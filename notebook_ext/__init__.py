"""The IPython extension of sessiontrace: ``%load_ext notebook_ext``.

- ``%%session [NAME] [--id ID] [--user U] [--tag T ...]`` runs one cell as one session and shows
  its summary; ``%session`` shows, ends (``%session end [STATE]``) or replaces
  (``%session new NAME``) sessions.
- ``%unload_ext notebook_ext`` removes every magic, transformer and hook the extension added;
  loading it twice, or ``%reload_ext``, registers nothing twice.

Kernel awareness (one ``cell[N]`` span per executed cell in the auto session, sessions carried from
cell to cell, the auto session ended and flushed at kernel shutdown) needs no extension: it comes
with ``sdk.init()`` in a kernel (see `notebook_ext.kernel`). This package uses only the public face
of ``sdk``; ``import sdk`` never imports IPython. See docs/notebooks.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Called by ``%load_ext notebook_ext``: register the magics, the transformers and the cell hooks."""
    from notebook_ext.magics import load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Called by ``%unload_ext notebook_ext``: remove everything `load_ipython_extension` added."""
    from notebook_ext.magics import unload

    unload(ipython)
