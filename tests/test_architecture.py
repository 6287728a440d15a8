"""The house rules, checked: imports run one way through the layers, with no cycle, and no module keeps mutable state.

Mutable process state lives in ``sdk/state.py`` (``STATE``) and, for the notebook extension, which
sees the SDK through its face only, in ``notebook_ext/state.py``.

Layers, lowest first (a module may import its own layer and those below, never above):

0. base helpers: counters, state, guard, otel_internals, display, trust, redaction, attributes, datadir,
   pricing, budget, semconv, dialects, w3c, version
1. settings
2. export, store
3. runtime, tracing, foreign
4. session_core, inbound, session_api, scores, context, decorators, reaper
5. instrumentation, logs
6. lifecycle, autoinstrument, testing
7. the face (``sdk``), cli, records, upload, __main__
8. notebook_ext (through the face only)

Imports under ``if TYPE_CHECKING:`` do not run and are not counted; function-level imports are.
docs/architecture.md explains each layer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        [
            "sdk.counters",
            "sdk.state",
            "sdk.guard",
            "sdk.otel_internals",
            "sdk.display",
            "sdk.trust",
            "sdk.redaction",
            "sdk.attributes",
            "sdk.datadir",
            "sdk.pricing",
            "sdk.budget",
            "sdk.semconv",
            "sdk.dialects",
            "sdk.w3c",
            "sdk.version",
        ],
        0,
    ),
    "sdk.settings": 1,
    "sdk.export": 2,
    "sdk.store": 2,
    "sdk.runtime": 3,
    "sdk.tracing": 3,
    "sdk.foreign": 3,
    **dict.fromkeys(
        [
            "sdk.session_core",
            "sdk.inbound",
            "sdk.session_api",
            "sdk.scores",
            "sdk.context",
            "sdk.decorators",
            "sdk.reaper",
        ],
        4,
    ),
    "sdk.instrumentation": 5,
    "sdk.logs": 5,
    "sdk.lifecycle": 6,
    "sdk.autoinstrument": 6,
    "sdk.testing": 6,
    "sdk": 7,
    "sdk.cli": 7,
    "sdk.records": 7,
    "sdk.upload": 7,
    "sdk.__main__": 7,
    "notebook_ext": 8,
}


def documented_layers() -> dict[str, int]:
    """The layers docs/architecture.md draws: its first code block, one ``N  name, name`` line per
    layer (a line that starts with spaces goes on), a parenthesis being a remark."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```\n", 2)[1]
    found: dict[str, int] = {}
    number = -1
    for line in block.splitlines():
        if line[:1].isdigit():
            number, line = int(line[0]), line[1:]
        for name in re.sub(r"\([^)]*\)", "", line).split(","):
            if name.strip():
                found[name.strip()] = number
    return found


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    paths = [*ROOT.glob("sdk/**/*.py"), *ROOT.glob("notebook_ext/*.py")]
    return {module_name(p): p for p in paths}


MODULES = modules()


def layer(name: str) -> int:
    """The layer of a module: its own entry, else its package's."""
    probe = name
    while probe:
        if probe in LAYERS:
            return LAYERS[probe]
        probe = probe.rpartition(".")[0]
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (and docs/architecture.md)")


def resolve(name: str) -> str | None:
    """The module of ours an imported name refers to (``from sdk import runtime`` -> sdk.runtime)."""
    probe = name
    while probe:
        if probe in MODULES:
            return probe
        probe = probe.rpartition(".")[0]
    return None


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(module of ours imported, line) for every import that runs: top level and in functions."""
    tree = ast.parse(path.read_text())

    def walk(node: ast.AST, type_only: bool) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from walk(child, True)
                continue
            if not type_only and isinstance(child, ast.Import):
                for alias in child.names:
                    found = resolve(alias.name)
                    if found:
                        yield found, child.lineno
            elif not type_only and isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    found = resolve(f"{child.module}.{alias.name}") or resolve(child.module)
                    if found:
                        yield found, child.lineno
            yield from walk(child, type_only)

    yield from walk(tree, False)


def graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports(path) if target != name and not name.startswith(target + ".")}
        for name, path in MODULES.items()
    }


def test_docs_architecture_draws_these_layers():
    """docs/architecture.md's layer drawing names every module of LAYERS in its layer, and nothing else."""
    expected = {name.removeprefix("sdk.") if name != "sdk" else name: level for name, level in LAYERS.items()}
    assert documented_layers() == expected


def test_every_import_runs_down_the_layers():
    """No module imports a module of a higher layer, at top level or inside a function."""
    backwards = [
        f"{name}:{line} imports {target} (layer {layer(target)} > {layer(name)})"
        for name, path in MODULES.items()
        for target, line in imports(path)
        if layer(target) > layer(name)
    ]
    assert backwards == []


def test_there_is_no_import_cycle():
    """The import graph (function-level imports included) has no cycle."""
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_notebook_ext_uses_only_the_face():
    """notebook_ext imports nothing of sdk but the face (``import sdk``)."""
    for name, path in MODULES.items():
        if name.startswith("notebook_ext"):
            for target, line in imports(path):
                assert target == "sdk" or target.startswith("notebook_ext"), f"{name}:{line} imports {target}"


