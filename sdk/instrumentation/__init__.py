"""The SDK's instrumentors: which libraries it can record, and turning them on and off.

`init()` instruments what the `instrument` setting lists — LLM clients and agent frameworks — (and
autogen-core when `instrument_autogen` is on); `sdk.instrument()` and `sdk.uninstrument()` do it
by hand. Each
library is patched once, right after it is imported (or at once if it already is): see
`sdk.instrumentation.base.Instrumentor`.
"""

from __future__ import annotations

import importlib
import sys

from sdk.instrumentation.base import Instrumentor

LIBRARIES = {
    "openai": "sdk.instrumentation.openai",
    "anthropic": "sdk.instrumentation.anthropic",
    "autogen": "sdk.instrumentation.autogen",
    "openai_agents": "sdk.instrumentation.agents",
    "langgraph": "sdk.instrumentation.langgraph",
}
"""Library name -> the module holding its `INSTRUMENTOR` (imported on first use: each imports nothing
of its library until that library is imported)."""

LLM_LIBRARIES = ("openai", "anthropic")
"""The LLM client libraries the `instrument` setting chooses among."""
FRAMEWORKS = ("openai_agents", "langgraph")
"""The agent frameworks the `instrument` setting chooses among (besides autogen-core, which has its own)."""


def instrumentor(name: str) -> Instrumentor:
    """The instrumentor of one library (ValueError naming the known ones for another name)."""
    module = LIBRARIES.get(name)
    if module is None:
        raise ValueError(f"unknown library {name!r}; instrumented libraries: {', '.join(LIBRARIES)}")
    found: Instrumentor = importlib.import_module(module).INSTRUMENTOR
    return found


def configure(libraries: tuple[str, ...], *, autogen: bool) -> None:
    """Instrument exactly these libraries (LLM clients, frameworks), and autogen-core when `autogen` (init() calls this).

    A library that is not imported yet is patched right after its import; one that is not
    installed costs nothing.
    """
    for name in LLM_LIBRARIES + FRAMEWORKS:
        if name in libraries:
            instrumentor(name).instrument()
        else:
            _uninstrument_if_loaded(name)
    if autogen:
        instrumentor("autogen").instrument()
    else:
        _uninstrument_if_loaded("autogen")


def _uninstrument_if_loaded(name: str) -> None:
    """Remove a library's patches; an instrumentor never imported has none (nothing to import for that)."""
    if LIBRARIES[name] in sys.modules:
        instrumentor(name).uninstrument()


def instrument(*libraries: str) -> None:
    """Instrument the named libraries (default: every LLM client library and agent framework).

    `init()` already does this for what the `instrument` setting lists; this is for after
    `uninstrument()`, or to add a library by hand. Lasts until the next `init()` or `shutdown()`.
    """
    for name in libraries or LLM_LIBRARIES + FRAMEWORKS:
        instrumentor(name).instrument()


def uninstrument(*libraries: str) -> None:
    """Remove the patches of the named libraries (default: all), restoring the original methods.

    Lasts until the next `sdk.init()`, which applies what the settings ask again.
    """
    for name in libraries or tuple(LIBRARIES):
        instrumentor(name).uninstrument()
