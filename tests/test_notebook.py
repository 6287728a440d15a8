"""Notebooks on a real kernel: ipykernel started from this Python, driven by nbclient.

Each notebook runs in its own kernel with the test's directory as working directory and no
SESSIONTRACE_*/OTEL_* variables but SESSIONTRACE_RAISE_INTERNAL_ERRORS=1 (a bug in the hooks
then shows in the cell's output instead of being swallowed). The spans are read from the
OTLP-JSON files the default exporter writes under .sessiontrace/traces, after the kernel has
shut down (so what is checked includes the flush at kernel shutdown).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import KERNEL_NAME
from nbclient import NotebookClient
from nbformat import NotebookNode

import sdk
from sdk.export.jsonl import read_otlp_json_spans

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_env(home: Path, **extra: str) -> dict[str, str]:
    """The kernel's environment: ours without SESSIONTRACE_*/OTEL_*, internal errors raised, its own IPython dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"
    env["IPYTHONDIR"] = str(home / "ipython")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.update(extra)
    return env


def execute(
    cells: Iterable[str | NotebookNode],
    cwd: Path,
    kernel_dirs: Path,
    *,
    timeout_func: Callable[[NotebookNode], int] | None = None,
    **env: str,
) -> NotebookNode:
    """Run the cells in a new kernel (cwd = `cwd`), shut the kernel down gracefully, return the notebook.

    Cells may raise only if tagged ``raises-exception``; a cell for which `timeout_func` gives a
    short timeout is interrupted (as the Jupyter "interrupt" button does) when it runs over.
    `env`: more variables for the kernel.
    """
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells]
    )
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=60,
        timeout_func=timeout_func,
        interrupt_on_timeout=timeout_func is not None,
        shutdown_kernel="graceful",
        resources={"metadata": {"path": str(cwd)}},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(kernel_dirs))  # where the kernel manager finds KERNEL_NAME
        patch.setenv("JUPYTER_PLATFORM_DIRS", "1")
        client.execute(env=kernel_env(cwd, **env))
    return nb


def raising(source: str) -> NotebookNode:
    """A cell that is expected to raise (nbclient goes on after it)."""
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["raises-exception"]})


def outputs(nb: NotebookNode, index: int, output_type: str) -> list[NotebookNode]:
    return [o for o in nb.cells[index].outputs if o.output_type == output_type]


def stream_text(nb: NotebookNode, index: int, name: str = "stderr") -> str:
    return "".join(o.text for o in outputs(nb, index, "stream") if o.name == name)


def no_hook_errors(nb: NotebookNode) -> None:
    """No cell shows an error from an IPython event callback (internal errors are raised in these kernels)."""
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", ()):
            text = out.get("text", "") + "\n".join(out.get("traceback", []))
            assert "Error in callback" not in text, (index, text)
            assert "internal error" not in text, (index, text)


def traceback_text(nb: NotebookNode, index: int) -> list[str]:
    """A cell's error traceback without colours and with its execution count blanked out."""
    (error,) = outputs(nb, index, "error")
    return [re.sub(r"In\[\d+\]", "In[#]", ANSI.sub("", line)) for line in error.traceback]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in span.get("attributes", ())}


class Spans:
    """The exported spans of a notebook run, with lookups."""

    def __init__(self, cwd: Path) -> None:
        self.folder = cwd / ".sessiontrace" / "traces"
        self.all = read_otlp_json_spans(self.folder)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.all if s["name"] == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.named(name)
        assert len(found) == 1, f"expected one span named {name!r}, found {len(found)}"
        return found[0]

    def sessions(self) -> list[dict[str, Any]]:
        return [s for s in self.all if attrs(s).get("sessiontrace.span.kind") == "session"]

    def session(self, name: str) -> dict[str, Any]:
        (found,) = [s for s in self.sessions() if s["name"] == name]
        return found

    def cells(self) -> list[dict[str, Any]]:
        return [s for s in self.all if re.fullmatch(r"cell\[\d+\]", s["name"])]

    def tool_calls(self, arg: int) -> list[dict[str, Any]]:
        """The spans of ``work(arg)`` calls (the tool records its argument)."""
        return [
            s
            for s in self.named("execute_tool work")
            if any(attrs(e).get("work.arg") == str(arg) for e in s.get("events", ()))
        ]

    def in_session(self, span: dict[str, Any], session: dict[str, Any]) -> bool:
        return (
            span["traceId"] == session["traceId"]
            and attrs(span)["session.id"] == attrs(session)["session.id"]
        )


