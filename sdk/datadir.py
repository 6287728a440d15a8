"""The one folder where the SDK keeps anything on disk (``./.sessiontrace/`` by default)."""

from __future__ import annotations

from pathlib import Path


def ensure_data_dir(root: Path, *sub: str) -> Path:
    """Create `root` (with a ``.gitignore`` holding ``*``, as pytest does for its cache) and a subfolder."""
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by sessiontrace\n*\n", encoding="utf-8")
    folder = root.joinpath(*sub)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
