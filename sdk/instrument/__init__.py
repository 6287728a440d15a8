"""Patches of other libraries' code: each applied once per process, each removable.

`init()` applies what the config asks for, however often it is called; `shutdown()` removes them.
Wrappers take wrapt's signature ``(wrapped, instance, args, kwargs)``. A plain function defined on
a class (the standard library's executors and threads) is wrapped by a small function of our own,
which costs nothing to import; anything else goes through wrapt, imported then.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sdk.guard import internal_error

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

_lock = threading.Lock()
_applied: dict[str, tuple[object, str, object]] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def apply(name: str, owner: object, attribute: str, wrapper: Wrapper, *, via_wrapt: bool = False) -> bool:
    """Wrap ``owner.attribute`` with `wrapper` (wrapt's signature), unless `name` is applied already.

    ``via_wrapt=True`` always uses wrapt's FunctionWrapper (a transparent proxy: signature,
    ``inspect.iscoroutinefunction`` and introspection of the method stay as they were), as the
    patches of third-party clients do. Returns True when the patch was applied now.
    """
    with _lock:
        if name in _applied:
            return False
        original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        if not via_wrapt and isinstance(owner, type) and isinstance(original, types.FunctionType):
            setattr(owner, attribute, _method_wrapper(original, wrapper))
        else:
            import wrapt  # over 100 ms to import (it loads asyncio): only when needed

            wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        _applied[name] = (owner, attribute, original)
        return True


def _method_wrapper(original: Callable[..., Any], wrapper: Wrapper) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        return wrapper(functools.partial(original, self), self, args, kwargs)

    return patched


def remove(name: str) -> bool:
    """Put back what patch `name` replaced. Returns True when it was applied."""
    with _lock:
        entry = _applied.pop(name, None)
    if entry is None:
        return False
    owner, attribute, original = entry
    setattr(owner, attribute, original)
    return True


def is_applied(name: str) -> bool:
    """Whether patch `name` is in place."""
    return name in _applied


def applied() -> list[str]:
    """The names of the patches in place."""
    with _lock:
        return sorted(_applied)


class _AfterImport:
    """Runs callbacks right after a module is first imported (a post-import hook, as wrapt has).

    A meta-path finder needs only find_spec(); subclassing importlib.abc.MetaPathFinder would import
    importlib.resources (25 ms) at init().
    """

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable[[types.ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                continue
            self._call_after_exec(spec.loader, fullname)
            return spec
        return None

    def _call_after_exec(self, loader: Any, fullname: str) -> None:
        exec_module = loader.exec_module

        def exec_then_call(module: types.ModuleType) -> None:
            exec_module(module)
            for callback in self.pending.pop(fullname, []):
                try:
                    callback(module)
                except Exception as exc:
                    internal_error(f"post-import hook for {fullname}", exc)

        loader.exec_module = exec_then_call


_after_import = _AfterImport()


def when_imported(module_name: str, callback: Callable[[types.ModuleType], None]) -> None:
    """Call `callback(module)` now if the module is imported, else right after it is imported."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _after_import.pending.setdefault(module_name, []).append(callback)
        if _after_import not in sys.meta_path:
            sys.meta_path.insert(0, _after_import)


def _llm_modules() -> dict[str, Any]:
    from sdk.instrument import anthropic, openai

    return {"openai": openai, "anthropic": anthropic}


def configure_llm(libraries: tuple[str, ...]) -> None:
    """Instrument exactly these LLM client libraries (init() calls this with the `instrument` setting).

    A library that is not imported yet is patched right after its import; one that is not
    installed costs nothing.
    """
    for name, module in _llm_modules().items():
        if name in libraries:
            module.apply()
        else:
            module.remove()


def uninstrument(*libraries: str) -> None:
    """Remove the LLM client patches (of the named libraries, default all), restoring the original methods.

    Lasts until the next `sdk.init()`, which applies what the `instrument` setting asks again.
    """
    modules = _llm_modules()
    unknown = [name for name in libraries if name not in modules]
    if unknown:
        raise ValueError(f"unknown library {unknown[0]!r}; instrumented libraries: {', '.join(modules)}")
    for name in libraries or tuple(modules):
        modules[name].remove()