PRELUDE = """\
import asyncio, threading, time
import sdk

@sdk.tool
def work(arg):
    sdk.event("work", **{"work.arg": arg})  # tells the calls apart in the exported spans
    return 2 * arg
"""


def test_reinit_regression_one_session_one_span_per_cell(tmp_path, kernel_dirs):
    """init, work, the same init again, work, end_session twice: one auto session for that work ended `success`, one span per cell."""
    nb = execute(
        [
            "import sdk\nsdk.init(auto_start_session=True)",
            "@sdk.tool\ndef double(x):\n    return 2 * x\n\ndouble(1)",
            "sdk.init(auto_start_session=True)",
            "double(2)",
            "sdk.end_session()",
            "sdk.end_session()",
        ],
        tmp_path,
        kernel_dirs,
    )
    no_hook_errors(nb)
    assert not [o for cell in nb.cells for o in cell.outputs if o.output_type == "error"]
    assert "Warning" not in stream_text(nb, 5)  # ending again is no error and no warning
    spans = Spans(tmp_path)
    assert len(list(spans.folder.glob("*.jsonl"))) == 1  # one exporter: the second init changed nothing
    assert len({s["spanId"] for s in spans.all}) == len(spans.all)  # nothing exported twice

    # Cells 1-5 ran while the first auto session was open: one cell[N] span each, children of the
    # session. Cell 6 ran after it ended: the kernel's auto session is on, so that cell started a
    # new one (and said so), which its end_session() ended.
    session, again = sorted(spans.sessions(), key=lambda s: int(s["startTimeUnixNano"]))
    for auto in (session, again):
        assert attrs(auto)["session.auto"] is True
        assert attrs(auto)["session.state"] == "success"
    assert stream_text(nb, 5, "stdout").startswith(
        "sessiontrace: the auto session 'auto' had ended; this cell starts"
    )
    cells = sorted(spans.cells(), key=lambda s: int(attrs(s)["notebook.cell.execution_count"]))
    assert [c["name"] for c in cells] == ["cell[1]", "cell[2]", "cell[3]", "cell[4]", "cell[5]", "cell[6]"]
    for cell in cells[:5]:
        assert cell["parentSpanId"] == session["spanId"]
        assert spans.in_session(cell, session)
        assert len(attrs(cell)["notebook.cell.source_sha256"]) == 64
    assert spans.in_session(cells[5], again)
    tools = spans.named("execute_tool double")
    assert len(tools) == 2
    assert [t["parentSpanId"] for t in tools] == [cells[1]["spanId"], cells[3]["spanId"]]
    assert all(spans.in_session(t, session) for t in tools)
    assert len(spans.all) == 1 + 5 + 2 + 1 + 1


def test_cell_spans_carry_the_count_the_kernel_shows(tmp_path, kernel_dirs):
    """Each cell's span has the execution count the kernel shows for that cell: IPython 8 and 9.0-9.7 count a cell after pre_run_cell, 9.8+ before it (the compat matrix runs both)."""
    nb = execute(
        ["import sdk\nsdk.init(auto_start_session=True)", "x = 1", "y = x + 1"], tmp_path, kernel_dirs
    )
    no_hook_errors(nb)
    assert [cell.execution_count for cell in nb.cells] == [1, 2, 3]
    cells = Spans(tmp_path).cells()
    counts = [int(attrs(c)["notebook.cell.execution_count"]) for c in cells]
    assert sorted(counts)[-2:] == [2, 3]
    assert len(set(counts)) == len(counts)
    assert all(c["name"] == f"cell[{n}]" for c, n in zip(cells, counts, strict=True))


