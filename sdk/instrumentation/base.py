"""Patches of other libraries' code, and instrumentors in OpenTelemetry's shape built on them.

Every patch is applied once per process and is removable. Wrappers take wrapt's signature
``(wrapped, instance, args, kwargs)``. A plain function defined on a class (the standard library's
executors and threads) is wrapped by a small function of our own, which costs nothing to import;
anything else goes through wrapt, imported then.

An `Instrumentor` groups the patches of one library, as OpenTelemetry's ``BaseInstrumentor``
does: `instrumentation_dependencies()` declares the supported versions, `instrument()` patches the
library right after it is imported (or at once, if it is), `uninstrument()` puts the originals
back. A version outside the supported range, or a class or method the patches expect and the
installed version lacks, is warned about once — naming the package, its version and the range —
and is never a silent no-op.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from sdk.guard import internal_error, warn_once
from sdk.state import STATE
from sdk.version import in_range, installed_version

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def apply(name: str, owner: object, attribute: str, wrapper: Wrapper, *, via_wrapt: bool = False) -> bool:
    """Wrap ``owner.attribute`` with `wrapper` (wrapt's signature), unless `name` is applied already.

    ``via_wrapt=True`` always uses wrapt's FunctionWrapper (a transparent proxy: signature,
    ``inspect.iscoroutinefunction`` and introspection of the method stay as they were), as the
    patches of third-party clients do. Returns True when the patch was applied now.
    """
    with STATE.patches_lock:
        if name in STATE.patches:
            return False
        original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        if not via_wrapt and isinstance(owner, type) and isinstance(original, types.FunctionType):
            setattr(owner, attribute, _method_wrapper(original, wrapper))
        else:
            import wrapt  # over 100 ms to import (it loads asyncio): only when needed

            wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        STATE.patches[name] = (owner, attribute, original)
        return True


def _method_wrapper(original: Callable[..., Any], wrapper: Wrapper) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        return wrapper(functools.partial(original, self), self, args, kwargs)

    return patched


def remove(name: str) -> bool:
    """Put back what patch `name` replaced. Returns True when it was applied."""
    with STATE.patches_lock:
        entry = STATE.patches.pop(name, None)
    if entry is None:
        return False
    owner, attribute, original = entry
    setattr(owner, attribute, original)
    return True


def is_applied(name: str) -> bool:
    """Whether patch `name` is in place."""
    return name in STATE.patches


def applied() -> list[str]:
    """The names of the patches in place."""
    with STATE.patches_lock:
        return sorted(STATE.patches)


class AfterImport:
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


def when_imported(module_name: str, callback: Callable[[types.ModuleType], None]) -> None:
    """Call `callback(module)` now if the module is imported, else right after it is imported."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    with STATE.patches_lock:
        finder = STATE.after_import
        if finder is None:
            finder = STATE.after_import = AfterImport()
        finder.pending.setdefault(module_name, []).append(callback)
        if finder not in sys.meta_path:
            sys.meta_path.insert(0, finder)


# ---------------------------------------------------------------------------------------------
# Instrumentors


class Patch(NamedTuple):
    """One method an instrumentor replaces: ``<module>.<owner>.<attribute>``."""

    module: str
    owner: str | None
    """A class of the module, or None for a function of the module itself."""
    attribute: str
    wrapper: Wrapper
    name: str
    """The patch's name (in `applied()`, warnings and tests)."""
    optional: bool = False
    """Absent from some supported versions: no warning when missing."""


class Instrumentor:
    """The patches of one library, applied once its modules are imported (see the module docstring)."""

    def __init__(
        self,
        name: str,
        package: str,
        supported: str,
        patches: tuple[Patch, ...],
        requires: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.package = package
        self.supported = supported
        self.patches = patches
        self.requires = requires
        """SDK modules the wrappers import when they run: imported before patching, so that a failure
        there (a dependency too old) leaves the library unpatched instead of raising into its calls."""

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        """The supported versions, as OpenTelemetry's instrumentors declare them (``openai >= 1.66, < 4``)."""
        return (f"{self.package} {self.supported.replace(',', ', ')}",)

    @property
    def instrumented(self) -> bool:
        """Whether the patches are wanted (applied now, or when the library is imported)."""
        return STATE.instrumented.get(self.name, False)

    def instrument(self) -> None:
        """Patch the library now if it is imported, else right after it is (at most once per process)."""
        STATE.instrumented[self.name] = True
        for module_name in dict.fromkeys(p.module for p in self.patches):
            if (self.name, module_name) not in STATE.hooked_modules:
                STATE.hooked_modules.add((self.name, module_name))
                when_imported(module_name, self._on_import)
            module = sys.modules.get(module_name)
            if module is not None:  # imported while the patches were not wanted (after uninstrument())
                self._on_import(module)

    def uninstrument(self) -> None:
        """Put the library's original methods back (a later `instrument()` patches again)."""
        STATE.instrumented[self.name] = False
        for patch in self.patches:
            remove(patch.name)

    def version_supported(self) -> bool:
        """Whether the installed version is in the supported range (warned about once if not)."""
        ok = STATE.version_checked.get(self.name)
        if ok is None:
            version = installed_version(self.package)
            ok = STATE.version_checked[self.name] = version is not None and in_range(version, self.supported)
            if version is not None and not ok:
                warn_once(
                    f"instrument-version-{self.name}",
                    "sessiontrace: %s %s is outside the range this SDK supports (%s); its calls are "
                    "not recorded. Install a supported version, or see docs/compatibility.md",
                    self.package,
                    version,
                    self.supported,
                )
        return ok

    def _on_import(self, module: types.ModuleType) -> None:
        if not self.instrumented or not self.version_supported():
            return
        try:
            for name in self.requires:
                importlib.import_module(name)
        except Exception as exc:
            internal_error(f"{self.name} instrumentation (its calls are not recorded)", exc)
            return
        for patch in self.patches:
            if patch.module != module.__name__:
                continue
            owner: object = module if patch.owner is None else getattr(module, patch.owner, None)
            has = owner is not None and (
                patch.attribute in vars(owner)
                if isinstance(owner, type)
                else callable(getattr(owner, patch.attribute, None))
            )
            if not has:
                if not patch.optional:
                    warn_once(
                        f"instrument-missing-{patch.name}",
                        "sessiontrace: %s %s has no %s.%s; %s calls are not recorded (supported: %s)",
                        self.package,
                        installed_version(self.package),
                        patch.module,
                        f"{patch.owner}.{patch.attribute}" if patch.owner else patch.attribute,
                        patch.name,
                        self.supported,
                    )
                continue
            apply(patch.name, owner, patch.attribute, patch.wrapper, via_wrapt=True)
