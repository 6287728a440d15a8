"""`sessions list|show|end` on stores with known content (built with the store API): text tables and JSON."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis_server import free_port, requires_redis_server

import sdk
from sdk.cli import format_cost, format_duration, format_time, main, parse_since
from sdk.store import Score, Segment, SessionRecord, SessionStore, Usage, open_store, owner_id
from sdk.store.redis import RedisStore

HOST = socket.gethostname()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `sessiontrace sessions ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(["sessions", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def rows(table: str) -> list[list[str]]:
    """A text table's lines split into cells (cells are two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.strip().splitlines()]


def labelled(text: str, label: str) -> str:
    """The value of a `label  value` line in `show`'s text."""
    for cells in rows(text):
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"no {label!r} line in:\n{text}")


def dead_owner() -> str:
    """``host:pid`` of a process on this host that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return f"{HOST}:{child.stdout.strip()}"


def seg(span: str, number: int, started: float, active: float, **fields: object) -> Segment:
    values: dict[str, object] = {"owner": "other-host:1"}
    values.update(fields)
    return Segment(span, number, started=started, last_activity=active, **values)


def known_records(now: float) -> list[SessionRecord]:
    """Four sessions: two segments (resumed) and running, ended fail, ended success long ago, running with a dead owner."""
    return [
        SessionRecord(
            "chat-7f3a",
            "refund-flow",
            "0af7651916cd43dd8448eb211c80319c",
            "u-42",
            ("prod", "eu"),
            (
                seg(
                    "b7ad6b7169203331",
                    1,
                    now - 600,
                    now - 500,
                    state="fail",
                    reason="worker lost",
                    ended=now - 500,
                    usage=Usage(10, 2, 1000, 200, 0.012, 1),
                ),
                seg(
                    "00f067aa0ba902b7",
                    2,
                    now - 300,
                    now - 60,
                    owner=owner_id(),
                    usage=Usage(5, 1, 30, 4, 0.0003, 0),
                ),
            ),
        ),
        SessionRecord(
            "job-1",
            "nightly",
            "1" * 32,
            "u-7",
            ("batch",),
            (
                seg(
                    "1" * 16,
                    1,
                    now - 200,
                    now - 80,
                    state="fail",
                    reason="ValueError: bad",
                    ended=now - 80,
                    usage=Usage(3),
                ),
            ),
            (
                Score("thumbs", 1, at=now - 70),
                Score("quality", 0.8, "reads well", "eval", now - 60),
                Score("thumbs", 0, "changed my mind", at=now - 50),
            ),
        ),
        SessionRecord(
            "old-1",
            "report",
            "2" * 32,
            "u-42",
            ("prod",),
            (seg("2" * 16, 1, now - 7 * 3600, now - 6 * 3600, state="success", ended=now - 6 * 3600),),
        ),
        SessionRecord(
            "orphan-1",
            "agent",
            "3" * 32,
            None,
            (),
            (seg("3" * 16, 1, now - 100, now - 30, owner=dead_owner()),),
        ),
    ]


def fill(store: SessionStore) -> dict[str, SessionRecord]:
    records = {}
    for record in known_records(time.time()):
        records[record.id] = store.begin_segment(record, resume=False)
    store.close()
    return records


@pytest.fixture
def records(tmp_path) -> dict[str, SessionRecord]:
    """The known sessions in the default store: the SQLite file in ./.sessiontrace (the test's working folder)."""
    store = open_store("sqlite", tmp_path / ".sessiontrace", 24 * 3600.0)
    assert store is not None
    return fill(store)


def stored(tmp_path: Path, session_id: str) -> SessionRecord:
    store = open_store("sqlite", tmp_path / ".sessiontrace", 24 * 3600.0)
    assert store is not None
    record = store.get(session_id)
    store.close()
    assert record is not None
    return record


# -- list ------------------------------------------------------------------------------------------


def test_list_table(capsys, records):
    """`list` prints a table of every session, most recently active first, with its user, and duration, spans, tokens and cost summed over segments."""
    code, out, err = cli(capsys, "list")
    assert code == 0, err
    header, *body = rows(out)
    assert header == [
        "ID",
        "NAME",
        "USER",
        "STATE",
        "STARTED",
        "DURATION",
        "SPANS",
        "TOKENS",
        "COST",
        "SCORES",
    ]
    assert [r[0] for r in body] == ["orphan-1", "chat-7f3a", "job-1", "old-1"]
    by_id = {r[0]: r for r in body}
    assert by_id["chat-7f3a"] == [
        "chat-7f3a",
        "refund-flow",
        "u-42",
        "running",
        format_time(records["chat-7f3a"].started),
        "9m 00s",  # first start to the last activity of the running segment
        "15",
        "1,234",
        "$0.0123",
        "-",
    ]
    assert by_id["job-1"][3:] == [
        "fail",
        format_time(records["job-1"].started),
        "2m 00s",
        "3",
        "0",
        "$0.0000",
        "thumbs=0, quality=0.8",  # the latest value of each score
    ]
    assert by_id["old-1"][3] == "success"
    assert by_id["orphan-1"][3] == "running (stale)", "its process on this host is gone"
    assert err == ""


def test_list_json(capsys, records):
    """`list --json` prints the stored records with their totals, in the same order."""
    code, out, _ = cli(capsys, "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [s["id"] for s in listed] == ["orphan-1", "chat-7f3a", "job-1", "old-1"]
    chat = listed[1]
    assert SessionRecord.from_json(chat) == records["chat-7f3a"]
    assert chat["state"] == "running"
    assert chat["duration"] == pytest.approx(540.0)
    assert chat["tokens"] == 1234
    assert chat["usage"] == {
        "spans": 15,
        "llm_calls": 3,
        "input_tokens": 1030,
        "output_tokens": 204,
        "cost_usd": 0.0123,
        "errors": 1,
    }
    assert chat["started"] == records["chat-7f3a"].started
    assert chat["ended"] is None
    assert chat["stale"] is False
    assert listed[0]["stale"] is True
    assert listed[2]["reason"] == "ValueError: bad"


def ids_of(capsys, *args: str) -> list[str]:
    code, out, err = cli(capsys, "list", "--json", *args)
    assert code == 0, err
    return [s["id"] for s in json.loads(out)]


def test_list_filters(capsys, records, monkeypatch):
    """`list` filters by --state, --user, --tag (all of several), --since (durations and ISO dates), --stale and --limit."""
    assert ids_of(capsys, "--state", "running") == ["orphan-1", "chat-7f3a"]
    assert ids_of(capsys, "--state", "fail") == ["job-1"]
    assert ids_of(capsys, "--user", "u-42") == ["chat-7f3a", "old-1"]
    assert ids_of(capsys, "--tag", "prod") == ["chat-7f3a", "old-1"]
    assert ids_of(capsys, "--tag", "prod", "--tag", "eu") == ["chat-7f3a"]
    assert ids_of(capsys, "--since", "1h") == ["orphan-1", "chat-7f3a", "job-1"]
    assert ids_of(capsys, "--since", "70s") == ["orphan-1", "chat-7f3a"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2 * 3600))
    assert ids_of(capsys, "--since", iso) == ["orphan-1", "chat-7f3a", "job-1"]
    assert ids_of(capsys, "--user", "u-42", "--state", "success") == ["old-1"]
    assert ids_of(capsys, "--stale") == ["orphan-1"]
    monkeypatch.setenv("SESSIONTRACE_SESSION_STALE_AFTER", "45")
    assert ids_of(capsys, "--stale") == ["orphan-1", "chat-7f3a"], (
        "silent for longer than session_stale_after"
    )

    code, out, err = cli(capsys, "list", "--limit", "2")
    assert code == 0
    assert [r[0] for r in rows(out)[1:]] == ["orphan-1", "chat-7f3a"]
    assert "more match" in err
    assert ids_of(capsys, "--limit", "0") == ["orphan-1", "chat-7f3a", "job-1", "old-1"]
    code, out, _ = cli(capsys, "list", "--user", "nobody")
    assert (code, out.strip()) == (
        0,
        f"no sessions found (store: sqlite:{Path('.sessiontrace') / 'sessions.db'})",
    )


# -- show ------------------------------------------------------------------------------------------


def test_show_text(capsys, records):
    """`show ID` prints the session's fields and a row per segment (number, span id, owner, state, started, duration, counters)."""
    code, out, err = cli(capsys, "show", "chat-7f3a")
    assert code == 0, err
    assert out.startswith("session chat-7f3a\n")
    assert labelled(out, "name") == "refund-flow"
    assert labelled(out, "state") == "running"
    assert labelled(out, "user") == "u-42"
    assert labelled(out, "tags") == "prod, eu"
    assert labelled(out, "trace id") == "0af7651916cd43dd8448eb211c80319c"
    assert labelled(out, "started") == format_time(records["chat-7f3a"].started)
    assert labelled(out, "ended") == "-"
    assert labelled(out, "duration") == "9m 00s"
    assert labelled(out, "tokens") == "1,234 (input 1,030, output 204)"
    assert labelled(out, "cost") == "$0.0123"
    table = out.split("segments (2):\n")[1].split("\n\n")[0]
    header, first, second = rows(table)
    assert header == [
        "#",
        "SPAN ID",
        "OWNER",
        "STATE",
        "STARTED",
        "DURATION",
        "SPANS",
        "TOKENS",
        "COST",
        "REASON",
    ]
    assert first == [
        "1",
        "b7ad6b7169203331",
        "other-host:1",
        "fail",
        format_time(records["chat-7f3a"].started),
        "1m 40s",
        "10",
        "1,200",
        "$0.0120",
        "worker lost",
    ]
    assert second == [
        "2",
        "00f067aa0ba902b7",
        owner_id(),
        "running",
        format_time(records["chat-7f3a"].segments[1].started),
        "4m 00s",
        "5",
        "34",
        "$0.0003",
    ]
    assert "spans: no local traces" in out


def test_show_lists_the_scores_given(capsys, records):
    """`show ID` lists every score given to the session (name, value, source, when, comment); a session without scores has no such section."""
    code, out, err = cli(capsys, "show", "job-1")
    assert code == 0, err
    table = out.split("scores (3):\n")[1].split("\n\n")[0]
    header, *body = rows(table)
    assert header == ["NAME", "VALUE", "SOURCE", "GIVEN", "COMMENT"]
    given = records["job-1"].scores
    assert body == [
        ["thumbs", "1", "human", format_time(given[0].at)],
        ["quality", "0.8", "eval", format_time(given[1].at), "reads well"],
        ["thumbs", "0", "human", format_time(given[2].at), "changed my mind"],
    ]
    code, out, _ = cli(capsys, "show", "chat-7f3a")
    assert "scores" not in out


def test_show_json(capsys, records):
    """`show ID --json` prints the record (segments included) and no span tree when there are no local traces."""
    code, out, _ = cli(capsys, "show", "job-1", "--json")
    assert code == 0
    shown = json.loads(out)
    assert SessionRecord.from_json(shown["session"]) == records["job-1"]
    assert shown["session"]["state"] == "fail"
    assert shown["session"]["segments"][0]["reason"] == "ValueError: bad"
    assert shown["spans"] is None


def test_show_unknown_id(capsys, records):
    """`show` and `end` of an unknown id exit 1 with one line naming the id and the store."""
    for action in (["show", "nope"], ["end", "nope"]):
        code, out, err = cli(capsys, *action)
        assert code == 1
        assert out == ""
        assert err.strip().splitlines() == [
            f"sessiontrace sessions: no session 'nope' (nor one whose id starts with it) in the session store "
            f"(sqlite:{Path('.sessiontrace') / 'sessions.db'})"
        ]


def test_show_and_end_accept_a_unique_id_prefix(capsys, tmp_path, records):
    """`show` and `end` take a unique prefix of a session id, as git takes commit ids; an exact id wins over longer ones."""
    code, out, err = cli(capsys, "show", "chat-7")
    assert code == 0, err
    assert out.startswith("session chat-7f3a\n")
    code, out, err = cli(capsys, "end", "job", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["id"] == "job-1"
    store = open_store("sqlite", tmp_path / ".sessiontrace", None)
    assert store is not None
    store.begin_segment(known_records(time.time())[2]._replace(id="old"), resume=False)
    store.close()
    code, out, err = cli(capsys, "show", "old", "--json")
    assert code == 0, err
    assert json.loads(out)["session"]["id"] == "old"  # not ambiguous with old-1: the exact id


def test_ambiguous_id_prefix_lists_the_candidates(capsys, records):
    """An id prefix that several sessions share exits 1 with a message and a table of the candidates on stderr."""
    code, out, err = cli(capsys, "show", "o")
    assert code == 1
    assert out == ""
    first, *table = err.strip().splitlines()
    assert first == (
        "sessiontrace sessions: session id prefix 'o' is ambiguous: 2 sessions match; give more characters:"
    )
    assert rows("\n".join(table))[0] == ["ID", "NAME", "USER", "STATE", "STARTED"]
    assert [r[:4] for r in rows("\n".join(table))[1:]] == [
        ["old-1", "report", "u-42", "success"],
        ["orphan-1", "agent", "-", "running"],
    ]


def test_show_span_tree_from_local_traces(capsys, tmp_path):
    """A session recorded by the SDK (default store and file exporter): `show` prints its span tree from the local traces, with durations."""
    sdk.init(service_name="cli-test", console_summary=False)
    from opentelemetry import trace

    tracer = trace.get_tracer("tests.cli")
    with sdk.session("refund", user_id="u-1") as session:
        with tracer.start_as_current_span("plan"):
            with tracer.start_as_current_span("llm.call"):
                pass
        with tracer.start_as_current_span("answer"):
            pass
    with sdk.session("unrelated"):
        with tracer.start_as_current_span("elsewhere"):
            pass
    sdk.shutdown()

    code, out, err = cli(capsys, "show", session.id)
    assert code == 0, err
    tree = out.split("spans (from ")[1].splitlines()[1:]
    names = [re.match(r"\s*\S+", line).group() for line in tree]
    assert names == ["  refund", "    plan", "      llm.call", "    answer"]
    assert tree[0].endswith("(segment 1)")
    durations = [re.split(r"\s{2,}", line.strip())[1] for line in tree]
    assert all(re.fullmatch(r"<1ms|\d+ms|\d+\.\d\ds", d) for d in durations), tree

    code, out, _ = cli(capsys, "show", session.id, "--json")
    [root] = json.loads(out)["spans"]
    assert root["name"] == "refund"
    assert [c["name"] for c in root["children"]] == ["plan", "answer"]
    assert [c["name"] for c in root["children"][0]["children"]] == ["llm.call"]
    assert root["duration"] >= root["children"][0]["duration"] >= 0
    assert root["parent_span_id"] is None


# -- end -------------------------------------------------------------------------------------------


def test_end_one_session(capsys, tmp_path, records):
    """`end ID` marks the latest segment ended (indeterminate, 'ended by CLI'); --state and --reason choose; a second end changes nothing."""
    code, out, err = cli(capsys, "end", "chat-7f3a")
    assert code == 0, err
    assert out == "ended: chat-7f3a indeterminate (ended by CLI)\n"
    after = stored(tmp_path, "chat-7f3a")
    assert (after.state, after.reason) == ("indeterminate", "ended by CLI")
    assert after.ended == records["chat-7f3a"].latest.last_activity, "ended at its last sign of life"
    assert after.segments[0] == records["chat-7f3a"].segments[0], "earlier segments are untouched"
    assert after.latest.usage == records["chat-7f3a"].latest.usage

    code, out, _ = cli(capsys, "end", "chat-7f3a", "--state", "fail")
    assert (code, out) == (0, "already ended: chat-7f3a indeterminate (ended by CLI)\n")
    assert stored(tmp_path, "chat-7f3a") == after

    code, out, _ = cli(capsys, "end", "orphan-1", "--state", "fail", "--reason", "worker lost", "--json")
    assert code == 0
    [result] = json.loads(out)
    assert result == {
        "id": "orphan-1",
        "state": "fail",
        "reason": "worker lost",
        "ended": result["ended"],
        "changed": True,
    }
    assert stored(tmp_path, "orphan-1").state == "fail"


def test_end_stale_sessions(capsys, tmp_path, records):
    """`end --stale` ends every stale session and only those."""
    code, out, err = cli(capsys, "end", "--stale")
    assert code == 0, err
    assert out == "ended: orphan-1 indeterminate (ended by CLI)\n"
    assert stored(tmp_path, "orphan-1").state == "indeterminate"
    assert stored(tmp_path, "chat-7f3a").state == "running"
    code, out, _ = cli(capsys, "end", "--stale")
    assert (code, out) == (0, "no stale sessions\n")
    code, out, _ = cli(capsys, "end", "--stale", "--json")
    assert json.loads(out) == []


# -- errors and stores -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required"),
        (["end"], "give a session ID or --stale"),
        (["end", "x", "--stale"], "give a session ID or --stale"),
        (["end", "x", "--state", "running"], "invalid choice"),
        (["list", "--state", "done"], "invalid choice"),
        (["list", "--since", "yesterday"], "expected a duration like 30m"),
        (["list", "--limit", "-1"], "expected a whole number"),
        (["list", "--stale", "--state", "fail"], "--stale lists running sessions only"),
        (["list", "--store", "mysql://x"], "--store 'mysql://x'"),
        (["show"], "required: ID"),
    ],
)
def test_usage_errors_exit_2(capsys, args, message):
    """Bad arguments exit 2 with a message saying what is wrong, and no traceback."""
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("spec", ["none", "memory"])
def test_stores_the_cli_cannot_read(capsys, monkeypatch, spec):
    """With session_store none or memory there is nothing to read from here: exit 2, saying why."""
    monkeypatch.setenv("SESSIONTRACE_SESSION_STORE", spec)
    code, _, err = cli(capsys, "list")
    assert code == 2
    assert f"session_store is {spec}" in err