# --- one kernel for the %%session cells --------------------------------------------------------

SESSION_CELLS = [
    PRELUDE + "sdk.init(auto_start_session=True)\n%load_ext notebook_ext",  # 0
    "%%session checkout --id cell-ok --user u-1 --tag a --tag b\nwork(1)\n40 + 2",  # 1
    raising("%%session boom\nx = work(2)\n1 / 0\ny = 3"),  # 2
    raising("x = work(2)\n1 / 0\ny = 3"),  # 3: the same code without the magic
    "%%session waiting\nawait asyncio.sleep(0.01)\nwork(3)",  # 4
    "%%session outer\nwith sdk.session('inner'):\n    work(4)\nwork(5)",  # 5
    raising("%%session --no-such-flag\nwork(6)"),  # 6
    "%%session --id cell-ok\nwork(7)",  # 7: the id is free again: this one runs
    "kept = sdk.start_session('kept', session_id='kept')",  # 8
    raising("%%session --id kept\nwork(8)"),  # 9: the id is in use
    "sdk.end_session(kept)",  # 10
    "t = threading.Thread(target=work, args=(9,))\nt.start(); t.join()",  # 11
    "sdk.init(auto_start_session=True, propagate_threads=True)",  # 12
    "%%session threaded\nt = threading.Thread(target=work, args=(10,))\nt.start(); t.join()",  # 13
    '%config SessionMagics.ui_url = "http://ui.example/trace/{trace_id}?s={session_id}"',  # 14
    "%%session llm\nsdk.current_session().add_llm_usage(input_tokens=12, output_tokens=3, cost_usd=0.00042)",  # 15
    "%session",  # 16
    "%session new second",  # 17
    "work(11)",  # 18
    "get_ipython().run_cell_magic('session', 'direct', 'work(12)')",  # 19
    "%%session captured\n%%capture out\nwork(13)",  # 20
    raising("%%session --resume\nwork(14)"),  # 21: --resume needs --id
]


@pytest.fixture(scope="module")
def session_run(tmp_path_factory, kernel_dirs) -> tuple[NotebookNode, Spans]:
    """The %%session notebook, run once; its notebook and exported spans."""
    cwd = tmp_path_factory.mktemp("session-cells")
    nb = execute(SESSION_CELLS, cwd, kernel_dirs)
    return nb, Spans(cwd)


def html_summary(nb: NotebookNode, index: int) -> str:
    (shown,) = [o for o in outputs(nb, index, "display_data") if "text/html" in o.data]
    return str(shown.data["text/html"])


def test_session_cell_runs_body_in_one_session_and_shows_summary(session_run):
    """A %%session cell's work is in one new session, ended `success`, summarized as HTML and text after the cell."""
    nb, spans = session_run
    no_hook_errors(nb)
    session = spans.session("checkout")
    assert attrs(session)["session.id"] == "cell-ok"
    assert attrs(session)["user.id"] == "u-1"
    assert attrs(session)["session.tags"] == {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}
    assert attrs(session)["session.state"] == "success"
    assert "parentSpanId" not in session or not session["parentSpanId"]  # its own trace
    (tool,) = spans.tool_calls(1)
    assert tool["parentSpanId"] == session["spanId"]
    assert spans.in_session(tool, session)
    (result,) = outputs(nb, 1, "execute_result")
    assert result.data["text/plain"] == "42"  # the last expression is shown as in any cell
    html = html_summary(nb, 1)
    for text in ("cell-ok", "success", "duration", "spans", "errors"):
        assert text in html
    (summary,) = list(outputs(nb, 1, "display_data"))
    assert summary.data["text/plain"].startswith("sessiontrace\n  session   checkout · cell-ok")
    assert stream_text(nb, 1) == ""  # the SDK's own one-line summary is not printed as well


