"""The on-disk spool: batches kept as files until a destination has taken them.

Layout: ``<data_dir>/spool/<key>/``, one folder per destination (an OTLP destination's key is a
hash of its protocol and URL; the local traces file's overflow is ``traces``), with one file per
batch holding the exact bytes of its OTLP request (an ``ExportTraceServiceRequest``):

- ``<time ns>-<token>-<pid>-<n>.otlp``: a batch waiting. Written under a temporary name
  (``.<name>.tmp``, locked while it is written) and renamed into place, so a reader never sees
  half a file; names sort by age.
- ``<name>.claimed.<pid>.<token>``: a batch a process is sending now. A sender *claims* a file by
  renaming it (atomic: of two processes, exactly one succeeds), deletes it once the destination
  took it, and renames it back when the attempt failed in a way worth retrying.
- ``owners/<pid>.<token>.lock``: held (``flock``) by a process while it holds claims, deleted when
  it holds none. A claim whose owner's lock can be taken belongs to a process that died
  mid-send; it is put back.

So no file is ever sent by two processes at once, and a file is deleted as soon as one send
succeeded: the spool sends nothing twice. (A request whose answer never came, a timeout or a
process killed while waiting, is sent again: the backend may have stored it; see docs/export.md.)

Files in the folder are trusted for nothing: an entry is read by its content, never by what its
name says; symlinks and anything but a regular file are refused unread (``O_NOFOLLOW``, then
``fstat``), as are files over the spool's cap and bytes that are not an OTLP request. Refused
entries are removed and counted in ``sdk.stats().spool_rejected``. What a killed process leaves
(an unfinished temporary file, an empty file, a lock nobody holds) is removed at the next start
and counted in ``torn_writes_recovered``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from sdk.datadir import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, ensure_data_dir, forget_ready, open_private
from sdk.state import STATE

fcntl: Any
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to a pid check and file ages
    fcntl = None

SUFFIX = ".otlp"
_CLAIMED = ".claimed."
_TEMP = ".tmp"
_SCAN_EVERY = 1.0  # seconds between folder scans for the size estimate
_STALE_TEMP = 60.0  # without flock: a temporary file this old belongs to a dead writer


class _Owner:
    """This process's identity in spool folders: a random token, and a lock per folder while it
    holds claims there."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.token = os.urandom(6).hex()  # not `secrets`: it imports OpenSSL (~10 ms at init)
        self.locks: dict[Path, int] = {}  # folder -> fd of the held lock file
        self.claims: dict[Path, int] = {}  # folder -> claims held
        self.lock = threading.Lock()

    def hold(self, folder: Path) -> bool:
        """Count one more claim in `folder`, taking the folder's lock first; False if it cannot."""
        with self.lock:
            if fcntl is not None and folder not in self.locks:
                owners = ensure_data_dir(folder.parent.parent, folder.parent.name, folder.name, "owners")
                try:
                    fd = open_private(owners / f"{self.pid}.{self.token}.lock", os.O_WRONLY | os.O_CREAT)
                except OSError:
                    return False
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    return False
                self.locks[folder] = fd
            self.claims[folder] = self.claims.get(folder, 0) + 1
            return True

    def release(self, folder: Path) -> None:
        """One claim fewer in `folder`; with none left, delete and let go of the folder's lock."""
        with self.lock:
            left = self.claims.get(folder, 0) - 1
            if left > 0:
                self.claims[folder] = left
                return
            self.claims.pop(folder, None)
            fd = self.locks.pop(folder, None)
            if fd is not None:
                # Unlinked first: a process that opens it now finds it free once it is closed, and
                # this process holds no claim for it to put back.
                with contextlib.suppress(OSError):
                    os.unlink(folder / "owners" / f"{self.pid}.{self.token}.lock")
                with contextlib.suppress(OSError):
                    os.close(fd)


def _owner() -> _Owner:
    """This process's identity in spool folders (a new one in a forked child: the parent's locks
    stay the parent's)."""
    owner: _Owner | None = STATE.spool_owner
    if owner is None or owner.pid != os.getpid():
        if owner is not None:
            for fd in owner.locks.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        owner = STATE.spool_owner = _Owner()
    return owner


