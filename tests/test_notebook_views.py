"""The notebook as the place to look, on a real kernel: timelines, ``%sessions``, linked cells, a calm init().

One kernel runs a notebook that does real work (an instrumented ``openai`` call against the
loopback LLM server, a ``@sdk.tool``, a failing step) and looks at it in every way the extension
offers; the assertions read its outputs (HTML and plain text) and its exported spans.
"""

from __future__ import annotations

import html
import re

import pytest
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer
from nbformat import NotebookNode
from test_notebook import Spans, attrs, execute, no_hook_errors, outputs, raising, stream_text

pytestmark = pytest.mark.subprocess

WORK = """\
import openai, sdk
sdk.init(auto_start_session=True, capture_content=True)
%load_ext notebook_ext
client = openai.OpenAI(base_url=os.environ["LLM_URL"], api_key="test-key", max_retries=0)

@sdk.tool
def lookup(order):
    return {"order": order, "amount": 42}

@sdk.task
def charge(order):
    raise ValueError(f"card declined for {order}")
"""

CELLS = [
    "import os\n" + WORK,  # 0
    # 1: the session under test: an LLM call, a tool, a failing step (caught)
    "%%session refund-flow --user u-42 --id refund-0001\n"
    "lookup('A-1')\n"
    "client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'refund A-1?'}])\n"
    "try:\n    charge('A-1')\nexcept ValueError:\n    pass",
    "%%session <b>bold</b><script>alert(1)</script> --id refund-0002\nlookup('<img src=x onerror=alert(1)>')",  # 2
    "%%session big --id big-1\nfor i in range(450):\n    lookup(i)",  # 3
    "%session show refund-0001",  # 4: by full id
    "%session show big",  # 5: by prefix
    raising("%session show refund"),  # 6: ambiguous
    raising("%session show nope"),  # 7: unknown
    "%sessions",  # 8
    "%sessions --user u-42 --limit 5",  # 9
    "%session show",  # 10: the current session: the auto session, running
    "sdk.end_session()",  # 11: ends the auto session
    "lookup('after')",  # 12: a new auto session starts, and says so
    "sdk.init(auto_start_session=False)",  # 13: turns the (new) auto session off
    "lookup('off')",  # 14: says once that cells belong to no session
    "lookup('off again')",  # 15: ... and only once
    "sdk.init(auto_start_session=True)",  # 16: init() as a cell's last line, as the docs write it
    # 17: scores, from the same store %sessions reads
    "sdk.score('refund-0001', 'helpful', 0.75, source='user')\n"
    "sdk.score('refund-0001', 'helpful', 1.0, source='user')\n"
    "sdk.score('refund-0001', 'topic', '<i>refunds</i>');",
    "%sessions --user u-42",  # 18
    # 19: a budget from the cell's line: the second LLM call is refused before it is sent
    "%%session capped --id capped-1 --budget-usd 0.000001\n"
    "ask = lambda: client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
    "ask()\n"
    "try:\n    ask()\nexcept sdk.BudgetExceeded as exc:\n    print('refused:', exc.limit, exc.maximum)",
    raising("%%session bad --budget-usd -1\nlookup('never')"),  # 20
    raising("%%session bad --on-exceed warn\nlookup('never')"),  # 21
]


@pytest.fixture(scope="module")
def views(tmp_path_factory, kernel_dirs) -> tuple[NotebookNode, Spans]:
    """The notebook above, run once on a real kernel with a loopback LLM server; its notebook and spans."""
    cwd = tmp_path_factory.mktemp("views")
    with LLMServer() as llm:
        nb = execute(CELLS, cwd, kernel_dirs, LLM_URL=llm.openai_url)
        nb.metadata["llm_requests"] = len(llm.requests)
    return nb, Spans(cwd)


def shown(nb: NotebookNode, index: int, mime: str = "text/html") -> str:
    (out,) = [o for o in outputs(nb, index, "display_data") if mime in o.data]
    return str(out.data[mime])


def rows_of(page: str) -> list[str]:
    """The timeline rows' HTML, in order."""
    return re.findall(r'<div class="st-grid st-row".*?</div></div>(?=<|$)', page)