def test_session_cell_exception_ends_fail_with_unchanged_traceback(session_run):
    """An exception in a %%session cell ends its session `fail` and shows the traceback the same code shows without the magic."""
    nb, spans = session_run
    session = spans.session("boom")
    assert attrs(session)["session.state"] == "fail"
    assert attrs(session)["session.end_reason"] == "ZeroDivisionError"
    assert [e["name"] for e in session.get("events", ())] == ["exception"]
    (tool,) = [t for t in spans.tool_calls(2) if t["traceId"] == session["traceId"]]
    assert spans.in_session(tool, session)
    assert traceback_text(nb, 2) == traceback_text(nb, 3)
    assert "ZeroDivisionError" in traceback_text(nb, 2)[-1]
    assert "fail (ZeroDivisionError)" in html_summary(nb, 2)
    assert re.search(r"errors</th><td[^>]*>1<", html_summary(nb, 2))


def test_session_cell_with_top_level_await(session_run):
    """A %%session cell may use top-level await; work after the await is in its session."""
    _, spans = session_run
    session = spans.session("waiting")
    assert attrs(session)["session.state"] == "success"
    (tool,) = spans.tool_calls(3)
    assert tool["parentSpanId"] == session["spanId"]
    assert spans.in_session(tool, session)


def test_nested_session_inside_session_cell(session_run):
    """``with sdk.session()`` inside a %%session cell is its own session linked to the cell's, which goes on after it."""
    _, spans = session_run
    outer, inner = spans.session("outer"), spans.session("inner")
    assert attrs(inner)["session.parent_id"] == attrs(outer)["session.id"]
    assert inner["traceId"] != outer["traceId"]
    assert [link["spanId"] for link in inner["links"]] == [outer["spanId"]]
    (inside,), (after,) = spans.tool_calls(4), spans.tool_calls(5)
    assert spans.in_session(inside, inner)
    assert inside["parentSpanId"] == inner["spanId"]
    assert spans.in_session(after, outer)
    assert after["parentSpanId"] == outer["spanId"]
    assert attrs(outer)["session.state"] == attrs(inner)["session.state"] == "success"


def test_session_cell_bad_arguments_raise_usage_error(session_run):
    """Bad %%session arguments, or an id already in use, raise a one-line UsageError and run nothing."""
    nb, spans = session_run
    assert stream_text(nb, 6).startswith("UsageError: %%session: unrecognized arguments: --no-such-flag")
    assert stream_text(nb, 9) == (
        "UsageError: %%session: a session with id 'kept' is already open in this process; "
        "end it first or choose another id\n"
    )
    assert stream_text(nb, 21) == (
        "UsageError: %%session: --resume needs --id ID (the id of the session to resume)\n"
    )
    for index in (6, 9, 21):
        assert not outputs(nb, index, "error")  # no traceback
        assert not outputs(nb, index, "display_data")  # no summary: there was no session
    assert spans.tool_calls(6) == spans.tool_calls(8) == spans.tool_calls(14) == []  # no body ran
    assert len(spans.tool_calls(7)) == 1  # a free id works (cell-ok ended, so its id is free again)
    assert [s["name"] for s in spans.sessions() if attrs(s)["session.id"] == "kept"] == ["kept"]


def test_threads_join_the_auto_session_or_the_session_cell(session_run):
    """A thread started in a plain cell joins the auto session (under the cell's span); with propagate_threads, a %%session's."""
    _, spans = session_run
    auto = spans.session("auto")
    (plain,) = spans.tool_calls(9)
    (cell,) = [c for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == "12"]
    assert spans.in_session(plain, auto)
    assert plain["parentSpanId"] == cell["spanId"]
    threaded = spans.session("threaded")
    (inside,) = spans.tool_calls(10)
    assert spans.in_session(inside, threaded)
    assert inside["parentSpanId"] == threaded["spanId"]


