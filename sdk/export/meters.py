"""The metrics side that `init()` pays for: cheap. The OpenTelemetry metrics SDK is built off its thread.

Importing and building the OpenTelemetry metrics SDK takes tens of milliseconds (over 100 on a busy
machine), so `init()` only sets up what records: the SDK's own counters (`sdk.stats()`, which the
exported `sessiontrace.*` metrics read), a session listener that counts open and ended sessions and
keeps session durations, and, as OpenTelemetry's global MeterProvider (when the application set
none), `EarlyMeterProvider`. A thread then builds the metrics SDK (`sdk/export/metrics.py`), and
what was recorded meanwhile is replayed into it:

- instruments made through the global provider before it is built (the LLM instrumentation's
  GenAI histograms, other libraries') keep their measurements (up to `EARLY_MAX` each) and hand
  them to the real instruments once they exist; later measurements go straight through;
- session durations recorded before the histogram exists are recorded into it once it does.

The builder thread is not a daemon: an interpreter that exits while it is still importing waits for
it (a fraction of a second) before the exit handler runs, which then exports the metrics. A flush or
shutdown of the metrics waits for the build, within its own timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.util.types import Attributes

from sdk.counters import Counter
from sdk.guard import internal_error
from sdk.otel_internals import global_meter_provider_unset, metrics_reader_supported
from sdk.semconv import METER_NAME
from sdk.state import STATE
from sdk.version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

    from sdk.export.metrics import MetricsPipeline
    from sdk.export.otlp import Endpoint

STATES = ("success", "fail", "indeterminate")
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0)
"""Bucket bounds for scores: fine on 0-1 (grades, thumbs as 1/0) and on 1-5 / 1-10 ratings."""
EARLY_MAX = 10_000
"""Measurements an instrument keeps while the metrics SDK is being built (it takes a fraction of a second)."""
BUILD_DELAY = 0.05
"""Seconds the builder thread waits before it imports: on a 2-core machine its imports would take
the GIL from init() itself, which returns well within this. A flush does not wait for it."""


class _EarlyInstrument:
    """An instrument made before the metrics SDK exists: keeps its measurements, then forwards them."""

    def __init__(self, create: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._create = (create, args, kwargs)
        self._real: Any = None
        self._kept: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _measure(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        real = self._real
        if real is None:
            with self._lock:
                real = self._real
                if real is None:
                    if len(self._kept) < EARLY_MAX:
                        self._kept.append((method, args, kwargs))
                    return
        getattr(real, method)(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Counter.add / UpDownCounter.add."""
        self._measure("add", args, kwargs)

    def record(self, *args: Any, **kwargs: Any) -> None:
        """Histogram.record."""
        self._measure("record", args, kwargs)

    def set(self, *args: Any, **kwargs: Any) -> None:
        """Gauge.set."""
        self._measure("set", args, kwargs)

    def attach(self, meter: Meter) -> None:
        """Create the real instrument on `meter` and replay what was kept, in order."""
        create, args, kwargs = self._create
        real = getattr(meter, create)(*args, **kwargs)
        with self._lock:
            for method, margs, mkwargs in self._kept:
                getattr(real, method)(*margs, **mkwargs)
            self._kept = []
            self._real = real


