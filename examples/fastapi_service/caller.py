"""A caller in a session, calling the FastAPI service with httpx and requests.

    python examples/fastapi_service/caller.py http://127.0.0.1:8000

Both HTTP clients are instrumented with the standard OpenTelemetry instrumentations; the SDK
adds the session to what they inject (``baggage: session.id=...`` beside ``traceparent``), so the
service's spans land in this session and its trace. Prints the session and what the service saw.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
import requests
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor

import sdk


async def converse(base_url: str) -> dict[str, object]:
    """One support conversation: two lookups (sync and async httpx) and a chat turn (requests)."""
    with sdk.session("support-chat", user_id="u-42") as session:
        refunds = httpx.get(f"{base_url}/lookup", params={"topic": "refunds"}, timeout=10).json()
        async with httpx.AsyncClient(timeout=10) as client:
            shipping = (await client.get(f"{base_url}/lookup", params={"topic": "shipping"})).json()
        answer = requests.post(
            f"{base_url}/chat", json={"question": "where is my refund?"}, timeout=10
        ).json()
    return {
        "session_id": session.id,
        "trace_id": session.trace_id,
        "articles": [refunds["article"], shipping["article"]],
        "service_session_id": answer["session_id"],
        "service_trace_id": answer["trace_id"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Call the FastAPI service from inside a session.")
    parser.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    sdk.init(service_name="support-caller", console_summary=True)
    HTTPXClientInstrumentor().instrument()
    RequestsInstrumentor().instrument()
    outcome = asyncio.run(converse(args.url.rstrip("/")))
    for key, value in outcome.items():
        print(f"{key}: {value}")
    sdk.shutdown()


if __name__ == "__main__":
    main()
