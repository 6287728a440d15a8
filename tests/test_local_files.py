"""Files the SDK keeps on disk: private (0700/0600), repaired after torn writes, and never trusted when
something else put them there (hostile spool entries)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from opentelemetry import trace
from test_export_spool import encoded_batch

import sdk
from sdk.export.otlp import traces_endpoint
from sdk.export.spool import Spool
from sdk.settings import load_config

DATA = Path(".sessiontrace")
FAST = {"export_interval": 0.02, "export_timeout": 1.0, "spool_retry_interval": 0.05, "metrics": False}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever the SDK creates gets exactly the mode it asks for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path = DATA) -> dict[str, int]:
    """Every folder and file under `root` (and root itself) with its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path = DATA) -> None:
    wrong = {
        name: oct(mode)
        for name, mode in modes(root).items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert wrong == {}


def work(name: str = "w", spans: int = 3) -> None:
    tracer = trace.get_tracer("tests.local")
    with sdk.session(name):
        for i in range(spans):
            with tracer.start_as_current_span(f"{name}-{i}"):
                pass


def spool_key(endpoint_url: str) -> str:
    """The spool folder name of an OTLP/HTTP destination (as the SDK names it)."""
    return traces_endpoint(load_config({"endpoint": endpoint_url})).key


# -- permissions ------------------------------------------------------------------------------


def test_files_and_folders_are_private_after_a_run(open_umask):
    """With umask 0: the data folder and its folders are 0700, the traces, store and .gitignore 0600."""
    sdk.init(export_interval=0.02, console_summary=False)
    work()
    assert sdk.flush()
    sdk.shutdown()
    assert {"traces", "sessions.db", ".gitignore"} <= set(modes())
    assert_private()


def test_spool_files_and_locks_are_private_and_gone_after_the_resend(open_umask, receiver):
    """With umask 0: spool batches, their folders and the owner lock are private; once re-sent no file stays."""
    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        proxy.set_mode("refuse")
        sdk.init(endpoint=proxy.url, live_sessions=False, session_store="none", **FAST)
        work(spans=20)
        assert sdk.flush()
        batches = [p for p in (DATA / "spool").glob("*/*") if ".otlp" in p.name]  # waiting or being re-sent
        assert batches
        assert_private()
        proxy.set_mode("forward")
        assert receiver.wait_for_spans(21)
        sdk.shutdown()
    assert [p for p in (DATA / "spool").rglob("*") if p.is_file()] == []  # no batch, lock or temp file
    assert_private()


def test_store_and_its_journal_stay_private_across_a_reopen(open_umask):
    """With umask 0: sessions.db is 0600 after a re-open, and SQLite gives its journal the same mode."""
    sdk.init(exporter="none")
    work("first")
    sdk.shutdown()
    sdk.init(exporter="none")
    work("second")
    assert sdk.flush()
    sdk.shutdown()
    assert_private()
    db = sqlite3.connect(DATA / "sessions.db", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM sessions")  # the rollback journal exists while this transaction is open
        journal = DATA / "sessions.db-journal"
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        db.execute("ROLLBACK")
    finally:
        db.close()
    assert_private()


def test_existing_folders_and_files_with_wider_modes_are_narrowed(open_umask):
    """A data folder, traces folder and store made world-readable beforehand are narrowed to 0700/0600 on use."""
    (DATA / "traces").mkdir(parents=True, mode=0o755)
    DATA.chmod(0o755)
    (DATA / "sessions.db").touch(mode=0o644)
    sdk.init(export_interval=0.02, console_summary=False)
    work()
    assert sdk.flush()
    sdk.shutdown()
    assert_private()


# -- hostile spool entries --------------------------------------------------------------------


def leave_spooled_spans(proxy: FaultProxy, count: int) -> Path:
    """A process (this one) that exits with `count` spans in the spool; returns the spool folder."""
    proxy.set_mode("refuse")
    sdk.init(endpoint=proxy.url, live_sessions=False, session_store="none", **FAST)
    tracer = trace.get_tracer("tests.local")
    for i in range(count):
        with tracer.start_as_current_span(f"real-{i}"):
            pass
    assert sdk.flush()
    sdk.shutdown()
    (folder,) = (DATA / "spool").iterdir()
    assert sdk.stats().spans_spooled == count
    return folder


def test_a_spool_file_name_claiming_billions_of_spans_changes_nothing(receiver):
    """A 100-byte file named as holding 99,999,999,999 spans is refused by content; the 20 real spans arrive."""
    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        folder = leave_spooled_spans(proxy, 20)
        (folder / "00000000000000000001-deadbeefcafe-1-000001.99999999999.otlp").write_bytes(os.urandom(100))
        proxy.set_mode("forward")
        sdk.init(endpoint=proxy.url, live_sessions=False, session_store="none", **FAST)
        assert receiver.wait_for_spans(20)
        assert sdk.flush()
    stats = sdk.stats()
    assert sorted(s.name for s in receiver.accepted_spans) == sorted(f"real-{i}" for i in range(20))
    assert stats.spool_rejected == 1
    assert stats.spans_dropped == 0
    assert stats.spans_exported == 20
    assert list(folder.glob("*.otlp")) == []


def test_a_symlink_in_the_spool_is_refused_and_never_followed(receiver, tmp_path):
    """A spool entry that is a symlink is removed unread: its target (a valid batch) is never sent nor touched."""
    target = tmp_path / "outside-secret.bin"
    batch = encoded_batch(3)
    target.write_bytes(batch)
    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        folder = leave_spooled_spans(proxy, 2)
        link = folder / "00000000000000000002-deadbeefcafe-1-000002.otlp"
        link.symlink_to(target)
        proxy.set_mode("forward")
        sdk.init(endpoint=proxy.url, live_sessions=False, session_store="none", **FAST)
        assert receiver.wait_for_spans(2)
        assert sdk.flush()
    assert sorted(s.name for s in receiver.accepted_spans) == ["real-0", "real-1"]
    assert not [s for s in receiver.spans if s.name.startswith("e-")]  # the target's spans
    assert not link.is_symlink()
    assert target.read_bytes() == batch
    assert sdk.stats().spool_rejected == 1


def test_non_regular_spool_entries_are_refused_without_blocking(receiver):
    """A FIFO (which would block a plain open) and a folder named like batches are refused and counted."""
    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        folder = leave_spooled_spans(proxy, 2)
        os.mkfifo(folder / "00000000000000000003-deadbeefcafe-1-000003.otlp")
        (folder / "00000000000000000004-deadbeefcafe-1-000004.otlp").mkdir()
        proxy.set_mode("forward")
        sdk.init(endpoint=proxy.url, live_sessions=False, session_store="none", **FAST)
        assert receiver.wait_for_spans(2)
        assert sdk.flush()
    assert sorted(s.name for s in receiver.accepted_spans) == ["real-0", "real-1"]
    assert sdk.stats().spool_rejected == 2
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == [
        "owners"
    ]  # the folder: set aside


# -- torn writes ------------------------------------------------------------------------------


def test_torn_writes_in_each_folder_are_repaired_at_start(receiver):
    """A truncated last line and an empty file in traces/, an empty and a half-written batch and a dead lock in the
    spool: repaired or removed when the destinations start, counted; the whole data is kept and sent."""
    traces = DATA / "traces"
    sdk.init(export_interval=0.02, console_summary=False, session_store="none")
    work("before")
    assert sdk.flush()
    sdk.shutdown()
    (written,) = traces.glob("*.jsonl")
    whole = written.read_bytes()
    written.write_bytes(
        whole + b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"ab'
    )  # killed mid-line
    (traces / "20000101T000000-1-000001.jsonl").touch()  # killed right after creating it

    spool = Spool(DATA, spool_key(receiver.url), 1 << 20)
    name = spool.put(encoded_batch(4))
    assert name is not None
    (spool.folder / "00000000000000000001-deadbeefcafe-1-000001.otlp").touch()  # an empty batch
    (spool.folder / f".{name}.tmp").write_bytes(encoded_batch(4)[:-7])  # a writer killed mid-write
    owners = spool.folder / "owners"
    owners.mkdir(exist_ok=True)
    (owners / "999999.deadbeefcafe.lock").touch()  # a lock its killed owner never removed

    sdk.init(
        endpoint=receiver.url, exporter=["otlp", "file"], live_sessions=False, session_store="none",
        console_summary=False, **FAST,
    )  # fmt: skip
    assert receiver.wait_for_spans(4)
    assert sdk.flush()
    sdk.shutdown()

    assert written.read_bytes() == whole
    assert not (traces / "20000101T000000-1-000001.jsonl").exists()
    assert [p.name for p in spool.folder.iterdir() if p.is_file()] == []
    assert list(owners.iterdir()) == []
    assert sdk.stats().torn_writes_recovered == 4  # torn line, empty traces file, empty batch, temp file
    assert sorted(s.name for s in receiver.accepted_spans) == [f"e-{i}" for i in range(4)]


DISK_FULL = """
import json, os, resource, signal
import sdk
from opentelemetry import trace

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = 24 * 1024
sdk.init(export_interval=60, max_export_batch_size=40, console_summary=False, session_store="none",
         live_sessions=False)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # every file: as if the disk were full there
tracer = trace.get_tracer("full")
for i in range(600):
    with tracer.start_as_current_span("s", attributes={"i": i, "pad": "x" * (50 + 7 * (i % 40))}):
        pass
    if i % 40 == 39:
        sdk.flush()
sdk.flush()
print(json.dumps(sdk.stats()._asdict()))
"""


@pytest.mark.subprocess
def test_a_full_disk_never_leaves_a_partial_line_or_an_empty_file(tmp_path):
    """Writes failing part-way (RLIMIT_FSIZE, as on a full disk): every traces file holds whole lines, none is empty."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DISK_FULL)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    files = list((tmp_path / ".sessiontrace" / "traces").glob("*.jsonl"))
    assert files
    lines = 0
    for path in files:
        data = path.read_bytes()
        assert data, path.name
        assert data.endswith(b"\n"), path.name
        for line in data.splitlines():
            json.loads(line)
            lines += 1
    assert stats["spans_dropped"] > 0  # some batches did not fit anywhere: counted
    assert stats["spans_exported"] + stats["spans_dropped"] == stats["spans_ended"] == 600
    assert lines * 40 >= stats["spans_exported"]
