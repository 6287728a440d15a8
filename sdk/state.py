"""The one mutable object of the process: everything the SDK holds between calls, in one place.

Modules keep constants at module level and nothing mutable: the current pipeline, the open
sessions, the patches applied, what was warned about, caches and the SDK's fork handling all
live in `STATE`, a `ProcessState` made once. Tests start from a clean one with
`sdk.testing.reset()`, which calls `ProcessState.reset()` after `sdk.shutdown()`.

Forks: one ``os.register_at_fork`` handler fans out. In the child it re-creates every lock the
state holds (a lock another thread held at fork time stays held forever in the child), then calls
the hooks objects registered with `ProcessState.at_fork` (the export workers, exporters and the
store writer restart or drop what was the parent's). Hooks of objects that no longer exist are
skipped: they are held weakly.

This module is a base helper: it imports nothing of the SDK at runtime but the counters (the types
of the other objects it holds are imported for type checking only).
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from sdk.counters import Counters
from sdk.semconv import SessionState

if TYPE_CHECKING:
    import logging

    from sdk.export.meters import MetricsHandle
    from sdk.export.sampling import SessionSampling
    from sdk.instrumentation.base import AfterImport
    from sdk.logs import LogExport
    from sdk.reaper import Reaper
    from sdk.runtime import Runtime
    from sdk.session_core import Session


_Hook = Callable[[], Any]
T = TypeVar("T")


class Clock:
    """Where the SDK reads time to decide that a time window has passed.

    Monotonic time: idle sessions and their age, the ended-session grace period, remote traces'
    lifetime, warning intervals, the pause after a store failure. Wall time (`time`): a stored
    record's last activity and what it is compared with (session expiry, stale sessions). Tests
    replace it (`sdk.testing.freeze_clock`) to cross a window without sleeping through it.
    Span and session timestamps stay wall-clock time from the OpenTelemetry SDK and `time`, and the
    background threads' own waits (export and store intervals, flush deadlines) stay real time.
    """

    # The C functions themselves (read on every span): `monotonic()` and `monotonic_ns()` on a
    # monotonic clock, `time()` seconds since the epoch (wall-clock time).
    monotonic = staticmethod(time.monotonic)
    monotonic_ns = staticmethod(time.monotonic_ns)
    time = staticmethod(time.time)


DEFAULT_ENDED_SESSION_GRACE = 30.0
"""The `ended_session_grace` setting's default (before `init()` has run)."""