MUTABLE_CALLS = {
    "set",
    "dict",
    "list",
    "deque",
    "defaultdict",
    "OrderedDict",
    "Lock",
    "RLock",
    "Event",
    "count",
}


STATE_MODULES = frozenset({"sdk.state", "notebook_ext.state"})
"""Where mutable process state lives: the SDK's, and the notebook extension's own."""


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_keep_no_mutable_state(name):
    """A module's top level (in sdk/ and notebook_ext/) holds constants only: no module-level list, dict, set, lock or counter that is changed later, no ``global``."""
    tree = ast.parse(MODULES[name].read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], "a `global` statement"
    if name in STATE_MODULES:
        return  # the places mutable state lives
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if value is None:
            continue
        called = value.func if isinstance(value, ast.Call) else None
        called_name = (
            called.attr
            if isinstance(called, ast.Attribute)
            else called.id
            if isinstance(called, ast.Name)
            else ""
        )
        target = ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
        if target == "__all__":
            continue  # read by the import system, never changed
        assert called_name not in MUTABLE_CALLS, f"{name}: {target} = {ast.unparse(value)}"
        if isinstance(value, (ast.List, ast.Set)) or (isinstance(value, ast.Dict) and target.islower()):
            raise AssertionError(
                f"{name}: {target} looks mutable; constants are UPPER_CASE tuples or mappings"
            )


MAX_FUNCTION_LINES = 65


def test_functions_fit_in_a_readers_head():
    """No function of sdk/ or notebook_ext/ is longer than about 60 lines (signature and docstring
    included) unless its docstring says why ("Long because ...")."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


SEAM = "sdk.otel_internals"
"""The one module that may use OpenTelemetry's private names (issue 16)."""


def opentelemetry_private_names() -> frozenset[str]:
    """Every single-underscore name the installed OpenTelemetry distributions define: module-level names, class members, attributes set on ``self`` and ``__slots__`` entries (generated protobuf code left out)."""
    names: set[str] = set()
    for dist in metadata.distributions():
        if not (dist.metadata["Name"] or "").startswith("opentelemetry-"):
            continue
        for file in dist.files or ():
            if file.suffix != ".py" or file.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            names |= private_names_defined(ast.parse(Path(str(dist.locate_file(file))).read_bytes()))
    return frozenset(names)


def private_names_defined(tree: ast.AST, *, own: bool = False) -> set[str]:
    """The single-underscore names a module defines (with `own`: only attributes of its own classes, set on ``self``/``cls``, and class members)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(member.name)
                elif isinstance(member, (ast.Assign, ast.AnnAssign)):
                    targets = member.targets if isinstance(member, ast.Assign) else [member.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
                    if "__slots__" in map(ast.unparse, targets) and member.value is not None:
                        constants = (c for c in ast.walk(member.value) if isinstance(c, ast.Constant))
                        names.update(c.value for c in constants if isinstance(c.value, str))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if not own or (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
        elif not own and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif not own and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def opentelemetry_aliases(tree: ast.AST) -> set[str]:
    """The local names a module binds to OpenTelemetry modules (``import opentelemetry.context as otel_context``, ``from opentelemetry.sdk import trace``)."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("opentelemetry"):
                    aliases.add(alias.asname or alias.name.partition(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            for alias in node.names:
                if alias.name[:1].islower():  # a module (classes and constants are capitalised)
                    aliases.add(alias.asname or alias.name)
    return aliases


def private_opentelemetry_uses(path: Path, otel_private: frozenset[str]) -> list[str]:
    """Where a module, outside ``if TYPE_CHECKING:``, imports a private OpenTelemetry module or name, uses a private attribute of an OpenTelemetry module, or uses on anything but ``self``/``cls`` an attribute name that is private in OpenTelemetry and not defined by the module's own classes."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    aliases = opentelemetry_aliases(tree)
    suspect = otel_private - private_names_defined(tree, own=True)
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if "._" in f".{a.name}"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if "._" in f".{node.module}" or names:
                found.append(f"{where}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in aliases or (node.attr in suspect and owner not in ("self", "cls")):
                found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_no_private_opentelemetry_name_outside_the_seam():
    """No module but sdk/otel_internals.py imports a private OpenTelemetry module or name, uses a private attribute of an OpenTelemetry module, or reaches for an attribute name that is private in OpenTelemetry's classes (its own classes' names aside)."""
    otel_private = opentelemetry_private_names()
    assert {"_context", "_attributes", "_dict", "_RUNTIME_CONTEXT", "_resource"} <= otel_private
    found = [
        use
        for name, path in MODULES.items()
        if name != SEAM
        for use in private_opentelemetry_uses(path, otel_private)
    ]
    assert found == []
    # The check finds what it is for: the seam itself uses such names.
    assert private_opentelemetry_uses(MODULES[SEAM], otel_private)