def test_summary_shows_llm_usage_and_backend_link(session_run):
    """The summary lists the session's LLM calls, tokens and cost and links to the trace when a UI address is configured."""
    nb, spans = session_run
    session = spans.session("llm")
    html = html_summary(nb, 15)
    assert re.search(r"LLM calls</th><td[^>]*>1<", html)
    assert re.search(r"LLM input tokens</th><td[^>]*>12<", html)
    assert re.search(r"LLM output tokens</th><td[^>]*>3<", html)
    assert re.search(r"LLM cost</th><td[^>]*>\$0.00042<", html)
    assert attrs(session)["session.llm.input_tokens"] == "12"
    link = f'href="http://ui.example/trace/{session["traceId"]}?s={attrs(session)["session.id"]}"'
    assert link in html
    assert "LLM" not in html_summary(nb, 1)  # shown only when the session has such attributes


def test_session_line_magic_shows_and_replaces_the_auto_session(session_run):
    """``%session`` shows the auto session; ``%session new NAME`` ends it and starts another, which later cells join."""
    nb, spans = session_run
    first, second = spans.session("auto"), spans.session("second")
    assert "auto session" in html_summary(nb, 16)
    assert attrs(first)["session.id"] in html_summary(nb, 16)
    assert attrs(first)["session.end_reason"] == "replaced by %session new"
    assert attrs(second)["session.auto"] is True
    (later,) = spans.tool_calls(11)
    (cell,) = [c for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == "19"]
    assert spans.in_session(later, second)
    assert later["parentSpanId"] == cell["spanId"]
    # The %session new cell's own span stays in the first auto session: one span per cell.
    assert [c["traceId"] for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == "18"] == [
        first["traceId"]
    ]


def test_session_magic_called_directly_or_before_other_cell_magics(session_run):
    """``run_cell_magic("session", ...)`` and a %%session line followed by another cell magic both run the code in the session."""
    _, spans = session_run
    for name, arg in (("direct", 12), ("captured", 13)):
        session = spans.session(name)
        assert attrs(session)["session.state"] == "success"
        (tool,) = spans.tool_calls(arg)
        assert spans.in_session(tool, session)
        assert tool["parentSpanId"] == session["spanId"]


def test_kernel_shutdown_ends_and_flushes_auto_session(session_run):
    """The auto session still open when the kernel shuts down is ended `success` and exported, as is every cell span."""
    _, spans = session_run
    second = spans.session("second")
    assert attrs(second)["session.state"] == "success"
    assert "session.end_reason" not in attrs(second)
    counts = sorted(int(attrs(c)["notebook.cell.execution_count"]) for c in spans.cells())
    assert counts == list(range(1, len(SESSION_CELLS) + 1))  # one span per cell, none lost or doubled


# --- other kernels ---------------------------------------------------------------------------


