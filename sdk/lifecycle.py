"""`init()` and `shutdown()`: resolve config, build and swap the pipeline, manage the auto session.

`init()` is idempotent and re-entrant: call it again with the same settings and nothing
changes; with new settings the pipeline behind the SDK's one TracerProvider is replaced in
place. The auto session belongs to the process, not to a pipeline, so it survives re-init.
"""

from __future__ import annotations

import atexit
import sys
import time
from types import TracebackType
from typing import Any

from opentelemetry import trace

from sdk import foreign, otel_internals, runtime, tracing
from sdk.counters import Stats
from sdk.export.sampling import SamplingRules, configure_sampling
from sdk.guard import internal_error
from sdk.reaper import reaper
from sdk.semconv import SessionState
from sdk.session_api import end_open_sessions, start_auto_session
from sdk.session_core import auto_session, open_sessions, set_ended_session_grace
from sdk.settings import SETTINGS, Config, load_config
from sdk.state import STATE


def init(**settings: Any) -> Config:
    """Start (or reconfigure) the SDK. Safe to call any number of times.

    Keywords are the settings of docs/configuration.md (``service_name``, ``exporter``,
    ``endpoint``, ``auto_start_session``, ...); they override the config file and environment.
    A bad value raises `ConfigError` naming the key, the value and where it came from. Never
    blocks on the network. Returns the resolved config.
    """
    config = load_config(settings)
    otel_internals.check()
    with STATE.lifecycle_lock:
        return _apply(config)


def _apply(config: Config) -> Config:
    """Put `config` in place (init() with resolved settings; again when the export plan changes)."""
    old = runtime.current()
    plan = _export_plan(config) if config.enabled and old.config is not None else None
    if old.config is not None and old.config == config and old.enabled == config.enabled and old.plan == plan:
        _apply_process_features(config)
        set_ended_session_grace(config.ended_session_grace)
        _apply_auto_session(config)
        _run_environment_hooks()
        return old.config
    if config.enabled:
        tracer = tracing.install(runtime.build_resource(config))
        plan = _export_plan(config)
        _set_provider_enabled(True)
    else:
        if old.enabled:  # end them while their spans can still be exported
            end_open_sessions(SessionState.SUCCESS, "sdk disabled", "sdk disabled")
        _set_provider_enabled(False)
        tracer = old.tracer if old.config is not None else runtime.Runtime(None).tracer
    configure_sampling(SamplingRules.of(config) if config.enabled else SamplingRules())
    _swap_pipeline(config, tracer, old, plan)
    STATE.pipeline_changed = _pipeline_changed
    _apply_process_features(config)
    set_ended_session_grace(config.ended_session_grace)
    _apply_auto_session(config)
    _install_exit_hook()
    _run_environment_hooks()
    return config


def _export_plan(config: Config) -> foreign.ExportPlan:
    """Where the SDK exports beside the application's own OpenTelemetry pipeline, if it has one."""
    return foreign.plan_beside(config, tracing.application_pipeline(), trace.get_tracer_provider())


def _swap_pipeline(
    config: Config, tracer: Any, old: runtime.Runtime, plan: foreign.ExportPlan | None
) -> None:
    """Build the pipeline for `config` and `plan`, put it in place and close `old` in the background."""
    new = runtime.build_runtime(config, tracer, old, plan)
    runtime.swap(new)
    if old.config is not None:
        runtime.close_in_background(old, new, config.flush_timeout)
    if plan is not None:
        foreign.announce(plan)
        if plan.beside_application:
            foreign.announce_logfire(trace.get_tracer_provider())


def _pipeline_changed() -> None:
    """The application added a span processor to the SDK's provider: when that changes where the
    SDK should export, swap the pipeline (nothing else of init() runs again)."""
    try:
        with STATE.lifecycle_lock:
            current = runtime.current()
            if current.config is None or not current.enabled:
                return
            plan = _export_plan(current.config)
            if plan != current.plan:
                _swap_pipeline(current.config, current.tracer, current, plan)
    except Exception as exc:
        internal_error("planning the export after a new span processor", exc)


