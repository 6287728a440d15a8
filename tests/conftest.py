"""Every test starts with a clean SDK, a clean environment and its own working directory.

A test of a time window (an idle timeout, a grace period, an expiry) takes the ``clock`` fixture
and moves the SDK's clock instead of sleeping through the window. The real components tests share
are fixtures here: a loopback OTLP receiver (HTTP, or HTTP and gRPC), the loopback LLM server the
real openai and anthropic clients talk to, a real ``redis-server``, and a Jupyter folder whose
kernel is ipykernel on this Python.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_server import LLMServer
from otlp_receiver import OTLPReceiver
from redis_server import RedisServer

import sdk
from sdk.settings import INTERNAL_ENV
from sdk.testing import CapturedSpans, FakeClock, capture, freeze_clock, reset

# Internal errors fail the SDK's own tests instead of being swallowed (tests of the guard turn it off).
os.environ["SESSIONTRACE_RAISE_INTERNAL_ERRORS"] = "1"


@pytest.fixture(autouse=True)
def _clean_sdk(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SESSIONTRACE_", "OTEL_")) and name not in INTERNAL_ENV:
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
def clock() -> FakeClock:
    """The SDK's clock, frozen for this test: ``clock.advance(seconds)`` moves it (reset() restores the real one)."""
    return freeze_clock()


@pytest.fixture
def tracer():
    """A raw OpenTelemetry tracer from the global provider, as other instrumentations use."""
    from opentelemetry import trace

    return trace.get_tracer("tests.raw")


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    """A loopback OTLP/HTTP receiver for this test."""
    with OTLPReceiver() as running:
        yield running


@pytest.fixture
def grpc_receiver() -> Iterator[OTLPReceiver]:
    """A loopback OTLP receiver over HTTP and gRPC for this test."""
    with OTLPReceiver(grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def llm_server() -> Iterator[LLMServer]:
    """The loopback OpenAI- and Anthropic-compatible server, shared by a module's tests."""
    with LLMServer() as running:
        yield running


@pytest.fixture
def fresh_llm_server() -> Iterator[LLMServer]:
    """The loopback LLM server, for one test (its request log starts empty)."""
    with LLMServer() as running:
        yield running


@pytest.fixture
def openai_client(llm_server: LLMServer) -> Iterator[Any]:
    """The real openai client against the loopback LLM server, closed after the test (its sockets too)."""
    import openai  # here: a test of what happens before openai is imported must be able to run first

    with openai.OpenAI(base_url=llm_server.openai_url, api_key="test-key", max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(llm_server: LLMServer) -> Iterator[Any]:
    """The real anthropic client against the loopback LLM server, closed after the test (its sockets too)."""
    import anthropic

    with anthropic.Anthropic(base_url=llm_server.anthropic_url, api_key="test-key", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for a module's tests (they use their own key prefixes)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it may stop, pause and restart it)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


KERNEL_NAME = "sessiontrace-test"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder whose one kernelspec (KERNEL_NAME) is ipykernel on this very Python (the venv's)."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "sessiontrace tests", "language": "python"})
    )
    return folder


__all__ = ["sdk"]
