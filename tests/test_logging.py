"""Python logging inside sessions: session and trace ids on records, and OTLP log export."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest
from opentelemetry import trace

import sdk
from sdk import logs
from sdk.logs import SessionLogFilter
from sdk.settings import load_config

RECORDS = 50
FORMAT = "%(session_id)s|%(trace_id)s|%(span_id)s|%(message)s"


class ListHandler(logging.Handler):
    """Keeps each record and its formatted line."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self._lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock_lines:
            self.lines.append(line)
            self.records.append(record)


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    """A logger at INFO that propagates to the root logger (like an application's module logger)."""
    logger = logging.getLogger("tests.logging.app")
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def collected(app_logger) -> Iterator[ListHandler]:
    """A handler on the application's logger, with no filter of its own."""
    handler = ListHandler()
    app_logger.addHandler(handler)
    yield handler
    app_logger.removeHandler(handler)


def _parse(line: str) -> tuple[str, str, str, str]:
    session_id, trace_id, span_id, message = line.split("|", 3)
    return session_id, trace_id, span_id, message


def _log_in_session(name: str, logger: logging.Logger, spans: dict[str, tuple[str, str]]) -> sdk.Session:
    """Open session `name` and log RECORDS records in it, half inside a span (recorded in `spans`)."""
    tracer = trace.get_tracer("tests.logging")
    with sdk.session(name) as session:
        for i in range(RECORDS):
            if i % 2:
                with tracer.start_as_current_span(f"{name}-work-{i}") as span:
                    context = span.get_span_context()
                    spans[f"{name}-{i}"] = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
                    logger.info("%s-%d", name, i)
            else:
                logger.info("%s-%d", name, i)
            yield_point()
    return session


def yield_point() -> None:
    """Let the other thread run (interleaves the two sessions' records)."""
    threading.Event().wait(0.0005)


def check_lines(
    lines: list[str], sessions: dict[str, sdk.Session], spans: dict[str, tuple[str, str]]
) -> None:
    """Each line carries its own session's id and trace; lines logged in a span carry that span's id."""
    assert len(lines) == RECORDS * len(sessions)
    for line in lines:
        session_id, trace_id, span_id, message = _parse(line)
        session = sessions[message.rsplit("-", 1)[0]]
        assert session_id == session.id, line
        assert trace_id == session.trace_id, line
        assert span_id == (spans[message][1] if message in spans else session.span_id), line


def test_filter_gives_records_of_two_concurrent_threads_their_own_session(captured, app_logger, collected):
    """SessionLogFilter on a handler: records logged by two threads in two sessions at once each carry their own session_id, trace_id and span_id."""
    collected.addFilter(SessionLogFilter())
    spans: dict[str, tuple[str, str]] = {}
    sessions: dict[str, sdk.Session] = {}

    def run(name: str) -> None:
        sessions[name] = _log_in_session(name, app_logger, spans)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_lines(collected.lines, sessions, spans)


async def test_filter_gives_records_of_two_concurrent_tasks_their_own_session(
    captured, app_logger, collected
):
    """The same with two asyncio tasks interleaving on one thread."""
    collected.addFilter(SessionLogFilter())
    spans: dict[str, tuple[str, str]] = {}
    tracer = trace.get_tracer("tests.logging")

    async def run(name: str) -> sdk.Session:
        async with sdk.session(name) as session:
            for i in range(RECORDS):
                if i % 2:
                    with tracer.start_as_current_span(f"{name}-work-{i}") as span:
                        context = span.get_span_context()
                        spans[f"{name}-{i}"] = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
                        app_logger.info("%s-%d", name, i)
                else:
                    app_logger.info("%s-%d", name, i)
                await asyncio.sleep(0)
        return session

    alice, bob = await asyncio.gather(run("alice"), run("bob"))
    check_lines(collected.lines, {"alice": alice, "bob": bob}, spans)


def test_log_correlation_stamps_every_record_without_a_filter_until_shutdown(app_logger, collected):
    """log_correlation=True: records of any logger carry the ids with no filter added; after shutdown() new records do not."""
    sdk.init(exporter="none", log_correlation=True)
    with sdk.session("s") as s:
        app_logger.info("inside")
    app_logger.info("outside")
    assert [_parse(line)[:2] for line in collected.lines] == [(s.id, s.trace_id), ("", "")]
    factory = logging.getLogRecordFactory()
    sdk.shutdown()
    assert logging.getLogRecordFactory() is not factory
    record = app_logger.makeRecord(app_logger.name, logging.INFO, __file__, 1, "after shutdown", None, None)
    assert not hasattr(record, "session_id")