class _EarlyMeter(Meter):
    """A meter of `EarlyMeterProvider`: its instruments keep measurements until the real meter exists."""

    def __init__(
        self, name: str, version: str | None, schema_url: str | None, attributes: Attributes
    ) -> None:
        super().__init__(name, version=version, schema_url=schema_url)
        self.attributes = attributes
        self._lock = threading.Lock()
        self._real: Meter | None = None
        self._instruments: list[_EarlyInstrument] = []

    def _make(self, create: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._real is not None:
                return getattr(self._real, create)(*args, **kwargs)
            instrument = _EarlyInstrument(create, args, kwargs)
            self._instruments.append(instrument)
            return instrument

    def attach(self, real: Meter) -> None:
        """From now on this meter is `real`; its early instruments get real ones."""
        with self._lock:
            self._real = real
            instruments, self._instruments = self._instruments, []
        for instrument in instruments:
            try:
                instrument.attach(real)
            except Exception as exc:
                internal_error("metrics instrument", exc)

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._make("create_counter", name, unit, description)

    def create_up_down_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._make("create_up_down_counter", name, unit, description)

    def create_observable_counter(
        self, name: str, callbacks: Sequence[Any] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        return self._make("create_observable_counter", name, callbacks, unit, description)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Any:
        return self._make(
            "create_histogram",
            name,
            unit,
            description,
            explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory,
        )

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._make("create_gauge", name, unit, description)

    def create_observable_gauge(
        self, name: str, callbacks: Sequence[Any] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        return self._make("create_observable_gauge", name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[Any] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        return self._make("create_observable_up_down_counter", name, callbacks, unit, description)


class EarlyMeterProvider(MeterProvider):
    """The SDK's global MeterProvider: early meters until the metrics SDK is built, then the SDK's own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.real: MeterProvider | None = None
        self._meters: list[_EarlyMeter] = []

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> Meter:
        with self._lock:
            if self.real is not None:
                return self.real.get_meter(name, version, schema_url, attributes)
            meter = _EarlyMeter(name, version, schema_url, attributes)
            self._meters.append(meter)
            return meter

    def attach(self, real: MeterProvider) -> None:
        """Hand every early meter (and its measurements) to `real`, which serves new meters from now on."""
        with self._lock:
            self.real = real
            meters, self._meters = self._meters, []
        for meter in meters:
            meter.attach(real.get_meter(meter.name, meter.version, meter.schema_url, meter.attributes))


class SessionRecorder:
    """A session listener recording the session metrics into the SDK's own state (cheap: a dict, a
    counter and a list); durations go to the histogram once the metrics SDK built it."""

    def __init__(self) -> None:
        self.open: dict[int, None] = {}
        self.ended = {state: Counter() for state in STATES}
        self.state_attributes = {state: {"session.state": state} for state in STATES}
        self.forked = False  # a forked child's counts are copies of its parent's: it records nothing
        self._histogram: Any = None
        self._durations: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def on_session_start(self, session: Any, *, stored: bool) -> None:
        if self.forked:
            return
        self.open[id(session)] = None

    def on_session_end(self, session: Any) -> None:
        if self.forked:
            return
        self.open.pop(id(session), None)
        state = session.state.value
        counter = self.ended.get(state)
        if counter is not None:
            counter.add()
        histogram = self._histogram
        if histogram is None:
            with self._lock:
                histogram = self._histogram
                if histogram is None:
                    if len(self._durations) < EARLY_MAX:
                        self._durations.append((session.duration, state))
                    return
        histogram.record(session.duration, self.state_attributes.get(state))

    def attach(self, histogram: Any) -> None:
        """Record the durations kept so far into `histogram`, and every later one straight away."""
        with self._lock:
            for duration, state in self._durations:
                histogram.record(duration, self.state_attributes.get(state))
            self._durations = []
            self._histogram = histogram


class MetricsCompanion:
    """Rides on a batch processor: flushes the metrics with it, and sends a last time when it closes."""

    def __init__(self, handle: MetricsHandle, generation: int) -> None:
        self._handle = handle
        self._generation = generation

    def force_flush(self, timeout: float) -> bool:
        """Collect and send the metrics now (after the build, within `timeout`)."""
        handle = self._handle
        if handle.generation != self._generation or handle.recorder.forked:
            return True
        pipeline = handle.wait_built(timeout)
        return pipeline is None or pipeline.reader.export_now(timeout)

    def shutdown(self, timeout: float) -> None:
        """Send a last time and stop exporting (unless a newer pipeline took over)."""
        handle = self._handle
        if handle.generation != self._generation or handle.recorder.forked:
            return
        pipeline = handle.wait_built(timeout)
        if pipeline is None:
            return
        pipeline.reader.export_now(timeout)
        if handle.generation == self._generation:
            handle.configure(None, None)


class MetricsHandle:
    """The process's metrics: what records at once, and the metrics SDK behind it, built by a thread."""

    def __init__(self) -> None:
        self.recorder = SessionRecorder()
        self.provider = EarlyMeterProvider()
        self.generation = 0
        self.interval = 60.0
        self._wanted: tuple[Endpoint | None, Resource | None] = (None, None)
        self._pipeline: MetricsPipeline | None = None
        self._built = threading.Event()
        self._hurry = threading.Event()  # set by a flush: build without waiting for BUILD_DELAY
        self._builder: threading.Thread | None = None
        self._lock = threading.Lock()
        # Made on the early provider: it keeps scores given before the metrics SDK is built.
        self._scores = self.provider.get_meter(METER_NAME, __version__).create_histogram(
            "sessiontrace.session.score",
            unit="1",
            description="Numeric scores given to sessions with sdk.score() (true/false as 1/0), "
            "by session.score.name and session.score.source.",
            explicit_bucket_boundaries_advisory=SCORE_BUCKETS,
        )
        if global_meter_provider_unset():
            metrics.set_meter_provider(self.provider)  # the application set none: ours is the global one

    def attach(self, endpoint: Endpoint, resource: Resource, interval: float) -> MetricsCompanion:
        """Export to `endpoint` every `interval` seconds from now on (once built); returns the
        companion for the new pipeline's batch processor."""
        self.generation += 1
        self.interval = interval
        self.configure(endpoint, resource)
        self._start_builder()
        return MetricsCompanion(self, self.generation)

    def detach(self) -> None:
        """Stop exporting (init() with metrics off); instruments keep counting."""
        self.generation += 1
        self.configure(None, None)

    def configure(self, endpoint: Endpoint | None, resource: Resource | None) -> None:
        """Where the reader sends (None: nowhere), now or as soon as it is built."""
        with self._lock:
            self._wanted = (endpoint, resource)
            pipeline = self._pipeline
        if pipeline is not None:
            pipeline.reader.configure(endpoint, resource, self.interval)

    def wait_built(self, timeout: float) -> MetricsPipeline | None:
        """The metrics SDK pipeline, waiting for its build at most `timeout` seconds (None if not built)."""
        if self._pipeline is None and self._builder is not None:
            self._hurry.set()
            self._built.wait(max(timeout, 0.0))
        return self._pipeline

    def record_score(self, name: str, source: str, value: float) -> None:
        """Record a numeric score given to a session (``sdk.score``)."""
        if not self.recorder.forked:
            self._scores.record(value, {"session.score.name": name, "session.score.source": source})

    def listener(self) -> SessionRecorder:
        """The session listener that records session metrics."""
        return self.recorder

    def _start_builder(self) -> None:
        with self._lock:
            if self._builder is not None or self.recorder.forked:
                return
            # Not a daemon: an interpreter exiting meanwhile waits for it, then exports at exit.
            self._builder = threading.Thread(target=self._build, name="sessiontrace-metrics-build")
        try:
            self._builder.start()
        except RuntimeError:  # the interpreter is already shutting down: no metrics then
            self._built.set()

    def _build(self) -> None:
        self._hurry.wait(BUILD_DELAY)
        try:
            if not metrics_reader_supported():  # said once in a warning, counted in stats()
                return
            from sdk.export.metrics import MetricsPipeline  # imports the metrics SDK: off init()'s path

            pipeline = MetricsPipeline(self.recorder)
            self.recorder.attach(pipeline.duration)
            self.provider.attach(pipeline.provider)
            with self._lock:
                self._pipeline = pipeline
                endpoint, resource = self._wanted
            pipeline.reader.configure(endpoint, resource, self.interval)
        except Exception as exc:
            internal_error("metrics pipeline", exc)
        finally:
            self._built.set()

    def after_fork(self) -> None:
        """In a forked child: it records and exports no metrics (its counts are its parent's)."""
        self._lock = threading.Lock()
        self._hurry = threading.Event()
        self.recorder.open.clear()
        self.recorder.forked = True


def metrics_handle() -> MetricsHandle:
    """The process's metrics handle, made (and its provider set globally, if none was) on first use."""
    with STATE.metrics_lock:
        handle = STATE.metrics
        if handle is None:
            handle = STATE.metrics = MetricsHandle()
            STATE.at_fork(handle, after_in_child=handle.after_fork)
        return handle


def existing_handle() -> MetricsHandle | None:
    """The metrics handle if one was made (a config with metrics off makes none)."""
    return STATE.metrics
