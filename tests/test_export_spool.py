"""The on-disk spool: batches a backend could not take are kept, sent when it is back, never twice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from opentelemetry import trace

import sdk
from sdk.export.encode import encode_spans
from sdk.export.spool import Spool, count_spans


@pytest.fixture
def proxy(receiver) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", receiver.port)) as p:
        yield p


def spool_files(root: Path = Path(".sessiontrace")) -> list[Path]:
    return sorted((root / "spool").glob("*/*.otlp"))


def spooled_spans(root: Path = Path(".sessiontrace")) -> int:
    """Spans in the spool's batch files, counted from their content."""
    return sum(count_spans(p.read_bytes()) or 0 for p in spool_files(root))


def encoded_batch(n: int) -> bytes:
    """An OTLP request holding `n` spans (made by a provider of its own, not the SDK's)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(n):
        provider.get_tracer("tests.spool").start_span(f"e-{i}").end()
    return encode_spans(memory.get_finished_spans())


def make_spans(n: int, prefix: str = "s") -> None:
    tracer = trace.get_tracer("tests.spool")
    for i in range(n):
        with tracer.start_as_current_span(f"{prefix}-{i}"):
            pass


FAST = {"export_interval": 0.02, "export_timeout": 1.0, "spool_retry_interval": 0.05, "metrics": False}


def test_refused_batches_are_spooled_and_delivered_once_when_the_backend_returns(receiver, proxy):
    """Backend refusing: spans go to the spool (counted), nothing dropped; back up: each arrives exactly once."""
    proxy.set_mode("refuse")
    sdk.init(endpoint=proxy.url, live_sessions=False, **FAST)
    make_spans(30)
    assert sdk.flush()
    stats = sdk.stats()
    assert stats.spans_spooled == 30
    assert stats.spans_dropped == 0
    assert spooled_spans() == 30

    proxy.set_mode("forward")
    assert receiver.wait_for_spans(30)
    make_spans(5, "after")  # new spans go straight out again
    assert sdk.flush()
    assert receiver.wait_for_spans(35)
    names = [s.name for s in receiver.accepted_spans]
    assert len(names) == len(set(names)) == 35
    assert spool_files() == []
    assert sdk.stats().spans_exported == 35


@pytest.mark.parametrize("status", [503, 429, 502, 504])
def test_retryable_statuses_are_spooled_and_permanent_ones_dropped(receiver, proxy, status):
    """429/502/503/504 are retried from the spool; a 400 drops the batch and says so once."""
    proxy.set_mode("status", status, retry_after="0")
    sdk.init(endpoint=proxy.url, live_sessions=False, **FAST)
    make_spans(4)
    assert sdk.flush()
    assert sdk.stats().spans_spooled == 4
    proxy.set_mode("forward")
    assert receiver.wait_for_spans(4)
    assert len({s.span_id for s in receiver.accepted_spans}) == len(receiver.accepted_spans) == 4


def test_permanent_error_drops_and_counts(receiver, proxy, caplog):
    """A 400 from the backend is not retryable: the batch is dropped, counted, and warned about once."""
    proxy.set_mode("status", 400)
    sdk.init(endpoint=proxy.url, live_sessions=False, **FAST)
    for _ in range(3):
        make_spans(2)
        assert sdk.flush()
    stats = sdk.stats()
    assert stats.spans_dropped == 6
    assert stats.spans_spooled == 0
    assert stats.export_errors == 3
    assert spool_files() == []
    warnings = [r for r in caplog.records if "refused a batch" in r.getMessage()]
    assert len(warnings) == 1


def test_spool_cap_drops_the_excess_and_counts_it(proxy, caplog):
    """Past spool_max_bytes, batches are dropped, counted in spans_dropped and spool_dropped, warned once."""
    proxy.set_mode("refuse")
    sdk.init(endpoint=proxy.url, live_sessions=False, spool_max_bytes=4096, max_export_batch_size=10, **FAST)
    for _ in range(20):
        make_spans(10)
        assert sdk.flush()
    stats = sdk.stats()
    assert stats.spans_spooled + stats.spans_dropped == 200
    assert stats.spool_dropped == stats.spans_dropped > 0
    assert sum(p.stat().st_size for p in spool_files()) <= 4096
    assert spooled_spans() == stats.spans_spooled
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1


def test_spool_off_drops_and_writes_nothing(proxy):
    """spool=False: what the backend cannot take is dropped and counted; no spool folder is created."""
    proxy.set_mode("refuse")
    sdk.init(endpoint=proxy.url, spool=False, live_sessions=False, **FAST)
    make_spans(3)
    assert sdk.flush()
    assert sdk.stats().spans_dropped == 3
    assert not Path(".sessiontrace", "spool").exists()


def test_spool_is_left_empty_by_a_healthy_backend(receiver):
    """With a healthy backend every batch file is deleted once sent: no batch, lock or temporary file stays."""
    sdk.init(endpoint=receiver.url, **FAST)
    make_spans(3)
    assert sdk.flush()
    assert receiver.wait_for_spans(3)
    sdk.shutdown()
    leftovers = [p for p in Path(".sessiontrace", "spool").rglob("*") if p.is_file()]
    assert leftovers == []
    assert sdk.stats().spans_spooled == 0


def test_batches_spooled_by_another_process_are_sent_by_the_next(receiver, proxy):
    """A spool left in the data folder (by a process that exited with the backend down) is sent at the next init()."""
    proxy.set_mode("refuse")
    sdk.init(endpoint=proxy.url, live_sessions=False, **FAST)
    make_spans(7)
    sdk.shutdown()
    assert sdk.stats().spans_spooled == 7
    assert len(spool_files()) >= 1

    proxy.set_mode("forward")
    sdk.init(endpoint=proxy.url, **FAST)  # a new pipeline, as a new process would build
    assert receiver.wait_for_spans(7)
    assert spool_files() == []
    assert len({s.span_id for s in receiver.accepted_spans}) == 7


def test_a_claimed_file_is_not_sent_by_a_second_sender(tmp_path):
    """Claiming is an atomic rename: of two spool readers, only one gets a given batch."""
    first = Spool(tmp_path, "dest", 1 << 20)
    second = Spool(tmp_path, "dest", 1 << 20)
    payload = encoded_batch(3)
    name = first.put(payload)
    assert name is not None
    assert first.pending() == second.pending() == [name]
    claimed = first.claim(name)
    assert claimed is not None
    assert claimed.count == 3
    assert claimed.data == payload
    assert second.claim(name) is None
    assert second.pending() == []  # a live owner's claim is left alone
    first.done(claimed)
    assert os.listdir(tmp_path / "spool" / "dest") == ["owners"]
    assert os.listdir(tmp_path / "spool" / "dest" / "owners") == []  # no claim held: no lock file


def test_claims_of_a_dead_process_are_put_back(tmp_path):
    """A batch claimed by a process that died mid-send is put back for the next sender."""
    spool = Spool(tmp_path, "dest", 1 << 20)
    name = spool.put(encoded_batch(1))
    assert name is not None
    folder = tmp_path / "spool" / "dest"
    os.rename(folder / name, folder / f"{name}.claimed.999999999.deadbeef")  # no lock held: dead
    assert Spool(tmp_path, "dest", 1 << 20).pending() == [name]