def test_filter_outside_sessions_the_auto_session_and_a_remote_session(app_logger, collected):
    """Outside any session the fields are empty (a format using them still works); the auto session and a session carried in W3C baggage count."""
    collected.addFilter(SessionLogFilter())
    sdk.init(exporter="none")
    app_logger.info("nothing")
    with sdk.session("caller") as caller:
        headers = sdk.context.inject()
    from opentelemetry import context as otel_context

    token = otel_context.attach(sdk.context.extract(headers))
    try:
        app_logger.info("remote")
    finally:
        otel_context.detach(token)
    sdk.init(exporter="none", auto_start_session=True)
    app_logger.info("auto")
    auto = sdk.current_session()
    assert auto is not None
    got = [_parse(line) for line in collected.lines]
    assert got[0] == ("", "", "", "nothing")
    assert got[1][:2] == (caller.id, caller.trace_id)
    assert got[2] == (auto.id, auto.trace_id, auto.span_id, "auto")


def test_extra_fields_given_by_the_caller_are_kept(captured, app_logger, collected):
    """A record that already has session_id (logger.info(..., extra=...)) keeps it."""
    collected.addFilter(SessionLogFilter())
    with sdk.session("s"):
        app_logger.info("mine", extra={"session_id": "chosen-by-app"})
    assert _parse(collected.lines[0])[0] == "chosen-by-app"


def test_exported_logs_of_two_concurrent_sessions_arrive_with_their_session_and_trace(receiver, app_logger):
    """export_logs=True: every record logged in two concurrent sessions arrives at the OTLP receiver's /v1/logs with its session.id, the session's trace id and the span it was logged in."""
    sdk.init(
        service_name="tests-logs",
        endpoint=receiver.url,
        export_logs=True,
        export_interval=0.05,
        console_summary=False,
    )
    spans: dict[str, tuple[str, str]] = {}
    sessions: dict[str, sdk.Session] = {}

    def run(name: str) -> None:
        sessions[name] = _log_in_session(name, app_logger, spans)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logging.getLogger("sessiontrace").warning("the SDK's own records are not exported")
    assert receiver.wait_for_logs(2 * RECORDS)
    sdk.shutdown()
    records = receiver.logs
    assert len(records) == 2 * RECORDS
    assert {r.resource["service.name"] for r in records} == {"tests-logs"}
    for record in records:
        session = sessions[str(record.body).rsplit("-", 1)[0]]
        assert record.attributes["session.id"] == session.id, record.body
        assert record.trace_id == session.trace_id, record.body
        expected_span = spans[record.body][1] if record.body in spans else session.span_id
        assert record.span_id == expected_span, record.body
        assert record.severity_text == "INFO"
        assert record.attributes["logger.name"] == "tests.logging.app"
    assert {r.scope for r in records} == {"tests.logging.app"}


def test_logs_endpoint_follows_the_traces_endpoint_and_the_otel_variables():
    """The logs endpoint is the traces endpoint's /v1/logs; OTEL_EXPORTER_OTLP_LOGS_ENDPOINT and a base OTEL_EXPORTER_OTLP_ENDPOINT are honoured."""
    assert logs.logs_endpoint(load_config({"endpoint": "http://collector:4318/v1/traces"}, environ={})) == (
        "http://collector:4318/v1/logs"
    )
    assert logs.logs_endpoint(load_config({}, environ={})) == "http://localhost:4318/v1/logs"
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert logs.logs_endpoint(load_config({}, environ=base)) == "http://collector:4318/v1/logs"
    specific = {**base, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:9999/ingest"}
    assert logs.logs_endpoint(load_config({}, environ=specific)) == "http://logs:9999/ingest"
    # A logs endpoint from the environment does not override a traces endpoint given to init().
    overridden = load_config({"endpoint": "http://mine:4318"}, environ=specific)
    assert logs.logs_endpoint(overridden) == "http://mine:4318/v1/logs"
    assert load_config({}, environ={"OTEL_LOGS_EXPORTER": "otlp"}).export_logs is True