class Registry:
    """The process's open sessions: by id and by trace, the auto session, and recently ended ones.

    Its dicts are never replaced, only changed (the span processor keeps references to them), and
    are read without the lock on the span path (each read of a dict is atomic).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[str, Session] = {}
        self.by_trace: dict[int, Session] = {}
        self.auto: Session | None = None
        self.auto_was_ended = False
        self.recently_ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.auto_listeners: list[Callable[[bool], None]] = []
        self.started: dict[int, list[Session]] = {}
        """By thread id: the open sessions `start_session()` made current there."""
        self.ended_traces: collections.OrderedDict[int, tuple[str, float]] = collections.OrderedDict()
        """Ended sessions' ids by trace, with the end of their grace period (ids: an ended session is freed)."""
        self.remote_traces: collections.OrderedDict[int, tuple[str, float]] = collections.OrderedDict()
        """Traces continuing a trusted session of another process, with when the entry lapses."""
        self.grace = DEFAULT_ENDED_SESSION_GRACE

    def add(self, session: Session, *, continued: bool = False, limit: int | None = None) -> list[Session]:
        """Register an open session; return the sessions to end to get back within `limit`.

        A continued session (one received from another process or service) may share its id with
        an open session of this process: the first keeps the id and the trace.
        """
        evict: list[Session] = []
        with self.lock:
            if session.id in self.by_id and not continued:
                raise ValueError(
                    f"a session with id {session.id!r} is already open in this process; "
                    "end it first or choose another id"
                )
            self.by_id.setdefault(session.id, session)
            if session.trace_id_int:
                self.by_trace.setdefault(session.trace_id_int, session)
            if session.auto:
                self.auto = session
                self.auto_was_ended = False
            elif limit is not None:
                excess = len(self.by_id) - (self.auto is not None) - limit
                if excess > 0:
                    candidates = [s for s in self.by_id.values() if not s.auto and s is not session]
                    candidates.sort(key=lambda s: s.last_active_ns)
                    evict = candidates[:excess]
        return evict

    def running(self, session_id: str) -> Session | None:
        """The open session with this id, if it has not started ending."""
        found = self.by_id.get(session_id)
        return found if found is not None and found.state is SessionState.RUNNING else None

    def remove(self, session: Session) -> bool:
        """Forget an ended session; True when it was the auto session."""
        with self.lock:
            if self.by_id.get(session.id) is session:
                del self.by_id[session.id]
            if self.by_trace.get(session.trace_id_int) is session:
                del self.by_trace[session.trace_id_int]
                if self.grace > 0 and session.trace_id_int:
                    self._keep_ended_trace(session)
            auto_ended = self.auto is session
            if auto_ended:
                self.auto = None
                self.auto_was_ended = True
            self.recently_ended[session.id] = None
            if len(self.recently_ended) > 1024:
                self.recently_ended.popitem(last=False)
            if session.started_thread is not None:
                started = self.started.get(session.started_thread)
                if started is not None and session in started:
                    started.remove(session)
                    if not started:
                        del self.started[session.started_thread]
        return auto_ended

    def _keep_ended_trace(self, session: Session) -> None:
        """Remember an ended session's trace for `grace` seconds (lock held; bounded in size too)."""
        now = STATE.clock.monotonic()
        ended = self.ended_traces
        ended[session.trace_id_int] = (session.id, now + self.grace)
        # Entries are in order of ending (a resumed trace's may lag; lookups check the time anyway):
        # drop from the front what expired, and what exceeds the bound. Each entry is dropped once.
        while ended:
            first = next(iter(ended))
            if ended[first][1] > now and len(ended) <= MAX_ENDED_TRACES:
                break
            del ended[first]

    def note_remote_trace(self, trace_id: int, session_id: str) -> None:
        """Remember that `trace_id` continues the remote session `session_id` (see `remote_traces`)."""
        now = STATE.clock.monotonic()
        remote = self.remote_traces
        with self.lock:
            remote[trace_id] = (session_id, now + REMOTE_TRACE_TTL)
            remote.move_to_end(trace_id)
            while remote:
                first = next(iter(remote))
                if remote[first][1] > now and len(remote) <= MAX_ENDED_TRACES:
                    break
                del remote[first]

    def remote_session_id_for_trace(self, trace_id: int) -> str | None:
        """The remote session a recent span of this trace continued, if any."""
        entry = self.remote_traces.get(trace_id)
        if entry is None or entry[1] < STATE.clock.monotonic():
            return None
        return entry[0]

    def ended_session_id_for_trace(self, trace_id: int) -> str | None:
        """The id of the session that owned this trace and ended within the grace period."""
        entry = self.ended_traces.get(trace_id)
        if entry is None or entry[1] < STATE.clock.monotonic():
            return None
        return entry[0]

    def open_sessions(self) -> list[Session]:
        """Every open session."""
        with self.lock:
            return list(self.by_id.values())

    def clear(self) -> None:
        """Forget every session (tests; the dicts stay the same objects)."""
        with self.lock:
            self.by_id.clear()
            self.by_trace.clear()
            self.ended_traces.clear()
            self.remote_traces.clear()
            self.started.clear()
            self.recently_ended.clear()
            self.auto = None
            self.auto_was_ended = False
            self.grace = DEFAULT_ENDED_SESSION_GRACE


MAX_ENDED_TRACES = 20_000
"""Ended (and remote) sessions' traces remembered at most: ids only, about 3 MB."""
REMOTE_TRACE_TTL = 300.0
"""Seconds a trace continuing a remote session is remembered after its last span started."""


