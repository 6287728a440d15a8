"""The background thread that ends sessions idle longer than `session_idle_timeout`."""

from __future__ import annotations

import threading

from sdk.guard import internal_error
from sdk.session_api import end_idle_sessions
from sdk.state import STATE


class Reaper:
    """Checks open sessions a few times per timeout; idle ones end as indeterminate (idle_timeout).

    `configure` and the thread's decision to stop are made under one lock, so a reconfiguration that
    races with the thread stopping (shutdown() then init()) always leaves exactly one thread running
    when a timeout is set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timeout: float | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        STATE.at_fork(self, after_in_child=self._after_fork)

    def configure(self, timeout: float | None) -> None:
        """Run with this idle timeout (None: stop)."""
        with self._lock:
            self._timeout = timeout
            self._wake.set()
            if timeout is not None and self._thread is None:
                self._wake = threading.Event()
                self._thread = threading.Thread(target=self._run, name="sessiontrace-reaper", daemon=True)
                self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the reaper thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._lock:
                timeout = self._timeout
                if timeout is None:
                    self._thread = None
                    return
                wake = self._wake
            wake.wait(min(max(timeout / 4, 0.01), 1.0))
            wake.clear()
            self.check_now(timeout)

    def check_now(self, timeout: float | None = None) -> int:
        """End the sessions idle longer than `timeout` (default: the configured one) now; how many."""
        limit = self._timeout if timeout is None else timeout
        if limit is None:
            return 0
        try:
            return end_idle_sessions(limit)
        except Exception as exc:
            internal_error("idle session reaper", exc)
            return 0

    def _after_fork(self) -> None:
        # The parent's thread does not exist here, and the lock may have been held at fork time.
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        if self._timeout is not None:
            self.configure(self._timeout)


def reaper() -> Reaper:
    """The process's reaper (made on first use, kept in the process state)."""
    found = STATE.reaper
    if found is None:
        with STATE.lifecycle_lock:
            found = STATE.reaper
            if found is None:
                found = STATE.reaper = Reaper()
    return found