def _set_provider_enabled(enabled: bool) -> None:
    provider = tracing.installed_provider()
    if isinstance(provider, tracing.SessionTracerProvider):
        provider.set_enabled(enabled)


def _apply_process_features(config: Config) -> None:
    """Context patches and the idle reaper, as the config asks (each applied at most once)."""
    from sdk.instrumentation import threads

    threads.configure(
        executors=config.enabled and config.propagate_executors,
        threads=config.enabled and config.propagate_threads,
    )
    from sdk import instrumentation

    instrumentation.configure(
        config.instrument if config.enabled else (), autogen=config.enabled and config.instrument_autogen
    )
    if config.enabled:
        foreign.announce_other_instrumentations(config.instrument)
    reaper().configure(config.session_idle_timeout if config.enabled else None)
    from sdk import logs
    from sdk.instrumentation import propagation

    if config.enabled:
        propagation.apply(outbound=config.propagate_session)
    else:
        propagation.remove()
    logs.configure(config)


def _run_environment_hooks() -> None:
    """Let installed integrations attach to the environment the program runs in, after each init().

    Integrations declare a callable in the ``sessiontrace.hooks`` entry-point group (the notebook
    extension's attaches cell hooks to a running IPython kernel). They are looked up only when
    IPython is already imported, so a script pays nothing; each hook must be idempotent.
    """
    if "IPython" not in sys.modules:
        return
    from importlib.metadata import entry_points

    try:
        hooks = list(entry_points(group="sessiontrace.hooks"))
    except Exception as exc:
        internal_error("looking up sessiontrace.hooks entry points", exc)
        return
    for hook in hooks:
        try:
            hook.load()()
        except Exception as exc:
            internal_error(f"environment hook {hook.name}", exc)


def _apply_auto_session(config: Config) -> None:
    auto = auto_session()
    if config.enabled and config.auto_start_session:
        if auto is None:
            start_auto_session(config.auto_session_name)
    elif auto is not None:
        auto.end(SessionState.SUCCESS, "auto session turned off by init()")


def flush(timeout: float | None = None) -> bool:
    """Export every finished span now, including what pipelines replaced by a re-init still held.

    Returns False if `timeout` (default: flush_timeout) ran out first.
    """
    rt = runtime.current()
    if rt.config is None:
        return runtime.wait_for_replaced(0.0 if timeout is None else timeout)
    limit = rt.config.flush_timeout if timeout is None else timeout
    deadline = time.monotonic() + limit
    replaced = runtime.wait_for_replaced(limit)
    return rt.force_flush(max(deadline - time.monotonic(), 0.0)) and replaced


def shutdown(timeout: float | None = None) -> None:
    """End open sessions (explicit ones as `indeterminate`, the auto session as `success`), flush, and close.

    Returns within `timeout` seconds (default: flush_timeout) even if the backend hangs. The SDK
    can be started again with `init()`.
    """
    with STATE.lifecycle_lock:
        rt = runtime.current()
        if rt.config is None:
            return
        end_open_sessions(SessionState.SUCCESS, None, "sdk.shutdown()")
        runtime.swap(runtime.Runtime(None))
        if not tracing.leave_application_provider():  # the application's processors go on
            _set_provider_enabled(False)
        reaper().configure(None)
        from sdk.instrumentation import threads

        threads.remove_all()
        from sdk import instrumentation

        instrumentation.uninstrument()
        # The log export is flushed beside the pipeline.
        from sdk import logs
        from sdk.instrumentation import propagation

        propagation.remove()
        limit = rt.config.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        logs_closing = logs.remove_all(limit)
        _close_all(rt, limit)
        if logs_closing is not None:
            logs_closing.join(max(deadline - time.monotonic(), 0.0))


def config() -> Config:
    """The resolved config in use (or what `init()` would resolve now, before it has run).

    `config().explain()` lists every setting with its value (secrets masked) and where it came from.
    """
    current = runtime.current().config
    return current if current is not None else load_config()