def test_load_ext_twice_reload_and_unload(tmp_path, kernel_dirs):
    """%load_ext twice and %reload_ext register each hook once; %unload_ext removes what the extension added."""
    count_hooks = """\
ip = get_ipython()
def hooks():
    return dict(
        pre=len(ip.events.callbacks["pre_run_cell"]),
        post=len(ip.events.callbacks["post_run_cell"]),
        input=len(ip.input_transformers_cleanup),
        ast=len(ip.ast_transformers),
        line="session" in ip.magics_manager.magics["line"],
        cell="session" in ip.magics_manager.magics["cell"],
        configurables=sum(type(c).__name__ == "SessionMagics" for c in ip.configurables),
    )
counts = {"before": hooks()}"""
    nb = execute(
        [
            count_hooks,
            "%load_ext notebook_ext\ncounts['load'] = hooks()",
            "%load_ext notebook_ext\ncounts['load again'] = hooks()",
            "%reload_ext notebook_ext\ncounts['reload'] = hooks()",
            "%%session before-init\n1",
            "%unload_ext notebook_ext\ncounts['unload'] = hooks()",
            "import sdk\nsdk.init(auto_start_session=True)\ncounts['init'] = hooks()",
            "sdk.init(auto_start_session=True, service_name='renamed')\ncounts['init again'] = hooks()",
            "%load_ext notebook_ext\ncounts['init, load'] = hooks()",
            "%%session after-load\n1",
            "%unload_ext notebook_ext\ncounts['init, unload'] = hooks()",
            raising("%%session after-unload\n1"),
            "print(counts)",
        ],
        tmp_path,
        kernel_dirs,
    )
    no_hook_errors(nb)
    counts = ast.literal_eval(stream_text(nb, 12, "stdout"))
    off = {"pre": 0, "post": 0, "ast": 0, "line": False, "cell": False, "configurables": 0}
    on = {"pre": 1, "post": 1, "ast": 1, "line": True, "cell": True, "configurables": 1}
    cells_only = {**off, "pre": 1, "post": 1}
    base_input = counts["before"]["input"]
    expected = {
        "before": off,
        "load": on,
        "load again": on,
        "reload": on,
        "unload": off,
        "init": cells_only,
        "init again": cells_only,
        "init, load": on,
        "init, unload": cells_only,
    }
    for step, want in expected.items():
        got = dict(counts[step])
        assert got.pop("input") == base_input + want["ast"], step  # one input transformer with the magic
        assert got == want, step
    assert stream_text(nb, 11) == "UsageError: Cell magic `%%session` not found.\n"
    (before_init,) = outputs(nb, 4, "display_data")
    assert "not recorded: sdk.init() has not run" in before_init.data["text/plain"]
    spans = Spans(tmp_path)
    assert sorted(s["name"] for s in spans.sessions()) == ["after-load", "auto"]
    assert attrs(spans.session("after-load"))["session.state"] == "success"
    # Cell spans come from init(), not the extension: unloading it keeps them, one per cell.
    counts_seen = sorted(int(attrs(c)["notebook.cell.execution_count"]) for c in spans.cells())
    assert counts_seen == list(range(7, 14))
    assert {attrs(c)["session.id"] for c in spans.cells()} == {attrs(spans.session("auto"))["session.id"]}


def test_interrupt_during_session_cell_ends_it_indeterminate(tmp_path, kernel_dirs):
    """Interrupting the kernel during a %%session cell ends its session `indeterminate` (interrupted); the kernel goes on."""
    nb = execute(
        [
            PRELUDE + "sdk.init(auto_start_session=True)\n%load_ext notebook_ext",
            raising("%%session slow\nwork(1)\ntime.sleep(60)\nwork(2)"),
            "work(3)",
        ],
        tmp_path,
        kernel_dirs,
        timeout_func=lambda cell: 3 if "sleep(60)" in cell.source else 60,
    )
    no_hook_errors(nb)
    assert traceback_text(nb, 1)[-1].startswith("KeyboardInterrupt")
    spans = Spans(tmp_path)
    slow = spans.session("slow")
    assert attrs(slow)["session.state"] == "indeterminate"
    assert attrs(slow)["session.end_reason"] == "interrupted"
    assert spans.tool_calls(2) == []
    (cell,) = [c for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == "2"]
    assert attrs(cell)["error.type"] == "KeyboardInterrupt"
    assert spans.in_session(spans.tool_calls(3)[0], spans.session("auto"))


