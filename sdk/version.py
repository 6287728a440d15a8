"""The SDK's version, and the versions of the packages it works with, compared with ranges."""

from __future__ import annotations

import re

__version__ = "0.1.0"

_VERSION_PART = re.compile(r"\d+")
_SPEC = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9A-Za-z.]*)\s*")


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``2.0.0rc1`` -> (2, 0, 0)), for range checks."""
    parts: list[int] = []
    for piece in version.split(".")[:4]:
        match = _VERSION_PART.match(piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def in_range(version: str, spec: str) -> bool:
    """Whether `version` satisfies `spec` (comparisons joined by commas: ``>=1.68,<4``)."""
    have = release(version)
    for clause in spec.split(","):
        match = _SPEC.fullmatch(clause)
        if match is None:
            raise ValueError(f"not a version range: {spec!r}")
        op, bound = match.group(1), release(match.group(2))
        width = max(len(have), len(bound))
        a, b = have + (0,) * (width - len(have)), bound + (0,) * (width - len(bound))
        if not {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            "!=": a != b,
            ">": a > b,
            "<": a < b,
        }[op]:
            return False
    return True


def installed_version(package: str) -> str | None:
    """The installed distribution's version, or None."""
    from importlib import metadata  # email, zipfile, csv...: 7 ms that `import sdk` need not pay

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