def stats() -> Stats:
    """A snapshot of the SDK's counters: spans, sessions, drops and internal errors."""
    return Stats(
        spans_started=STATE.counters.spans_started.value,
        spans_ended=STATE.counters.spans_ended.value,
        spans_exported=STATE.counters.spans_exported.value,
        spans_dropped=STATE.counters.spans_dropped.value,
        export_errors=STATE.counters.export_errors.value,
        spans_spooled=STATE.counters.spans_spooled.value,
        spool_dropped=STATE.counters.spool_dropped.value,
        sessions_open=len(open_sessions()),
        sessions_started=STATE.counters.sessions_started.value,
        sessions_ended=STATE.counters.sessions_ended.value,
        internal_errors=STATE.counters.internal_errors.value,
        store_errors=STATE.counters.store_errors.value,
        callback_errors=STATE.counters.callback_errors.value,
        inbound_rejected=STATE.counters.inbound_rejected.value,
        llm_calls=STATE.counters.llm_calls.value,
        llm_calls_unpriced=STATE.counters.llm_calls_unpriced.value,
        spans_dropped_queue_full=STATE.counters.spans_dropped_queue_full.value,
        spool_rejected=STATE.counters.spool_rejected.value,
        torn_writes_recovered=STATE.counters.torn_writes_recovered.value,
        store_spilled=STATE.counters.store_spilled.value,
        store_dropped=STATE.counters.store_dropped.value,
        sessions_sampled_out=STATE.counters.sessions_sampled_out.value,
        spans_sampled_out=STATE.counters.spans_sampled_out.value,
        otel_fallbacks=len(STATE.otel_fallbacks),
    )


def _install_exit_hook() -> None:
    if STATE.exit_hook_installed:
        return
    STATE.exit_hook_installed = True
    STATE.previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_at_exit)


def note_exit_status(code: object) -> None:
    """Tell the exit handler the program is exiting with `code` (from a SystemExit it saw).

    A non-zero status ends the auto session as `fail` (reason ``exit <code>``). The interpreter
    does not tell exit handlers the status, so runners such as ``python -m sdk run`` report it.
    """
    if code is not None and code != 0:
        STATE.uncaught = f"exit {code}"


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    STATE.uncaught = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else exc_type.__name__
    previous = STATE.previous_excepthook or sys.__excepthook__
    previous(exc_type, exc, tb)


def _at_exit() -> None:
    """End every open session and flush, within flush_timeout, whatever the backend does."""
    try:
        uncaught = STATE.uncaught or _uncaught_seen_by_another_hook()
        if uncaught == "interrupted":
            state, reason = SessionState.INDETERMINATE, "interrupted"
        elif uncaught:
            state = SessionState.FAIL
            reason = uncaught if uncaught.startswith("exit ") else f"uncaught {uncaught}"
        else:
            state, reason = SessionState.SUCCESS, None
        end_open_sessions(state, reason, "process exit")
        rt = runtime.current()
        timeout = rt.config.flush_timeout if rt.config is not None else SETTINGS["flush_timeout"].default
        if rt.config is not None:
            runtime.swap(runtime.Runtime(None))
            _close_all(rt, timeout)
        tracing.flush_application_processors(timeout)
    except Exception as exc:
        internal_error("exit handler", exc)


def _close_all(rt: runtime.Runtime, timeout: float) -> None:
    """Close `rt` and every pipeline a re-init replaced, within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    runtime.wait_for_replaced(timeout, count_undelivered=False)
    rt.shutdown(max(deadline - time.monotonic(), 0.0))
    runtime.wait_for_replaced(0.0, count_undelivered=True)


def _uncaught_seen_by_another_hook() -> str | None:
    """The uncaught exception, when a sys.excepthook installed after init() did not call ours.

    CPython stores it in sys.last_value before calling the hook. In IPython that attribute is set
    by every cell that raised, so it means nothing there.
    """
    if "IPython" in sys.modules:
        return None
    error = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if error is None:
        return None
    return "interrupted" if isinstance(error, KeyboardInterrupt) else type(error).__name__
