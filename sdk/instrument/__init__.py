"""Patches of other libraries' code, made with wrapt: each applied once per process, each removable.

`init()` applies what the config asks for, however often it is called; `shutdown()` removes them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

_lock = threading.Lock()
_applied: dict[str, tuple[object, str, object]] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def apply(name: str, owner: object, attribute: str, wrapper: Wrapper) -> bool:
    """Wrap ``owner.attribute`` with `wrapper` (wrapt's signature), unless `name` is applied already.

    Returns True when the patch was applied now.
    """
    import wrapt

    with _lock:
        if name in _applied:
            return False
        original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        _applied[name] = (owner, attribute, original)
        return True


def remove(name: str) -> bool:
    """Put back what patch `name` replaced. Returns True when it was applied."""
    with _lock:
        entry = _applied.pop(name, None)
    if entry is None:
        return False
    owner, attribute, original = entry
    setattr(owner, attribute, original)
    return True


def applied() -> list[str]:
    """The names of the patches in place."""
    with _lock:
        return sorted(_applied)
