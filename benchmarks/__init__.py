"""sessiontrace's benchmarks: the SDK against raw OpenTelemetry, same process, interleaved.

Run every benchmark with ``python -m benchmarks`` (``--quick`` for a run well under a minute,
``--only NAME`` for one); see docs/performance.md for what each number means. Each benchmark is
a module here with a ``NAME`` and a ``run(settings) -> list[Result]``; add new ones to BENCHMARKS.
"""

from __future__ import annotations

BENCHMARKS = (
    "span_in_session",
    "decorated_call",
    "scrub",
    "sampling",
    "dialects",
    "session_start_end",
    "throughput",
    "llm_call",
    "frameworks",
    "backend_down",
    "sustained",
    "memory",
    "import_time",
    "init_time",
    "span_in_session_fallback",
)
"""Module names, in the order they run (the in-process ones first, then fresh interpreters)."""
