"""OTLP metrics through the OpenTelemetry metrics SDK: one MeterProvider per process, swapped exporter.

OpenTelemetry lets a process set its global MeterProvider once, and a MeterProvider's readers are
fixed when it is built. So the SDK builds one MeterProvider with one reader, `_SwappableReader`,
behind the global provider it set at init() when no other provider was set (instruments of other
libraries, such as the GenAI metrics of the LLM instrumentation, then go through it too; see
`sdk/export/meters.py`, which also builds this module's pipeline off the program's thread), and on
every `init()` only changes where that reader sends (endpoint, protocol, headers, TLS) and how
often (`metric_export_interval`). Instruments are created once and keep counting across re-init.

Metric names and units (OpenTelemetry conventions; `{session}`-style units are annotations):

| name | instrument | unit | attributes |
|---|---|---|---|
| `sessiontrace.sessions.started` | counter | `{session}` | |
| `sessiontrace.sessions.ended` | counter | `{session}` | `session.state` |
| `sessiontrace.sessions.open` | up-down counter | `{session}` | |
| `sessiontrace.session.duration` | histogram | `s` | `session.state` |
| `sessiontrace.session.score` | histogram | `1` | `session.score.name`, `session.score.source` |
| `sessiontrace.spans.exported` | counter | `{span}` | |
| `sessiontrace.spans.dropped` | counter | `{span}` | |
| `sessiontrace.spans.spooled` | counter | `{span}` | |
| `sessiontrace.export.errors` | counter | `{error}` | |
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, MetricsTimeoutError
from opentelemetry.sdk.metrics.export import MetricReader, MetricsData, ResourceMetrics
from opentelemetry.sdk.resources import Resource

from sdk.guard import internal_error, warn_once
from sdk.otel_internals import suppressed_context
from sdk.semconv import METER_NAME
from sdk.state import STATE
from sdk.version import __version__

if TYPE_CHECKING:
    from sdk.export.meters import SessionRecorder
    from sdk.export.otlp import Endpoint, Sender

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class _SwappableReader(MetricReader):
    """A pull reader whose destination and interval change on re-init; its own thread collects."""

    def __init__(self) -> None:
        super().__init__()
        self.endpoint: Endpoint | None = None
        self.resource: Resource | None = None
        self.interval = 60.0
        self._sender: Sender | None = None
        self._sender_for: Endpoint | None = None
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def configure(self, endpoint: Endpoint | None, resource: Resource | None, interval: float) -> None:
        """Send to `endpoint` (None: stop exporting) every `interval` seconds from now on."""
        self.endpoint = endpoint
        self.resource = resource
        self.interval = interval
        if endpoint is not None:
            self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread is not here
            self._pid = os.getpid()
            self._thread = None
            self._sender = self._sender_for = None
            self._send_lock = threading.Lock()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="sessiontrace-metrics", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        from opentelemetry import context as otel_context

        otel_context.attach(suppressed_context())
        next_at = time.monotonic() + self.interval
        while True:
            self._wake.wait(max(next_at - time.monotonic(), 0.0))
            if self._wake.is_set():  # reconfigured: start a new interval
                self._wake.clear()
                next_at = time.monotonic() + self.interval
                continue
            next_at = time.monotonic() + self.interval
            endpoint = self.endpoint
            if endpoint is not None:
                self.export_now(endpoint.timeout)

    def export_now(self, timeout: float) -> bool:
        """Collect and send once; False when it did not finish within `timeout` (a failed send is
        done all the same: counted in export_errors, warned about once)."""
        deadline = time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=max(timeout, 0.0)):
            return False
        try:
            if self.endpoint is None:
                return True
            self._deadline = deadline
            from opentelemetry import context as otel_context

            # Also when called from the program's thread (sdk.flush()): the SDK's requests are not traced.
            token = otel_context.attach(suppressed_context())
            try:
                self.collect(timeout_millis=max(deadline - time.monotonic(), 0.001) * 1000)
            except MetricsTimeoutError:
                return False  # the instruments' callbacks outlasted `timeout`: late, not broken
            except Exception as exc:
                internal_error("metrics collection", exc)
            finally:
                otel_context.detach(token)
            return time.monotonic() <= deadline
        finally:
            self._send_lock.release()

    _deadline = 0.0

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        endpoint = self.endpoint
        if endpoint is None or not metrics_data.resource_metrics:
            return
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

        from sdk.export.otlp import make_sender

        if self.resource is not None:  # the current pipeline's resource (service.name may change on re-init)
            metrics_data = MetricsData(
                [
                    ResourceMetrics(self.resource, rm.scope_metrics, rm.schema_url)
                    for rm in metrics_data.resource_metrics
                ]
            )
        if self._sender is None or self._sender_for != endpoint:
            if self._sender is not None:
                self._sender.close()
            self._sender = make_sender(endpoint)
            self._sender_for = endpoint
        data = encode_metrics(metrics_data).SerializeToString()
        timeout = min(endpoint.timeout, max(self._deadline - time.monotonic(), 0.001))
        result = self._sender.send(data, timeout)
        if not result.ok:
            STATE.counters.export_errors.add()
            warn_once(
                f"metrics-export-{endpoint.url}",
                "sessiontrace: metrics could not be sent to %s (%s); they are sent again, cumulative, "
                "at the next interval (this is logged once)",
                endpoint.describe(),
                result.error,
            )

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """The SDK's provider lives as long as the process; the SDK flushes it at its own shutdown."""