class ProcessState:
    """Everything the SDK holds for the process (see the module docstring); one instance, `STATE`."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.current_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            "sessiontrace_session", default=None
        )
        """The session made current in this context (a ``with sdk.session()`` block, `start_session()`)."""
        self.registry = Registry()
        self.counters = Counters()
        """The SDK's counters (`sdk.stats()`); reset in place, never replaced."""
        # The post-import hook and what it waits for: in sys.meta_path for the life of the process.
        self.after_import: AfterImport | None = None
        self.hooked_modules: set[tuple[str, str]] = set()
        """(instrumentor, module) pairs whose post-import hook is registered."""
        self.version_checked: dict[str, bool] = {}
        """Instrumentor name -> whether the installed version is in its range (checked once)."""
        self.spool_owner: Any = None
        """This process's identity in spool folders (export/spool.py), with the lock files it holds."""
        self.reaper: Reaper | None = None
        """The idle-session reaper (its thread runs while session_idle_timeout is set)."""
        # Log-record stamping: the record factory stays installed once made (it checks "on").
        self.log_correlation: dict[str, Any] = {"on": False, "previous": None, "factory": None}
        self.log_exit_hook = False
        self.file_numbers = itertools.count(1)
        """Numbers in trace file names, for the life of the process: no two files get the same name."""
        # The metrics pipeline: its MeterProvider is set globally once for the life of the process.
        self.metrics: MetricsHandle | None = None
        self.metrics_lock = threading.Lock()
        # The exit hook: installed once for the life of the process (reset() keeps it).
        self.exit_hook_installed = False
        self.uncaught: str | None = None
        """Why the program is exiting, when it is not a normal end (an uncaught exception, a status)."""
        self.previous_excepthook: Any = None
        self._hooks: list[tuple[weakref.ref[Any], _Hook | None, _Hook | None, _Hook | None]] = []
        self._hooks_lock = threading.Lock()
        self.integrations: dict[str, Any] = {}
        """Objects a third-party library holds for the life of the process (the Agents SDK's trace
        processor, LangChain's callback handler), by name: made once by `integration`, never reset."""
        self.integrations_lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        """The fields `reset()` starts again (everything but the clock, the ContextVar and fork hooks)."""
        # lifecycle: init() and shutdown() one at a time.
        self.lifecycle_lock = threading.RLock()
        # runtime: the pipeline in use and those a re-init replaced, still closing.
        self.runtime: Runtime | None = None
        self.runtime_lock = threading.Lock()
        self.closing: list[tuple[threading.Thread, Runtime]] = []
        # export: whole-session sampling (None until a sample rate below 1 is set).
        self.sampling: SessionSampling | None = None
        # tracing: the provider the SDK installed or joined, and a private one when it cannot.
        self.provider: Any = None
        self.private_provider: Any = None
        self.pipeline_changed: Callable[[], None] | None = None
        """Called when the application adds a span processor to the SDK's provider (lifecycle plans
        the export again: sdk/foreign.py)."""
        # instrumentation: patches in place (shutdown() removes them all).
        self.patches: dict[str, tuple[object, str, object]] = {}
        self.patches_lock = threading.RLock()
        self.instrumented: dict[str, bool] = {}
        """Instrumentor name -> whether its patches are wanted."""
        self.propagation_lock = threading.Lock()
        # guard: what was warned about once, and losses tallied for `warn_every`.
        self.warned: set[tuple[str, str]] = set()
        self.warned_lock = threading.Lock()
        self.tallies: dict[str, Any] = {}
        self.otel_fallbacks: set[str] = set()
        """OpenTelemetry internals found missing (keys of `sdk.otel_internals.INTERNALS`), said once each."""
        # logs: the OTLP log export.
        self.log_export: LogExport | None = None
        self.log_export_lock = threading.Lock()
        # export: the console summary's writes, file names, the spool's owner, warnings, metrics.
        self.summary_lock = threading.Lock()
        self.queue_full_seen = 0
        self.queue_full_lock = threading.Lock()
        self.exporter_log_filter: logging.Filter | None = None
        # store: folders made private in this process (checked once each).
        self.private_folders: set[Any] = set()
        self.private_folders_lock = threading.Lock()
        # caches: pure functions of their keys, bounded by their owners.
        self.caches: dict[str, dict[Any, Any]] = collections.defaultdict(dict)
        self.caches_lock = threading.Lock()
        self.genai_instruments: dict[int, Any] = {}
        self.genai_instruments_lock = threading.Lock()

    def cached(self, kind: str, key: Hashable, make: Callable[[], T], limit: int = 32) -> T:
        """`make()`, built once per `key` among the `kind` cache's entries (cleared past `limit`)."""
        cache = self.caches[kind]
        found: T | None = cache.get(key)
        if found is None:
            found = make()
            with self.caches_lock:
                if len(cache) >= limit:
                    cache.clear()
                cache[key] = found
        return found

    def integration(self, name: str, make: Callable[[], T]) -> T:
        """The process's one `make()` under `name`, made on first use; its ``after_fork_in_child``
        method, if any, runs in a forked child."""
        found: T | None = self.integrations.get(name)
        if found is not None:
            return found
        with self.integrations_lock:
            found = self.integrations.get(name)
            if found is None:
                found = self.integrations[name] = make()
                after = getattr(found, "after_fork_in_child", None)
                if after is not None:
                    self.at_fork(found, after_in_child=after)
        return found

    def reset(self) -> None:
        """Start again from a clean state (`sdk.testing.reset()` calls this after `sdk.shutdown()`).

        The OpenTelemetry provider the SDK installed stays installed (OpenTelemetry allows one per
        process), and so does the current-session ContextVar; the registry is emptied in place.
        """
        self.registry.clear()
        self.counters.reset()
        provider, private = self.provider, self.private_provider
        self._fresh()
        self.provider, self.private_provider = provider, private
        self.clock = Clock()

    # -- fork ----------------------------------------------------------------------------------

    def at_fork(
        self,
        owner: object,
        *,
        before: Callable[[], Any] | None = None,
        after_in_parent: Callable[[], Any] | None = None,
        after_in_child: Callable[[], Any] | None = None,
    ) -> None:
        """Call these around a fork while `owner` exists (bound methods of `owner` are held weakly)."""
        ref = weakref.ref(owner)

        def weakly(fn: Callable[[], Any] | None) -> Callable[[], Any] | None:
            if fn is None or getattr(fn, "__self__", None) is not owner:
                return fn
            method = weakref.WeakMethod(fn)

            def call() -> Any:
                bound = method()
                return None if bound is None else bound()

            return call

        with self._hooks_lock:
            self._hooks[:] = [hook for hook in self._hooks if hook[0]() is not None]
            self._hooks.append((ref, weakly(before), weakly(after_in_parent), weakly(after_in_child)))

    def _before_fork(self) -> None:
        for _, before, _, _ in list(self._hooks):
            if before is not None:
                before()

    def _after_fork_in_parent(self) -> None:
        for _, _, after, _ in list(self._hooks):
            if after is not None:
                after()

    def _after_fork_in_child(self) -> None:
        # Every lock of the state, new: a lock another thread held at fork time stays held forever.
        self._hooks_lock = threading.Lock()
        self.registry.lock = threading.Lock()
        self.lifecycle_lock = threading.RLock()
        self.runtime_lock = threading.Lock()
        self.closing.clear()  # the parent's closer threads do not exist here
        self.patches_lock = threading.RLock()
        self.propagation_lock = threading.Lock()
        self.warned_lock = threading.Lock()
        self.log_export_lock = threading.Lock()
        self.summary_lock = threading.Lock()
        self.queue_full_lock = threading.Lock()
        self.metrics_lock = threading.Lock()
        self.private_folders_lock = threading.Lock()
        self.caches_lock = threading.Lock()
        self.genai_instruments_lock = threading.Lock()
        self.integrations_lock = threading.Lock()
        self.counters.after_fork()
        for session in list(self.registry.by_id.values()):
            session.after_fork()
        for _, _, _, after in list(self._hooks):
            if after is not None:
                after()


STATE = ProcessState()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=STATE._before_fork,
        after_in_parent=STATE._after_fork_in_parent,
        after_in_child=STATE._after_fork_in_child,
    )
