"""What the agent framework tests share: a loopback-only network guard and per-session span checks.

Child processes get the guard through ``network_guard/sitecustomize.py`` (put that folder and this
one on their PYTHONPATH, and the log file's path in NETWORK_LOG): every connection or lookup
beyond loopback is written to the file, which the test reads.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

NETWORK_LOG = "LOOPBACK_GUARD_LOG"
"""The environment variable naming the file a child process logs non-loopback network access to."""
_lock = threading.Lock()
_seen: list[tuple[str, str]] = []
_installed = False


def _loopback(host: object) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _loopback(address[0]):
            with _lock:
                _seen.append((event, str(address[0])))
    elif event == "socket.getaddrinfo" and not _loopback(args[0]):
        with _lock:
            _seen.append((event, str(args[0])))


def _install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def log_network_at_exit() -> None:
    """In a child process: record network access beyond loopback, and write it to $NETWORK_LOG at exit."""
    path = os.environ.get(NETWORK_LOG)
    if not path:
        return
    _install()

    def write() -> None:
        with _lock:
            lines = [f"{event} {host}" for event, host in _seen]
        with Path(path).open("a") as log:
            log.write("".join(f"{line}\n" for line in lines))

    atexit.register(write)


@contextmanager
def loopback_only() -> Iterator[None]:
    """Fail if anything in the block connects to, or looks up, a host that is not loopback.

    A `sys.addaudithook` (installed once per process; hooks cannot be removed) records every
    ``socket.connect`` and ``socket.getaddrinfo``: the frameworks' exporters to their platforms
    (the OpenAI Agents SDK's trace export) would show up here.
    """
    _install()
    with _lock:
        _seen.clear()
    yield
    with _lock:
        seen = list(_seen)
    assert not seen, f"network access beyond loopback: {Counter(seen).most_common(5)}"


def is_session_span(span: ReadableSpan) -> bool:
    """A session's span (or its live marker)."""
    return (span.attributes or {}).get("sessiontrace.span.kind") == "session"


def work_spans(spans: Iterable[ReadableSpan]) -> list[ReadableSpan]:
    """Every span that is not a session span."""
    return [s for s in spans if not is_session_span(s)]


def check_sessions(spans: Sequence[ReadableSpan], traces: Mapping[str, int]) -> Counter[str]:
    """Each span: in one of these sessions (id -> trace id) and in its trace, its parent in the same
    session, and exported once. Returns the number of spans per session."""
    ids = Counter(s.context.span_id for s in spans)
    assert max(ids.values()) == 1, "a span was exported twice"
    by_id = {s.context.span_id: s for s in spans}
    per_session: Counter[str] = Counter()
    for span in work_spans(spans):
        session_id = (span.attributes or {}).get("session.id")
        assert session_id in traces, (span.name, session_id)
        assert span.context.trace_id == traces[str(session_id)], (span.name, session_id)
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        if parent is not None:
            assert (parent.attributes or {}).get("session.id") == session_id, (span.name, parent.name)
        per_session[str(session_id)] += 1
    return per_session


def open_traces() -> dict[str, int]:
    """The sessions open in this process: id -> trace id."""
    import sdk

    return {info.id: int(info.trace_id, 16) for info in sdk.sessions()}


def llm_spans(spans: Iterable[ReadableSpan]) -> list[ReadableSpan]:
    """The model-call spans."""
    return [s for s in spans if (s.attributes or {}).get("sessiontrace.span.kind") == "llm"]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[str]:
    """The names of a span's children, in start order."""
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return [s.name for s in sorted(found, key=lambda s: s.start_time or 0)]