class MetricsPipeline:
    """The metrics SDK side, built off the program's thread by `sdk.export.meters.MetricsHandle`:
    provider, reader, and the SDK's instruments (reading the SDK's counters and `recorder`)."""

    def __init__(self, recorder: SessionRecorder) -> None:
        self.reader = _SwappableReader()
        self.recorder = recorder
        # The reader exports with the current pipeline's resource; an empty one here spares the
        # resource detectors OpenTelemetry would otherwise run (in a thread pool).
        self.provider = MeterProvider(
            metric_readers=[self.reader], resource=Resource.get_empty(), shutdown_on_exit=False
        )
        meter = self.provider.get_meter(METER_NAME, __version__)
        self.duration = meter.create_histogram(
            "sessiontrace.session.duration",
            unit="s",
            description="Duration of ended sessions, by final state.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

        def observe(value: Any) -> Any:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value())]

            return [callback]

        meter.create_observable_counter(
            "sessiontrace.sessions.started",
            observe(lambda: STATE.counters.sessions_started.value),
            unit="{session}",
            description="Sessions started.",
        )
        meter.create_observable_counter(
            "sessiontrace.sessions.ended",
            [self._observe_ended],
            unit="{session}",
            description="Sessions ended, by final state (session.state).",
        )
        meter.create_observable_up_down_counter(
            "sessiontrace.sessions.open",
            observe(lambda: len(recorder.open)),
            unit="{session}",
            description="Sessions running now.",
        )
        for name, attribute, unit, description in (
            ("sessiontrace.spans.exported", "spans_exported", "{span}", "Spans the backend accepted."),
            ("sessiontrace.spans.dropped", "spans_dropped", "{span}", "Spans not delivered (counted drops)."),
            ("sessiontrace.spans.spooled", "spans_spooled", "{span}", "Spans written to the on-disk spool."),
            ("sessiontrace.export.errors", "export_errors", "{error}", "Failed export requests."),
        ):
            meter.create_observable_counter(
                name, observe(self._reader_of(attribute)), unit=unit, description=description
            )

    @staticmethod
    def _reader_of(attribute: str) -> Any:
        # Read through STATE.counters each time: sdk.testing.reset() replaces the counter objects.
        return lambda: getattr(STATE.counters, attribute).value

    def _observe_ended(self, _options: CallbackOptions) -> Iterable[Observation]:
        recorder = self.recorder
        return [
            Observation(counter.value, recorder.state_attributes[state])
            for state, counter in recorder.ended.items()
        ]
