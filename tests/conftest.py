"""Every test starts with a clean SDK, a clean environment and its own working directory."""

from __future__ import annotations

import os

import pytest

import sdk
from sdk.testing import CapturedSpans, capture, reset

# Internal errors fail the SDK's own tests instead of being swallowed (tests of the guard turn it off).
os.environ["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"


@pytest.fixture(autouse=True)
def _clean_sdk(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SESSIONTRACE_", "OTEL_")) and name != "SESSIONTRACE_RAISE_INTERNAL_ERRORS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    reset()


@pytest.fixture
def captured() -> CapturedSpans:
    """The SDK started with an in-memory span recorder."""
    return capture(service_name="tests")


@pytest.fixture
def trusting() -> CapturedSpans:
    """The SDK started with an in-memory recorder, adopting inbound session ids from any sender."""
    return capture(service_name="tests", accept_session_from="all")


@pytest.fixture
def tracer():
    """A raw OpenTelemetry tracer from the global provider, as other instrumentations use."""
    from opentelemetry import trace

    return trace.get_tracer("tests.raw")


__all__ = ["sdk"]