def _lock_is_free(fd: int) -> bool:
    """Whether nobody holds an flock on `fd`'s file (taking it and letting it go at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _owner_alive(folder: Path, pid: int, token: str) -> bool:
    if pid == _owner().pid:
        return token == _owner().token  # same pid, other token: an earlier process (e.g. in a container)
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
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)  # never created here
    except OSError:
        return False  # no lock file: its owner is gone (or never locked)
    try:
        if not _lock_is_free(fd):
            return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


class SpoolFile:
    """A claimed batch: its bytes, its span count (from its content), and where it is while claimed."""

    __slots__ = ("count", "data", "name", "path")

    def __init__(self, path: Path, name: str, data: bytes, count: int) -> None:
        self.path = path
        self.name = name
        self.data = data
        self.count = count


def count_spans(data: bytes) -> int | None:
    """The spans in an encoded ExportTraceServiceRequest; None when `data` is not one."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        request = ExportTraceServiceRequest.FromString(data)
    except (DecodeError, ValueError, RecursionError):
        return None
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


class Spool:
    """One destination's spool folder, capped at `max_bytes` (see the module docstring)."""

    def __init__(self, data_dir: Path, key: str, max_bytes: int) -> None:
        self.data_dir = data_dir
        self.key = key
        self.folder = data_dir / "spool" / key
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes = 0
        self._scanned = 0.0
        self._seq = 0
        self._recovered = False
        self._unremovable: set[str] = set()  # refused entries that could not be deleted (counted once)

    # -- writing ---------------------------------------------------------------------------

    def put(self, data: bytes) -> str | None:
        """Store one batch and return its file name; None (nothing written) when it would take the
        spool past its cap. Raises OSError when the folder cannot be written (disk full, ...);
        nothing is left behind then."""
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
        try:
            return self._write(data, seq)
        except FileNotFoundError:  # the folder was deleted while the process ran: make it again
            forget_ready(self.folder)
            try:
                return self._write(data, seq)
            except OSError:
                self._unaccount(len(data))
                raise
        except OSError:
            self._unaccount(len(data))
            raise

    def _write(self, data: bytes, seq: int) -> str:
        ensure_data_dir(self.data_dir, "spool", self.key)
        name = f"{time.time_ns():020d}-{_owner().token}-{os.getpid()}-{seq:06d}{SUFFIX}"
        temporary = self.folder / f".{name}{_TEMP}"
        fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a recovering process leaves it alone while it is written
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(temporary, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        finally:
            os.close(fd)
        return name

    def _unaccount(self, size: int) -> None:
        with self._lock:
            self._bytes = max(0, self._bytes - size)

    def discard(self, name: str) -> bool:
        """Delete a waiting batch (it was delivered after all); False if it is no longer waiting."""
        path = self.folder / name
        try:
            size = os.stat(path, follow_symlinks=False).st_size
            path.unlink()
        except OSError:
            return False
        self._unaccount(size)
        return True

    def _size(self) -> int:
        total = 0
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return 0
        for entry in entries:
            if entry.name.endswith(SUFFIX) or _CLAIMED in entry.name:
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    # -- reading ---------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Names of the batches waiting, oldest first (after putting back claims of dead processes,
        and, the first time, cleaning up what killed processes left)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        if not self._recovered or any(_CLAIMED in n for n in names):
            self._recover(names, first=not self._recovered)
            self._recovered = True
            with contextlib.suppress(OSError):
                names = os.listdir(self.folder)
        return sorted(
            n for n in names if n.endswith(SUFFIX) and not n.startswith(".") and n not in self._unremovable
        )

    def _recover(self, names: list[str], *, first: bool) -> None:
        for name in names:
            if _CLAIMED in name:
                original, _, owner = name.partition(_CLAIMED)
                pid_text, _, token = owner.partition(".")
                try:
                    pid = int(pid_text)
                except ValueError:
                    continue
                if not _owner_alive(self.folder, pid, token):
                    with contextlib.suppress(OSError):
                        os.rename(self.folder / name, self.folder / original)
            elif first and name.startswith(".") and name.endswith(_TEMP):
                self._remove_dead_temporary(self.folder / name)
        if first:
            self._remove_free_locks()

    def _remove_dead_temporary(self, path: Path) -> None:
        """Delete a temporary file no process is writing (its writer was killed mid-write)."""
        try:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        except OSError:
            return
        try:
            if fcntl is not None:
                dead = _lock_is_free(fd)
            else:  # pragma: no cover - Windows
                dead = time.time() - os.fstat(fd).st_mtime > _STALE_TEMP
        finally:
            os.close(fd)
        if dead:
            with contextlib.suppress(OSError):
                path.unlink()
                STATE.counters.torn_writes_recovered.add()

    def _remove_free_locks(self) -> None:
        """Delete lock files no process holds (left by processes that were killed)."""
        owners = self.folder / "owners"
        try:
            names = os.listdir(owners)
        except OSError:
            return
        for name in names:
            pid_text, _, rest = name.partition(".")
            token = rest[: -len(".lock")] if rest.endswith(".lock") else ""
            if pid_text.isdigit() and token:
                _owner_alive(self.folder, int(pid_text), token)  # deletes the lock file of a dead owner

    def claim(self, name: str, data: bytes | None = None, count: int = 0) -> SpoolFile | None:
        """Take a waiting batch for sending; None when another process took it first, or when the
        entry was refused (not a regular file, too big, not an OTLP request: removed and counted).

        `data` and `count`: the batch's bytes and spans when this process wrote it moments ago (not
        read again); otherwise they come from the file's content."""
        if not _owner().hold(self.folder):
            return None  # cannot prove ownership: leave the file to others
        claimed = self.folder / f"{name}{_CLAIMED}{_owner().pid}.{_owner().token}"
        try:
            os.rename(self.folder / name, claimed)
        except OSError:
            _owner().release(self.folder)
            return None
        if data is None:
            loaded = self._load(claimed)
            if loaded is None or loaded == (b"", 0):
                if loaded is None:
                    self._refuse(claimed, name)
                else:  # an empty file: what a crash of the whole machine mid-write can leave
                    with contextlib.suppress(OSError):
                        claimed.unlink()
                        STATE.counters.torn_writes_recovered.add()
                _owner().release(self.folder)
                return None
            data, count = loaded
        return SpoolFile(claimed, name, data, count)

    def _load(self, path: Path) -> tuple[bytes, int] | None:
        """The bytes and span count of a regular file holding an OTLP request, else None."""
        try:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        except OSError:
            return None  # a symlink (ELOOP), or gone
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                return None
            chunks = []
            left = info.st_size + 1  # one more: a file that grew since fstat is noticed
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > info.st_size:
            return None
        if not data:
            return b"", 0
        count = count_spans(data)
        return None if not count else (data, count)

    def _refuse(self, claimed: Path, name: str) -> None:
        try:
            claimed.unlink()
        except OSError:
            # A folder, or a file that cannot be removed: put it aside under a name no one sends.
            try:
                os.rename(claimed, self.folder / f".refused-{name}")
            except OSError:
                with contextlib.suppress(OSError):
                    os.rename(claimed, self.folder / name)
                if name in self._unremovable:
                    return
                self._unremovable.add(name)
        STATE.counters.spool_rejected.add()

    def release(self, item: SpoolFile) -> None:
        """Put a claimed batch back, to be tried again."""
        with contextlib.suppress(OSError):
            os.rename(item.path, self.folder / item.name)
        _owner().release(self.folder)

    def done(self, item: SpoolFile) -> None:
        """Forget a claimed batch (sent, or refused for good)."""
        size = 0
        with contextlib.suppress(OSError):
            size = os.stat(item.path, follow_symlinks=False).st_size
            item.path.unlink()
        _owner().release(self.folder)
        self._unaccount(size)

    def close(self) -> None:
        """Nothing is held between claims; kept for symmetry with the exporters that own a spool."""