def test_session_cell_timeline_shows_every_span_with_bars_tokens_cost_and_errors(views):
    """After a %%session cell: one row per span on a shared axis, tokens and cost on the LLM row, the failed step's error."""
    nb, spans = views
    no_hook_errors(nb)
    page = shown(nb, 1)
    assert page.startswith('<div class="st-tl sessiontrace-timeline"><style>')
    assert "<script" not in page
    assert "http://" not in page.split("</style>")[0]
    assert "https://" not in page.split("</style>")[0]
    session = spans.session("refund-flow")
    exported = {
        s["spanId"]: s
        for s in spans.all
        if s["traceId"] == session["traceId"] and s["name"] != "session.score"  # scored in cell 17
    }
    drawn = re.findall(r'data-span-id="([0-9a-f]{16})" data-kind="([a-z.]+)" data-status="([a-z]+)"', page)
    assert {span_id for span_id, _, _ in drawn} == set(exported)
    assert [kind for _, kind, _ in drawn] == ["session", "tool", "llm", "task"]
    assert [status for _, _, status in drawn] == ["unset", "unset", "unset", "error"]
    assert (
        len(re.findall(r'class="st-bar st-k-[a-z]+( st-failed)?" style="left:[0-9.]+%;width:[0-9.]+%"', page))
        == 4
    )
    assert f"{INPUT_TOKENS}\u2192{OUTPUT_TOKENS}" in page
    assert re.search(r'class="st-num st-cost">\$[0-9.e-]+<', page)
    assert "ValueError: card declined for A-1" in page
    assert "&lt;details" not in page
    assert page.count("<details") >= 2
    assert "refund A-1?" in html.unescape(page)  # captured input of the LLM call (capture_content=True)
    text = shown(nb, 1, "text/plain")
    assert text.startswith("sessiontrace\n  session")
    assert re.search(r"\n  refund-flow  \[session\]  \+<1ms|\n  refund-flow  \[session\]  \+0\.000 s", text)
    assert f"tokens {INPUT_TOKENS}\u2192{OUTPUT_TOKENS}" in text
    assert "! ValueError: card declined for A-1" in text


def test_everything_shown_is_escaped(views):
    """Session and span names and captured values from users are HTML-escaped in the timeline."""
    nb, _ = views
    page = shown(nb, 2)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "<b>bold</b>" not in page


def test_large_session_is_cut_and_says_how_many_are_hidden(views):
    """A session of 451 spans draws the first 300 rows and says 151 more are not shown; its biggest subtree starts folded."""
    nb, _ = views
    page = shown(nb, 3)
    assert len(rows_of(page)) == 300
    assert "151 more spans not shown" in page
    assert '<details class="st-node"><summary>' not in page  # the root stays open
    assert "... 151 more spans not shown" in shown(nb, 3, "text/plain")


def test_session_show_by_id_or_prefix_and_errors_for_unknown_or_ambiguous(views):
    """``%session show ID`` accepts a full id or a unique prefix; an ambiguous or unknown one is a one-line UsageError."""
    nb, _ = views
    by_id = shown(nb, 4)
    assert "refund-flow · refund-0001" in by_id
    assert "u-42" in by_id
    assert len(re.findall(r'data-kind="(?:session|tool|llm|task)"', by_id)) == 4
    assert "LLM cost" in by_id
    assert "big · big-1" in shown(nb, 5)
    assert stream_text(nb, 6).startswith(
        "UsageError: %session show: session id prefix 'refund' is ambiguous: 2 sessions match (refund-0001, refund-0002)"
    )
    assert (
        stream_text(nb, 7)
        == "UsageError: %session show: no session with id 'nope' (nor one starting with it)\n"
    )
    assert not outputs(nb, 6, "error")
    assert not outputs(nb, 7, "error")