def test_bad_setting_exits_2(capsys, monkeypatch):
    """An invalid session_store in the environment is reported as doctor reports config errors: exit 2, naming the variable."""
    monkeypatch.setenv("SESSIONTRACE_SESSION_STORE", "ftp://x")
    code, _, err = cli(capsys, "list")
    assert code == 2
    assert "SESSIONTRACE_SESSION_STORE" in err


def test_empty_folder_lists_nothing_and_creates_nothing(capsys, tmp_path):
    """With no store file yet, `list` finds nothing (text and JSON) and creates neither the data folder nor the file."""
    code, out, _ = cli(capsys, "list")
    assert (code, out.startswith("no sessions found")) == (0, True)
    code, out, _ = cli(capsys, "list", "--json")
    assert (code, json.loads(out)) == (0, [])
    assert cli(capsys, "show", "x")[0] == 1
    assert not (tmp_path / ".sessiontrace").exists()


def test_store_option_and_setting_choose_the_store(capsys, tmp_path, monkeypatch):
    """--store sqlite:PATH, or the session_store setting, names the file read."""
    path = tmp_path / "elsewhere" / "s.db"
    store = open_store(f"sqlite:{path}", tmp_path, 3600.0)
    assert store is not None
    fill(store)
    assert len(ids_of(capsys, "--store", f"sqlite:{path}")) == 4
    assert ids_of(capsys) == []
    monkeypatch.setenv("SESSIONTRACE_SESSION_STORE", f"sqlite:{path}")
    assert len(ids_of(capsys)) == 4