def test_session_cell_resume_continues_the_session_after_a_kernel_restart(tmp_path, kernel_dirs):
    """`%%session --id X --resume` in a restarted kernel continues X: same session id, same trace, segment 2, linked."""
    cells = [
        PRELUDE + "sdk.init()\n%load_ext notebook_ext",
        "%%session analysis --id nb-conv --resume\nwork(1)",
    ]
    first = execute(cells, tmp_path, kernel_dirs)  # this kernel shuts down; a new one starts below
    second = execute([cells[0], cells[1].replace("work(1)", "work(2)")], tmp_path, kernel_dirs)
    for nb in (first, second):
        no_hook_errors(nb)
        assert "nb-conv" in html_summary(nb, 1)
    spans = Spans(tmp_path)
    segments = sorted(
        (s for s in spans.sessions() if attrs(s)["session.id"] == "nb-conv"),
        key=lambda s: int(attrs(s)["session.segment"]),
    )
    assert [int(attrs(s)["session.segment"]) for s in segments] == [1, 2]
    assert segments[0]["traceId"] == segments[1]["traceId"]
    assert [link["spanId"] for link in segments[1]["links"]] == [segments[0]["spanId"]]
    for arg, segment in ((1, segments[0]), (2, segments[1])):
        (tool,) = spans.tool_calls(arg)
        assert spans.in_session(tool, segment)
        assert tool["parentSpanId"] == segment["spanId"]


def test_session_started_in_a_cell_stays_current_in_later_cells(tmp_path, kernel_dirs):
    """A session start_session() began in a cell that awaited (its ContextVars lost) is current in later cells until ended."""
    nb = execute(
        [
            PRELUDE + "sdk.init(auto_start_session=True)\n%load_ext notebook_ext",  # 0
            "await asyncio.sleep(0)\nchat = sdk.start_session('chat', session_id='chat-1')\nawait asyncio.sleep(0)",
            "work(1)",  # 2
            "await asyncio.sleep(0)\nwork(2)",  # 3
            "%session",  # 4
            "%%session inside-chat\nwork(4)",  # 5
            "assert sdk.current_session() is chat\nsdk.end_session()",  # 6
            "work(3)",  # 7
            "%session end fail",  # 8: ends the auto session
            "%session end",  # 9
            "sdk.end_session()",  # 10
        ],
        tmp_path,
        kernel_dirs,
    )
    no_hook_errors(nb)
    for index in (9, 10):  # each of these cells starts a new auto session, and ends it: no warning
        assert "Warning" not in stream_text(nb, index)
        assert stream_text(nb, index, "stdout").startswith("sessiontrace: the auto session 'auto' had ended")
    shown = html_summary(nb, 4)
    assert shown.index("current session") < shown.index("chat-1") < shown.index("auto session")
    spans = Spans(tmp_path)
    chat = spans.session("chat")
    auto, *later = sorted(
        (s for s in spans.sessions() if s["name"] == "auto"), key=lambda s: int(s["startTimeUnixNano"])
    )
    assert len(later) == 2
    assert attrs(chat)["session.state"] == "success"  # the first end_session() ended chat, not auto
    assert attrs(auto)["session.state"] == "fail"  # %session end fail
    for arg in (1, 2):
        (tool,) = spans.tool_calls(arg)
        assert spans.in_session(tool, chat)
        assert tool["parentSpanId"] == chat["spanId"]
    inside = spans.session("inside-chat")
    assert attrs(inside)["session.parent_id"] == "chat-1"
    assert spans.in_session(spans.tool_calls(4)[0], inside)
    (after,) = spans.tool_calls(3)
    assert spans.in_session(after, auto)
    # Cells 1-9 ran while the first auto session was open (cell 9 ended it); cells 10 and 11 each
    # ran in a new one (which each of them ended).
    counts = sorted(int(attrs(c)["notebook.cell.execution_count"]) for c in spans.cells())
    assert counts == list(range(1, 12))
    for count, session in ((10, later[0]), (11, later[1])):
        (cell,) = [c for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == str(count)]
        assert spans.in_session(cell, session)


