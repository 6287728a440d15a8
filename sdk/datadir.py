"""The one folder where the SDK keeps anything on disk (``./.sessiontrace/`` by default), kept private.

The data folder and every folder in it are created 0700 and every file 0600, the mode given to
``mkdir``/``open`` themselves (a umask can only take permissions away), so there is no moment at
which another user could read them. A folder or file the SDK uses that already exists with wider
permissions (made by an earlier version, or by hand) is narrowed when the SDK first uses it, if the
current user owns it; the SDK never widens a mode, and leaves the folders above the data folder
alone. Files are opened with ``O_NOFOLLOW``: a symlink planted where the SDK writes is refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sdk.state import STATE

DIR_MODE = 0o700
FILE_MODE = 0o600
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_GITIGNORE = b"# created by sessiontrace\n*\n"


def ensure_data_dir(root: Path, *sub: str) -> Path:
    """Create `root` (with a ``.gitignore`` holding ``*``, as pytest does for its cache) and a subfolder,
    each 0700; return the subfolder. Cheap after the first call for a folder."""
    folder = root.joinpath(*sub)
    key = folder.absolute()  # the same relative path names another folder after a chdir
    if key in STATE.private_folders:
        return folder
    _private_dir(root, parents=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(FileExistsError):
            fd = open_private(ignore, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                os.write(fd, _GITIGNORE)
            finally:
                os.close(fd)
    path = root
    for part in sub:
        path = path / part
        _private_dir(path, parents=False)
    with STATE.private_folders_lock:
        STATE.private_folders.add(key)
    return folder


def forget_ready(folder: Path) -> None:
    """Check `folder` again at its next use (it was found missing: deleted while the process ran)."""
    key = folder.absolute()
    with STATE.private_folders_lock:
        for path in [p for p in STATE.private_folders if p == key or key in p.parents]:
            STATE.private_folders.discard(path)


def _private_dir(path: Path, *, parents: bool) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileNotFoundError:
        if not parents:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)  # folders above the data folder: the user's
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    narrow(path, DIR_MODE)


def narrow(path: Path | int, mode: int) -> None:
    """Take away every permission beyond `mode` from a folder or file the current user owns.

    `path` may be an open file descriptor. Best effort: a file of another user is left as it is.
    """
    try:
        info = os.fstat(path) if isinstance(path, int) else os.stat(path, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) & ~mode == 0:
        return
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return
    with contextlib.suppress(OSError):
        if isinstance(path, int):
            os.fchmod(path, stat.S_IMODE(info.st_mode) & mode)
        else:
            os.chmod(path, stat.S_IMODE(info.st_mode) & mode)


def open_private(path: Path, flags: int, *, follow_symlinks: bool = False) -> int:
    """``os.open`` for the SDK's own files: mode 0600 at creation, never through a symlink (unless
    `follow_symlinks`: a path the user named), narrowed to 0600 if it existed with wider permissions."""
    fd = os.open(path, flags | (0 if follow_symlinks else O_NOFOLLOW) | O_CLOEXEC, FILE_MODE)
    if flags & os.O_CREAT:
        narrow(fd, FILE_MODE)
    return fd


def make_private_file(path: Path, *, follow_symlinks: bool = False) -> None:
    """Create `path` empty with mode 0600 if it does not exist (so that a library that opens it
    afterwards, such as SQLite, inherits the mode), or narrow its mode if it does.

    An existing file is never opened here: closing a descriptor of a SQLite database drops the
    POSIX locks every connection of this process holds on it."""
    try:
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, follow_symlinks=follow_symlinks))
    except FileExistsError:
        target = path.resolve() if follow_symlinks else path
        narrow(target, FILE_MODE)
