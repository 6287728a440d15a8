"""Carry the caller's session into thread pools (on by default) and threads (opt-in).

`ThreadPoolExecutor.submit` (which `map` and `loop.run_in_executor` use) and `Thread.start` are
wrapped so that the submitted callable or the thread's `run` runs in the session and
OpenTelemetry context of the code that submitted or started it. Nothing is carried when there is
nothing to carry (no session and no span in the caller's context): the call passes through.

Two kinds of thread are never bound to the context that started them: ThreadPoolExecutor workers
(a pool is shared: each task carries its submitter's context through the executor patch, and a
worker bound to the session that happened to start it would put every later task that carries
nothing into that session) and the SDK's own threads (``sessiontrace-*``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, thread
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from sdk.context import Wrapped
from sdk.instrumentation import base
from sdk.state import STATE

EXECUTOR_PATCH = "concurrent.futures.ThreadPoolExecutor.submit"
PROCESS_POOL_PATCH = "concurrent.futures.ProcessPoolExecutor.submit"
THREAD_PATCH = "threading.Thread.start"


def _bind_current(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """`fn` bound to the current session and context, or None when there is nothing to carry."""
    session = STATE.current_session.get()
    ctx = otel_context.get_current()
    if session is None and not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return Wrapped(fn, session, ctx)


def _submit(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        bound = _bind_current(args[0])
        if bound is not None:
            return wrapped(bound, *args[1:], **kwargs)
    return wrapped(*args, **kwargs)


def _submit_to_process(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # Always wrapped, even with nothing to carry: a forked worker keeps the session that was current
    # where it was forked, and every task must run in its own submitter's context, not that one.
    # The wrapper pickles as W3C headers; in the worker it flushes after the call (workers may
    # leave through os._exit()).
    if args and not isinstance(args[0], Wrapped):
        bound = Wrapped(args[0], STATE.current_session.get(), otel_context.get_current())
        return wrapped(bound, *args[1:], **kwargs)
    return wrapped(*args, **kwargs)


def _carries(instance: object) -> bool:
    """Whether starting this thread should bind its run() to the starter's context."""
    if not isinstance(instance, threading.Thread) or "run" in instance.__dict__:
        return False
    pool_worker = getattr(thread, "_worker", None)
    if pool_worker is not None and getattr(instance, "_target", None) is pool_worker:
        return False  # a ThreadPoolExecutor worker
    return not instance.name.startswith("sessiontrace-")


def _start(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _carries(instance):
        return wrapped(*args, **kwargs)
    bound = _bind_current(instance.run)
    if bound is None:
        return wrapped(*args, **kwargs)

    def run_once() -> None:
        # Drop the binding when run() returns: the Thread object, which the application may keep,
        # does not keep the session and its context alive (as Thread.run drops its target).
        try:
            bound()
        finally:
            instance.__dict__.pop("run", None)

    instance.run = run_once
    try:
        return wrapped(*args, **kwargs)
    except BaseException:
        instance.__dict__.pop("run", None)
        raise


def _patch_process_pool(module: Any) -> None:
    if base.is_applied(EXECUTOR_PATCH):
        base.apply(PROCESS_POOL_PATCH, module.ProcessPoolExecutor, "submit", _submit_to_process)


def configure(executors: bool, threads: bool) -> None:
    """Apply or remove the two patches to match the settings (each at most once per process)."""
    if executors:
        base.apply(EXECUTOR_PATCH, ThreadPoolExecutor, "submit", _submit)
        # concurrent.futures.process imports multiprocessing (30 ms): patch it when the program does.
        base.when_imported("concurrent.futures.process", _patch_process_pool)
    else:
        base.remove(EXECUTOR_PATCH)
        base.remove(PROCESS_POOL_PATCH)
    if threads:
        base.apply(THREAD_PATCH, threading.Thread, "start", _start)
    else:
        base.remove(THREAD_PATCH)


def remove_all() -> None:
    """Remove both patches (shutdown)."""
    base.remove(EXECUTOR_PATCH)
    base.remove(PROCESS_POOL_PATCH)
    base.remove(THREAD_PATCH)