@requires_redis_server
def test_redis_store(capsys, monkeypatch, own_redis_server):
    """With a Redis store (setting or --store), list, show and end work the same."""
    url = own_redis_server.url + "?prefix=cli"
    records = fill(RedisStore(url, expiry=3600.0))
    monkeypatch.setenv("SESSIONTRACE_SESSION_STORE", url)
    assert ids_of(capsys) == ["orphan-1", "chat-7f3a", "job-1", "old-1"]
    _, out, _ = cli(capsys, "show", "chat-7f3a", "--json")
    assert SessionRecord.from_json(json.loads(out)["session"]) == records["chat-7f3a"]
    assert cli(capsys, "end", "chat-7f3a", "--state", "success")[0] == 0
    after = RedisStore(url, expiry=3600.0).get("chat-7f3a")
    assert after is not None
    assert after.state == "success"
    monkeypatch.delenv("SESSIONTRACE_SESSION_STORE")
    assert ids_of(capsys, "--store", url, "--state", "success") == ["chat-7f3a", "old-1"]


def test_store_down_exits_1_in_one_line(capsys):
    """A Redis store that cannot be reached: exit 1, one line naming the store, no traceback."""
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    code, out, err = cli(capsys, "list", "--store", url)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "the session store failed" in lines[0]
    assert "Connection refused" in lines[0]
    assert "secret" not in err


# -- formatting and the real entry point -----------------------------------------------------------


def test_formats():
    """Durations, costs and --since values read as documented."""
    assert [format_duration(s) for s in (0.0001, 0.052, 1.25, 12.7, 185, 7380, 273600)] == [
        "<1ms",
        "52ms",
        "1.25s",
        "12s",
        "3m 05s",
        "2h 03m",
        "3d 04h",
    ]
    assert format_duration(None) == "-"
    assert format_cost(0.01234) == "$0.0123"
    assert parse_since("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_since("2d", now=1e6) == 1e6 - 2 * 86400
    assert parse_since("2025-01-31T00:00:00Z") == 1738281600.0


@pytest.mark.subprocess
def test_python_m_sdk_sessions(tmp_path, records):
    """`python -m sdk sessions list` in a child process reads the store of its working folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "sdk", "sessions", "list", "--state", "fail"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in rows(result.stdout)] == ["ID", "job-1"]
