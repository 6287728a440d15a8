"""The on-disk spool: batches an OTLP backend could not take, kept until it takes them.

Layout: ``<data_dir>/spool/<destination key>/``, one folder per destination (protocol + URL), with
one file per batch holding the exact bytes of its OTLP request (an ``ExportTraceServiceRequest``):

- ``<time ns>-<token>-<n>.<spans>.otlp``: a batch waiting to be sent. Written under a temporary
  name first and renamed into place, so a reader never sees half a file.
- ``<name>.claimed.<pid>.<token>``: a batch a process is sending now. A sender *claims* a file by
  renaming it (atomic: of two processes, exactly one succeeds), deletes it once the backend
  accepted it, and renames it back when the attempt failed in a way worth retrying.
- ``owners/<pid>.<token>.lock``: held (``flock``) by each process while it may hold claims. A claim
  whose owner's lock can be taken belongs to a process that died mid-send; it is put back.

So no file is ever sent by two processes at once, and a file is deleted as soon as one send
succeeded: the spool sends nothing twice. (A request whose answer never came, a timeout or a
process killed while waiting, is sent again: the backend may have stored it; see docs/export.md.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from sdk.datadir import ensure_data_dir

fcntl: Any
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to a pid check
    fcntl = None

_SUFFIX = ".otlp"
_CLAIMED = ".claimed."
_SCAN_EVERY = 1.0  # seconds between folder scans for the size estimate


class _Owner:
    """This process's identity in spool folders: a random token and a held lock file per folder."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.token = secrets.token_hex(6)
        self.locks: dict[Path, int] = {}  # folder -> fd of the held lock file
        self.lock = threading.Lock()

    def ensure_lock(self, folder: Path) -> None:
        if fcntl is None or folder in self.locks:
            return
        owners = folder / "owners"
        owners.mkdir(parents=True, exist_ok=True)
        fd = os.open(owners / f"{self.pid}.{self.token}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self.locks[folder] = fd


_owner = _Owner()


def _after_fork_in_child() -> None:
    global _owner
    for fd in _owner.locks.values():  # the parent's locks stay the parent's
        with contextlib.suppress(OSError):
            os.close(fd)
    _owner = _Owner()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _owner_alive(folder: Path, pid: int, token: str) -> bool:
    if pid == _owner.pid:
        return token == _owner.token  # same pid, other token: an earlier process (e.g. in a container)
    if fcntl is None:  # pragma: no cover - Windows
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    path = folder / "owners" / f"{pid}.{token}.lock"
    try:
        fd = os.open(path, os.O_WRONLY)  # never created here
    except OSError:
        return False  # no lock file: its owner is gone (or never locked)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # still held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


class SpoolFile:
    """A claimed batch: its bytes, its span count, and where it is while claimed."""

    __slots__ = ("count", "name", "path")

    def __init__(self, path: Path, name: str, count: int) -> None:
        self.path = path
        self.name = name
        self.count = count

    def read(self) -> bytes:
        """The OTLP request bytes."""
        return self.path.read_bytes()


def _count_of(name: str) -> int:
    try:
        return int(name[: -len(_SUFFIX)].rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 0


class Spool:
    """One destination's spool folder, capped at `max_bytes` (see the module docstring)."""

    def __init__(self, data_dir: Path, key: str, max_bytes: int) -> None:
        self.data_dir = data_dir
        self.folder = data_dir / "spool" / key
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = 0
        self._scanned = 0.0
        self._seq = 0
        self._recovered = False

    # -- writing ---------------------------------------------------------------------------

    def put(self, data: bytes, count: int) -> str | None:
        """Store one batch and return its file name; None (nothing written) when it would take the
        spool past its cap."""
        with self._lock:
            now = time.monotonic()
            if now - self._scanned > _SCAN_EVERY:
                self._bytes = self._size()
                self._scanned = now
            if self._bytes + len(data) > self.max_bytes:
                return None
            self._seq += 1
            seq = self._seq
            self._bytes += len(data)
        ensure_data_dir(self.data_dir, "spool", self.folder.name)
        name = f"{time.time_ns():020d}-{_owner.token}-{os.getpid()}-{seq:06d}.{count}{_SUFFIX}"
        temporary = self.folder / f".{name}.tmp"
        try:
            with temporary.open("wb") as f:
                f.write(data)
            os.replace(temporary, self.folder / name)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            with self._lock:
                self._bytes -= len(data)
            raise
        return name

    def discard(self, name: str) -> bool:
        """Delete a waiting batch (it was delivered after all); False if it is no longer waiting."""
        path = self.folder / name
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return False
        with self._lock:
            self._bytes = max(0, self._bytes - size)
        return True

    def _size(self) -> int:
        total = 0
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return 0
        for entry in entries:
            if entry.name.endswith(_SUFFIX) or _CLAIMED in entry.name:
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return total

    # -- reading ---------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Names of the batches waiting, oldest first (after putting back claims of dead processes)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        if not self._recovered or any(_CLAIMED in n for n in names):
            self._recover(names)
            self._recovered = True
            with contextlib.suppress(OSError):
                names = os.listdir(self.folder)
        return sorted(n for n in names if n.endswith(_SUFFIX) and not n.startswith("."))

    def pending_spans(self) -> int:
        """Spans in the batches waiting now."""
        return sum(_count_of(n) for n in self.pending())

    def _recover(self, names: list[str]) -> None:
        for name in names:
            if _CLAIMED not in name:
                continue
            original, _, owner = name.partition(_CLAIMED)
            pid_text, _, token = owner.partition(".")
            try:
                pid = int(pid_text)
            except ValueError:
                continue
            if not _owner_alive(self.folder, pid, token):
                with contextlib.suppress(OSError):
                    os.rename(self.folder / name, self.folder / original)

    def claim(self, name: str) -> SpoolFile | None:
        """Take a waiting batch for sending; None when another process took it first."""
        with _owner.lock:
            try:
                _owner.ensure_lock(self.folder)
            except OSError:
                return None  # cannot prove ownership: leave the file to others
        claimed = self.folder / f"{name}{_CLAIMED}{_owner.pid}.{_owner.token}"
        try:
            os.rename(self.folder / name, claimed)
        except OSError:
            return None
        return SpoolFile(claimed, name, _count_of(name))

    def release(self, item: SpoolFile) -> None:
        """Put a claimed batch back, to be tried again."""
        with contextlib.suppress(OSError):
            os.rename(item.path, self.folder / item.name)

    def done(self, item: SpoolFile) -> None:
        """Forget a claimed batch (sent, or refused for good)."""
        size = 0
        with contextlib.suppress(OSError):
            size = item.path.stat().st_size
            item.path.unlink()
        with self._lock:
            self._bytes = max(0, self._bytes - size)
