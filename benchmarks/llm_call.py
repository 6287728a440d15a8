"""An instrumented ``chat.completions.create`` against the loopback fake API, and the same call unpatched.

SDK side: ``client.chat.completions.create(...)`` with the SDK's openai instrumentation applied,
inside a session (one CLIENT span with the GenAI attributes, cost, session totals and metrics).
Reference side: the same call through the original, unwrapped method (``__wrapped__`` of the
patch) on the same client, against the same server, in the same process. Both sides pay the HTTP
round trip to the fake server on 127.0.0.1 (tests/llm_server.py), so the ratio says how much of a
real call's client-side time the SDK adds; the difference of the medians is the added cost per call.

A second row runs the same pair with the client's HTTP transport answering in-process (httpx's
MockTransport, with the server's own response body): no socket and no server thread, so the
difference of the medians is the SDK's own work per call, without the loopback's noise.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from benchmarks.common import pipelines
from benchmarks.harness import Result, Settings, Timing, cpus, interleave, time_loop, walls

NAME = "llm_call"
TESTS = Path(__file__).resolve().parent.parent / "tests"
PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]


def _measure(settings: Settings, client, original, ops: int, p) -> tuple[list[Timing], list[Timing], int]:
    import sdk

    resource = client.chat.completions
    before = sdk.stats().llm_calls

    def sdk_body(n: int) -> None:
        for _ in range(n):
            resource.create(model="gpt-4o-mini", messages=PROMPT)

    def ref_body(n: int) -> None:
        for _ in range(n):
            original(resource, model="gpt-4o-mini", messages=PROMPT)

    def sdk_sample() -> Timing:
        with sdk.session("bench-llm"):
            return time_loop(settings, sdk_body, ops)

    def ref_sample() -> Timing:
        return time_loop(settings, ref_body, ops)

    sdk_samples, ref_samples = interleave(
        sdk_sample, ref_sample, settings.rounds, settings.warmup, between=p.flush
    )
    p.flush()
    return sdk_samples, ref_samples, sdk.stats().llm_calls - before


def _result(name: str, title: str, transport: str, samples, ops: int, recorded: int, expected: int) -> Result:
    sdk_samples, ref_samples = samples
    added = statistics.median(walls(sdk_samples)) - statistics.median(walls(ref_samples))
    return Result(
        name=name,
        title=title,
        sdk_label=f"`client.chat.completions.create(...)` instrumented, inside `with sdk.session(...)`; {transport}",
        sdk=walls(sdk_samples),
        sdk_cpu=cpus(sdk_samples),
        ref_label="the same call through the original (unwrapped) method, same client",
        ref=walls(ref_samples),
        ref_cpu=cpus(ref_samples),
        ops_per_sample=ops,
        checks={"LLM calls recorded / made by the SDK side": f"{recorded} / {expected}"},
        checks_ok=recorded == expected,
        notes=[f"added cost per call (difference of the medians): {added * 1e6:.1f} µs"],
        informational=True,
    )


def run(settings: Settings) -> list[Result]:
    sys.path.insert(0, str(TESTS))
    try:
        import llm_server
    finally:
        sys.path.remove(str(TESTS))
    import httpx2
    import openai
    from openai.resources.chat.completions.completions import Completions

    p = pipelines()
    original = getattr(vars(Completions)["create"], "__wrapped__", None)
    if original is None:
        raise RuntimeError("openai is not instrumented: sdk.init() did not patch chat.completions.create")
    results = []
    ops = 20 if settings.quick else 50
    expected = (settings.rounds + settings.warmup) * ops
    with llm_server.LLMServer() as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="bench", max_retries=0)
        *samples, recorded = _measure(settings, client, original, ops, p)
        results.append(
            _result(
                NAME,
                "chat.completions.create, loopback server",
                "HTTP to 127.0.0.1",
                samples,
                ops,
                recorded,
                expected,
            )
        )
        import json

        body = json.dumps(json.loads(_canned_body(client))).encode()
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, content=body, headers={"content-type": "application/json"})
    )
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="bench",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )
    ops = 50 if settings.quick else 200
    expected = (settings.rounds + settings.warmup) * ops
    *samples, recorded = _measure(settings, client, original, ops, p)
    results.append(
        _result(
            NAME + "_in_process",
            "chat.completions.create, in-process transport",
            "the HTTP transport answers in-process",
            samples,
            ops,
            recorded,
            expected,
        )
    )
    return results


def _canned_body(client) -> str:
    """The fake server's response body, as the client received it (the in-process transport replays it)."""
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
    return raw.text
