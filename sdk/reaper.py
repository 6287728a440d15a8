"""The background thread that ends sessions idle longer than `session_idle_timeout`."""

from __future__ import annotations

import os
import threading

from sdk.guard import internal_error
from sdk.session import end_idle_sessions


class Reaper:
    """Checks open sessions a few times per timeout; idle ones end as indeterminate (idle_timeout)."""

    def __init__(self) -> None:
        self._timeout: float | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def configure(self, timeout: float | None) -> None:
        """Run with this idle timeout (None: stop)."""
        self._timeout = timeout
        self._wake.set()
        if timeout is not None and (self._thread is None or not self._thread.is_alive()):
            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="sessiontrace-reaper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            timeout = self._timeout
            if timeout is None:
                return
            wake = self._wake
            wake.wait(min(max(timeout / 4, 0.01), 1.0))
            wake.clear()
            try:
                end_idle_sessions(timeout)
            except Exception as exc:
                internal_error("idle session reaper", exc)

    def _after_fork(self) -> None:
        self._thread = None
        self._wake = threading.Event()
        if self._timeout is not None:
            self.configure(self._timeout)


REAPER = Reaper()
