"""The one-line console summary printed when a session ends."""

from __future__ import annotations

import sys
from typing import NamedTuple

from sdk.display import printable
from sdk.state import STATE


class SessionSummary(NamedTuple):
    """What a session's end reports: enough for a console line or a notebook table."""

    id: str
    name: str
    state: str
    duration: float
    spans: int
    reason: str | None = None
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0


def format_summary(summary: SessionSummary) -> str:
    """``sessiontrace: session 'refund-flow' <id> success in 1.23s, 12 spans``."""
    reason = f" ({printable(summary.reason)})" if summary.reason else ""
    plural = "" if summary.spans == 1 else "s"
    llm = ""
    if summary.llm_calls:
        calls = "" if summary.llm_calls == 1 else "s"
        llm = (
            f", {summary.llm_calls} LLM call{calls}, "
            f"{summary.input_tokens}+{summary.output_tokens} tokens, ${summary.cost_usd:.4f}"
        )
    errors = f", {summary.errors} error{'' if summary.errors == 1 else 's'}" if summary.errors else ""
    return (
        f"sessiontrace: session {summary.name!r} {printable(summary.id)} {summary.state}{reason} "
        f"in {summary.duration:.2f}s, {summary.spans} span{plural}{llm}{errors}"
    )


def in_kernel() -> bool:
    """Whether this is a Jupyter kernel (ipykernel's output streams), where stderr shows red."""
    return "ipykernel" in sys.modules and type(sys.stdout).__name__ == "OutStream"


def print_summary(summary: SessionSummary) -> None:
    """Write the summary line to stderr (where it does not mix with the program's output); in a
    Jupyter kernel to the cell's normal output, which notebooks do not paint as an error.

    The line and its newline go in one write, under a lock, then the stream is flushed: lines of
    sessions ending in many threads at once never mix or leave blank lines.
    """
    stream = sys.stdout if in_kernel() else sys.stderr
    if stream is not None:
        line = format_summary(summary) + "\n"
        with STATE.summary_lock:
            stream.write(line)
            stream.flush()