def test_example_notebook_runs(tmp_path, kernel_dirs):
    """examples/notebook.ipynb runs top to bottom on a real kernel and records what it says it records."""
    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    done = execute(nb.cells, tmp_path, kernel_dirs)
    no_hook_errors(done)
    spans = Spans(tmp_path)
    names = {s["name"] for s in spans.sessions()}
    assert {"auto", "refund-flow", "research"} <= names
    assert attrs(spans.session("refund-flow"))["session.state"] == "success"
    assert attrs(spans.session("research"))["session.state"] == "success"
    assert all(attrs(s)["session.state"] != "running" for s in spans.sessions())


# --- no kernel ---------------------------------------------------------------------------------


def run_plain_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a plain Python process (no kernel), without the developer's SESSIONTRACE_/OTEL_ settings."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))},
    )


def test_import_sdk_does_not_import_ipython(tmp_path):
    """``import sdk`` and ``sdk.init()`` in a plain Python process import no IPython."""
    child = run_plain_python(
        "import sys, sdk; sdk.init(exporter='none'); print('IPython' in sys.modules)", tmp_path
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "False\n"


GUARDED = """
import logging, os
logging.basicConfig(level=logging.ERROR, format="%(message)s")
from notebook_ext.kernel import guarded
for where, error in [("pre_run_cell", ValueError), ("pre_run_cell", ValueError),
                     ("post_run_cell", ValueError), ("pre_run_cell", TypeError)]:
    with guarded(where):
        raise error("boom")
print("continued")
os.environ["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"
try:
    with guarded("post_run_cell"):
        raise ValueError("boom")
except ValueError:
    print("re-raised")
"""


def test_a_hook_error_is_logged_once_per_place_and_kind_and_never_reaches_the_cell(tmp_path):
    """The notebook hooks' guard swallows an internal error and logs it once per place and exception type (it re-raises only under SESSIONTRACE_RAISE_INTERNAL_ERRORS=1)."""
    child = run_plain_python(GUARDED, tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["continued", "re-raised"]
    logged = [line for line in child.stderr.splitlines() if line.startswith("sessiontrace: internal error")]
    assert [line.split("(")[1].split(")")[0] for line in logged] == [
        "pre_run_cell",
        "post_run_cell",
        "pre_run_cell",
    ]


def _sdk_uses(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every way a module reaches into sdk: imports of it and attributes read from the name ``sdk``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdk":
            yield f"from {node.module} import ...", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sdk" and alias.name != "sdk":
                    yield f"import {alias.name}", node.lineno
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "sdk"
            and node.attr not in sdk.__all__
        ):
            yield f"sdk.{node.attr}", node.lineno


def test_notebook_ext_uses_only_the_public_face_of_sdk():
    """notebook_ext imports only ``sdk`` itself and uses only names in ``sdk.__all__``."""
    found = []
    for path in sorted((ROOT / "notebook_ext").glob("*.py")):
        for use, line in _sdk_uses(ast.parse(path.read_text(encoding="utf-8"))):
            found.append(f"{path.name}:{line}: {use}")
    assert found == []


def test_the_sdks_own_lines_are_normal_cell_output_not_stderr(tmp_path, kernel_dirs):
    """In a kernel, a session's summary line and the SDK's once-only warnings appear as normal output (stdout), never on stderr, which notebooks paint red."""
    nb = execute(
        [
            "import sdk\nsdk.init(service_name='calm', console_summary=True)",
            "s = sdk.start_session('calm-session')\nsdk.end_session(s)",
            "sdk.init(service_name='calm', endpoint='http://127.0.0.1:9', spool=False, export_interval=0.01,"
            " console_summary=False)\nwith sdk.session('to-nowhere'):\n    pass\nsdk.flush(10.0)",
        ],
        tmp_path,
        kernel_dirs,
    )
    no_hook_errors(nb)
    assert "session 'calm-session'" in stream_text(nb, 1, "stdout")
    assert "sessiontrace: " in stream_text(nb, 2, "stdout")  # the backend-unreachable warning
    for index in range(3):
        assert stream_text(nb, index, "stderr") == "", index
