"""The names the documentation mentions exist: settings and their environment variables, the CLI's
commands and flags, every ``sdk.<name>``, and what the code blocks import.

Each check reads README.md and docs/*.md, collects the names one kind of mention makes, and fails
listing every name the code does not have. The checkers are also run on a made-up page with a stale
name of each kind, so a checker that finds nothing is itself a failure.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import functools
import importlib
import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import sdk
from sdk.cli import build_parser
from sdk.settings import SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

MISSPELT_ON_PURPOSE = {
    "servce_name": "configuration.md shows the error a misspelt init() keyword gets",
    "SESSIONTRACE_EXPORTR": "security.md shows the error a misspelt environment variable gets",
}
"""Names the docs spell wrong on purpose, in examples of the SDK's error messages."""

OWN_PACKAGES = ("sdk", "notebook_ext")
SETTING_CALLS = ("init", "capture")
"""Functions whose keywords are settings: ``sdk.init()``, ``sdk.testing.capture()``."""

_FENCE = re.compile(r"^ *```([\w+-]*)[^\n]*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_CALL = re.compile(r"(?<![\w.])(?:sdk\.)?(?:" + "|".join(SETTING_CALLS) + r")\((?:[^()]|\([^()]*\))*\)")
_PROSE_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`\s+settings?\b|\bsettings?\s+`([a-z][a-z0-9_]*)`")
_ENV = re.compile(
    r"\b(?:SESSIONTRACE|OTEL)_[A-Z0-9_]*[A-Z0-9]\b"
)  # not a prefix such as OTEL_EXPORTER_OTLP_*
_IDENTIFIER = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_DOTTED = re.compile(r"\b[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+\b")
_SDK_NAME = re.compile(r"(?<![\w./-])sdk\.([A-Za-z_][\w.]*)")
_COMMAND = re.compile(r"^(?:\$\s+)?(?:sessiontrace|python -m sdk)(?=\s|$)(.*)$")


def pages() -> dict[str, str]:
    """README.md and docs/*.md by their path from the checkout's root."""
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in PAGES}


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    for match in _FENCE.finditer(text):
        yield match.group(1).lower(), match.group(2)


def inline_code(text: str) -> Iterator[str]:
    """Every inline code span outside the fenced blocks (a table's ``\\|`` read as ``|``)."""
    for match in _INLINE.finditer(_FENCE.sub("", text)):
        yield match.group(1).replace("\\|", "|")


def code_lines(text: str) -> Iterator[str]:
    """Every line of code: the fenced blocks' lines and the inline spans."""
    for _, body in code_blocks(text):
        yield from body.splitlines()
    yield from inline_code(text)


# -- settings ---------------------------------------------------------------------------------


def _call_keywords(call: str) -> set[str]:
    """The keywords of one ``init(...)``-like call's text, and the keys of an ``overrides={...}``."""
    try:
        tree = ast.parse(call.removeprefix("sdk."), mode="eval")
    except SyntaxError:
        return set()
    assert isinstance(tree.body, ast.Call)
    return {k.arg for k in tree.body.keywords if k.arg is not None}


def _overrides_keys(tree: ast.AST) -> set[str]:
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "overrides" and isinstance(node.value, ast.Dict):
            keys |= {
                k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
    return keys


def _toml_settings(body: str) -> set[str]:
    """The settings a TOML block sets: ``[tool.sessiontrace]``, ``[sessiontrace]`` or a sessiontrace.toml's top level."""
    try:
        data = tomllib.loads(body)
    except tomllib.TOMLDecodeError:
        return set()
    if "tool" in data:
        return set(data["tool"].get("sessiontrace", {}))
    if "sessiontrace" in data:
        return set(data["sessiontrace"])
    if "project" in data:
        return set()
    return set(data)


@functools.cache
def source_words() -> frozenset[str]:
    """Every snake_case word of the SDK's, the test helpers' and the benchmarks' source (names of
    something real), and its dotted attribute names spelt with underscores (as Prometheus does)."""
    words: set[str] = set()
    folders = [ROOT / "sdk", ROOT / "notebook_ext", ROOT / "benchmarks"]
    for path in [*(p for folder in folders for p in folder.rglob("*.py")), *(ROOT / "tests").glob("*.py")]:
        if not path.name.startswith("test_"):
            source = path.read_text(encoding="utf-8")
            words |= set(_IDENTIFIER.findall(source))
            words |= {name.replace(".", "_") for name in _DOTTED.findall(source)}
    return frozenset(words)


def near_misses(text: str) -> set[str]:
    """Names in a page's code that look like a setting (a close spelling) but are no setting and no
    name in the source: a misspelt or renamed setting, wherever the page mentions it."""
    candidates = {word for line in code_lines(text) for word in _IDENTIFIER.findall(line)} - set(SETTINGS)
    close = {word for word in candidates if difflib.get_close_matches(word, SETTINGS, n=1, cutoff=0.8)}
    return close - source_words() if close else set()


def settings_named(text: str) -> set[str]:
    """Every setting a page names, or seems to: keywords of init()/capture() calls and
    ``overrides={...}`` keys in code, keys of TOML blocks, prose's "the `name` setting", and code
    that spells a setting's name nearly right."""
    names: set[str] = set()
    for match in _CALL.finditer(text):
        names |= _call_keywords(match.group(0))
    for language, body in code_blocks(text):
        if language == "toml":
            names |= _toml_settings(body)
        elif language in ("python", "py", ""):
            with contextlib.suppress(SyntaxError):
                names |= _overrides_keys(ast.parse(body))
    for match in _PROSE_SETTING.finditer(text):
        names.add(match.group(1) or match.group(2))
    return names | near_misses(text)


@functools.cache
def known_environment_variables() -> frozenset[str]:
    """The settings' environment variables, and the other SESSIONTRACE_* and OTEL_* names the code
    reads (the SDK, the test helpers, the benchmarks, CI; not the tests themselves, which misspell
    some on purpose)."""
    known = {var.name for setting in SETTINGS.values() for var in setting.env}
    for folder in ("sdk", "notebook_ext", "tests", "benchmarks", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", "") and not path.name.startswith("test_"):
                known |= set(_ENV.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(known)


def stale_settings(text: str) -> list[str]:
    """The settings and SESSIONTRACE_* / OTEL_* variables a page names that do not exist."""
    stale = sorted(settings_named(text) - set(SETTINGS))
    stale += sorted(set(_ENV.findall(text)) - known_environment_variables())
    return [name for name in stale if name not in MISSPELT_ON_PURPOSE]


def test_every_setting_and_environment_variable_the_docs_name_exists():
    """Every setting the docs name (init()/capture() keywords, overrides keys, TOML keys, "the `x` setting", near spellings of a setting) is in sdk.settings.SETTINGS, and every SESSIONTRACE_*/OTEL_* variable is a setting's or read by the code."""
    found = {page: stale_settings(text) for page, text in pages().items()}
    assert {page: names for page, names in found.items() if names} == {}


def test_the_misspelt_names_are_wrong_on_purpose_and_still_in_the_docs():
    """The names the docs misspell on purpose (error message examples) are no settings or variables, and each is still shown."""
    everything = "\n".join(pages().values())
    known = set(SETTINGS) | known_environment_variables()
    for name in MISSPELT_ON_PURPOSE:
        assert name not in known, f"{name} exists now: remove it from MISSPELT_ON_PURPOSE"
        assert name in everything, f"{name} is no longer in the docs: remove it from MISSPELT_ON_PURPOSE"


# -- the command line ---------------------------------------------------------------------------


@functools.cache
def cli_parser() -> argparse.ArgumentParser:
    """The CLI's top-level parser."""
    return build_parser("sessiontrace")[0]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def command_lines(text: str) -> Iterator[list[str]]:
    """The arguments of every ``sessiontrace ...`` / ``python -m sdk ...`` command a page shows."""
    for line in code_lines(text):
        match = _COMMAND.match(line.strip())
        if match is None:
            continue
        rest = re.sub(r"[\[\]{}|]", " ", match.group(1).split(" #")[0])
        try:
            yield shlex.split(rest)
        except ValueError:
            yield rest.split()


def unknown_flags(arguments: list[str]) -> list[str]:
    """The flags in `arguments` that the CLI's parser (at the subcommand they follow) does not have."""
    parser = cli_parser()
    unknown = []
    running = False  # after `run`: what follows the script or module belongs to the program
    for index, token in enumerate(arguments):
        if token.startswith("-") and len(token) > 1:
            if token.split("=")[0] not in parser._option_string_actions:
                unknown.append(" ".join(["sessiontrace", *arguments[: index + 1]]))
            if running and token == "-m":
                break
            continue
        if running:
            break
        subcommand = _subcommands(parser).get(token)
        if subcommand is not None:
            parser = subcommand
            running = token == "run"
    return unknown


def stale_commands(text: str) -> list[str]:
    """The commands of a page that use a flag the CLI does not have."""
    return [bad for arguments in command_lines(text) for bad in unknown_flags(arguments)]


def test_every_cli_flag_the_docs_show_exists():
    """Every flag in a ``sessiontrace ...`` or ``python -m sdk ...`` command of the docs is an option of the command it follows."""
    found = {page: stale_commands(text) for page, text in pages().items()}
    assert {page: bad for page, bad in found.items() if bad} == {}


def test_the_docs_show_every_cli_command():
    """Each of the CLI's commands appears in the docs (so the flag check above has something to check)."""
    shown = {args[0] for text in pages().values() for args in command_lines(text) if args}
    assert set(_subcommands(cli_parser())) <= shown


# -- sdk.<name> and imports ---------------------------------------------------------------------


def _installed(module: str) -> bool:
    """Whether `module` can be imported (found, not imported; a parent package is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _top_level_names(module: str) -> set[str] | None:
    """The names a module of ours defines at its top level, read from its source (None: no such module)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """Whether ``sdk.x.y`` or ``notebook_ext.x.y`` names something: a module, then attributes.

    sdk is imported and its attributes followed; notebook_ext (which imports IPython) is read from
    its source: a submodule, then a name its top level defines.
    """
    parts = dotted.split(".")
    if parts[0] == "notebook_ext":
        module, rest = parts[0], parts[1:]
        while rest and _installed(f"{module}.{rest[0]}"):
            module = f"{module}.{rest.pop(0)}"
        names = _top_level_names(module) if rest else set()
        return not rest or (names is not None and rest[0] in names)
    obj: object = importlib.import_module(parts[0])
    for part in parts[1:]:
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, ModuleType) and _installed(f"{obj.__name__}.{part}"):
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        else:
            return False
    return True


def sdk_names(text: str) -> set[str]:
    """Every ``sdk.<name>[.<attribute>...]`` a page mentions (up to a call's parenthesis)."""
    return {match.group(1).rstrip(".") for match in _SDK_NAME.finditer(text)}


def stale_sdk_names(text: str) -> list[str]:
    """The ``sdk.<name>`` mentions of a page that are neither on the face (`sdk.__all__`) nor a module
    of the SDK, or whose attributes do not exist."""
    stale = []
    for name in sorted(sdk_names(text)):
        first = name.split(".")[0]
        on_face = first in sdk.__all__ or first == "__all__" or _installed(f"sdk.{first}")
        if not (on_face and resolves(f"sdk.{name}")):
            stale.append(f"sdk.{name}")
    return stale


def test_every_sdk_name_the_docs_mention_exists():
    """Every ``sdk.<name>`` in README.md and docs/ is on the face (sdk.__all__) or an SDK module, and the attributes after it exist."""
    found = {page: stale_sdk_names(text) for page, text in pages().items()}
    assert {page: names for page, names in found.items() if names} == {}


def imports(code: str) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) for every import in a Python code block, of our packages.

    A block that is not plain Python (a notebook cell with magics, a shell session) is read line by line.
    """
    try:
        nodes = list(ast.walk(ast.parse(code)))
    except SyntaxError:
        nodes = []
        for line in code.splitlines():
            try:
                nodes += list(ast.walk(ast.parse(line.strip())))
            except SyntaxError:
                continue
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                yield node.module, alias.name


def unresolved_imports(text: str) -> list[str]:
    """The imports of a page's Python code blocks that fail: of sdk or notebook_ext, a module or name
    that does not exist; of anything else, a module that is not installed with the dev extra."""
    bad = []
    for language, body in code_blocks(text):
        if language not in ("python", "py", "pycon", "ipython"):
            continue
        for module, name in imports(body):
            if module.split(".")[0] in OWN_PACKAGES:
                ok = resolves(module if name is None or name == "*" else f"{module}.{name}")
            else:
                ok = _installed(module.split(".")[0])
            if not ok:
                bad.append(f"from {module} import {name}" if name else f"import {module}")
    return bad


def test_every_import_in_the_docs_code_resolves():
    """Every import in a Python code block of README.md and docs/ resolves (sdk's and notebook_ext's names exist; other modules are installed)."""
    found = {page: unresolved_imports(text) for page, text in pages().items()}
    assert {page: bad for page, bad in found.items() if bad} == {}


# -- the checks find what they are for -------------------------------------------------------------

STALE_PAGE = """\
Set the `session_idle_timeut` setting, or `SESSIONTRACE_SESSION_IDLE_TIMEUT` (or
`OTEL_EXPORTER_OTLP_ENDPONT`). Records are written every `store_write_intervall` seconds.

```python
import sdk
from sdk import sesion
from sdk.testing import freeze_clocks

sdk.init(servce_name="x", exporter="none")
with sdk.session("a", overrides={"flush_timout": 1}):
    sdk.curent_session()
```

```toml
[tool.sessiontrace]
endpont = "http://collector:4318"
```

Run `sessiontrace sessions list --usr u-42`; then `sdk.context.wrapp` or `sdk.Session.last_startd`.

```bash
$ python -m sdk export --too http://localhost:4318
```
"""


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (
            stale_settings,
            [
                "endpont",
                "flush_timout",
                "session_idle_timeut",
                "store_write_intervall",
                "OTEL_EXPORTER_OTLP_ENDPONT",
                "SESSIONTRACE_SESSION_IDLE_TIMEUT",
            ],
        ),
        (stale_commands, ["sessiontrace sessions list --usr", "sessiontrace export --too"]),
        (stale_sdk_names, ["sdk.Session.last_startd", "sdk.context.wrapp", "sdk.curent_session"]),
        (unresolved_imports, ["from sdk import sesion", "from sdk.testing import freeze_clocks"]),
    ],
    ids=["settings", "cli", "sdk-names", "imports"],
)
def test_each_check_reports_a_stale_name(check, expected):
    """Each docs check, run on a page with stale names of its kind, reports exactly those."""
    assert sorted(check(STALE_PAGE)) == sorted(expected)