def test_sessions_lists_recent_sessions_with_usage(views):
    """``%sessions`` lists recent sessions newest first (id prefix, name, user, state, start, duration, spans, LLM calls, tokens, cost)."""
    nb, _ = views
    page = shown(nb, 8)
    listed = re.findall(r'<tr data-session-id="([^"]+)">', page)
    assert listed[:3] == ["big-1", "refund-0002", "refund-0001"]
    assert listed[-1] != "refund-0001"  # the auto session (started first) is listed too
    (refund,) = re.findall(r'<tr data-session-id="refund-0001">(.*?)</tr>', page)
    cells = [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", refund)]
    assert cells[0] == "refund-0001"
    assert cells[1:4] == ["refund-flow", "u-42", "success"]
    assert cells[6:9] == ["4", "1", f"{INPUT_TOKENS + OUTPUT_TOKENS}"]
    assert cells[9].startswith("$")
    text = shown(nb, 8, "text/plain")
    assert text.splitlines()[0].split() == [
        "id", "name", "user", "state", "started", "duration", "spans", "LLM", "calls", "tokens", "cost",
        "scores",
    ]  # fmt: skip
    assert re.findall(r'<tr data-session-id="([^"]+)">', shown(nb, 9)) == ["refund-0001"]


def test_session_show_of_the_running_auto_session(views):
    """``%session show`` with no id shows the current session: here the running auto session, with its cells so far."""
    nb, _ = views
    page = shown(nb, 10)
    assert "auto · " in page
    assert "running" in page
    assert page.count('data-kind="cell"') >= 9


def test_session_cell_and_its_cell_span_link_to_each_other(views):
    """A %%session cell's session links to the cell's span in the auto session, and that span links back."""
    _, spans = views
    session = spans.session("refund-flow")
    (cell,) = [c for c in spans.cells() if attrs(c)["notebook.cell.execution_count"] == "2"]
    assert attrs(cell)["notebook.cell.session_id"] == "refund-0001"
    assert [(link["traceId"], link["spanId"]) for link in cell["links"]] == [
        (session["traceId"], session["spanId"])
    ]
    assert [(link["traceId"], link["spanId"]) for link in session["links"]] == [
        (cell["traceId"], cell["spanId"])
    ]
    assert attrs(session["links"][0])["sessiontrace.link"] == "notebook.cell"
    assert attrs(cell["links"][0])["sessiontrace.link"] == "session"


def test_after_the_auto_session_ends_the_next_cell_starts_a_new_one_or_says_why_not(views):
    """After sdk.end_session() the next cell starts a new auto session and says so; with auto sessions off it says once that cells have none."""
    nb, spans = views
    first, second, _third = sorted(
        (s for s in spans.sessions() if attrs(s).get("session.auto")),
        key=lambda s: int(s["startTimeUnixNano"]),
    )  # the third: init(auto_start_session=True) in the last cell
    assert attrs(first)["session.state"] == "success"
    said = stream_text(nb, 12, "stdout")
    assert said == (
        f"sessiontrace: the auto session 'auto' had ended; this cell starts a new one ({attrs(second)['session.id']}).\n"
    )
    (after,) = [s for s in spans.named("execute_tool lookup") if s["traceId"] == second["traceId"]]
    assert attrs(after)["session.id"] == attrs(second)["session.id"]
    assert attrs(second)["session.end_reason"] == "auto session turned off by init()"
    assert "auto_start_session is off" in stream_text(nb, 14, "stdout")
    assert stream_text(nb, 15, "stdout") == ""  # once
    for index in (11, 12, 13, 14, 15):  # said as normal output, not on stderr (notebooks paint it red)
        assert "had ended" not in stream_text(nb, index)
        assert "auto_start_session is off" not in stream_text(nb, index)


def test_init_as_the_last_line_of_a_cell_displays_little(views):
    """``sdk.init(auto_start_session=True)`` as a cell's last line, as the docs write it, shows at most one short line."""
    nb, _ = views
    shown_text = "".join(str(o.data.get("text/plain", "")) for o in outputs(nb, 16, "execute_result"))
    assert len(shown_text) <= 200, shown_text


def test_sessions_shows_the_scores_given(views):
    """``%sessions`` has a scores column: the latest value of each score name, escaped."""
    nb, _ = views
    page = shown(nb, 18)
    (refund,) = re.findall(r'<tr data-session-id="refund-0001">(.*?)</tr>', page)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", refund)
    assert html.unescape(cells[10]) == "helpful=1.0, topic=<i>refunds</i>"
    assert "<i>" not in page
    text = shown(nb, 18, "text/plain")
    assert text.splitlines()[0].split()[-1] == "scores"
    assert "helpful=1.0, topic=<i>refunds</i>" in text


def test_a_budget_on_the_session_cell_refuses_the_call_over_it_before_it_is_sent(views):
    """``%%session --budget-usd`` gives the cell's session a budget: after one call over it, the next
    raises BudgetExceeded before the request leaves (one LLM span, one request fewer at the server);
    bad budget flags are a UsageError and run nothing."""
    nb, spans = views
    assert stream_text(nb, 19, "stdout") == "refused: max_cost_usd 1e-06\n"
    capped = spans.session("capped")
    assert "session.budget.exceeded" in attrs(capped)
    llm_spans = [s for s in spans.all if s["name"].startswith("chat ")]
    assert [attrs(s)["session.id"] for s in llm_spans].count("capped-1") == 1
    assert nb.metadata["llm_requests"] == len(llm_spans)  # the refused call never reached the server
    assert stream_text(nb, 20).startswith("UsageError: %%session: Budget max_cost_usd must be a number >= 0")
    assert stream_text(nb, 21) == (
        "UsageError: %%session: --on-exceed needs a limit (--budget-usd, --budget-tokens, ...)\n"
    )
    assert [s["name"] for s in spans.sessions() if s["name"] == "bad"] == []  # no session, no body ran
