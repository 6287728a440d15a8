"""A small agent loop traced with sessiontrace: no backend, no network, no API key.

Two users each talk to a support agent in their own session. The "model" is a deterministic
fake that decides which tool to call; the tools are plain functions with `@sdk.tool`. With no
endpoint configured, spans go to OTLP-JSON lines under ./.sessiontrace/traces/ and each ended
session prints a one-line summary; with OTEL_EXPORTER_OTLP_ENDPOINT set, they go to that backend.
The last lines say where they went.

    python examples/quickstart.py
"""

from __future__ import annotations

import sdk

ORDERS = {"A-100": "shipped", "A-200": "refund pending"}


@sdk.tool
def lookup_order(order_id: str) -> str:
    """Look an order up in the (fake) order system."""
    sdk.event("order.lookup", order_id=order_id)
    return ORDERS.get(order_id, "unknown order")


@sdk.tool
def issue_refund(order_id: str) -> str:
    """Issue a refund (fake)."""
    return f"refund issued for {order_id}"


@sdk.task(name="fake_model")
def fake_model(message: str) -> tuple[str, str] | None:
    """A deterministic stand-in for an LLM: picks a tool from keywords, or answers directly."""
    words = message.replace("?", "").split()
    order = next((w for w in words if w.startswith("A-")), None)
    if order and "refund" in message:
        return ("issue_refund", order)
    if order:
        return ("lookup_order", order)
    return None


TOOLS = {"lookup_order": lookup_order, "issue_refund": issue_refund}


@sdk.agent(name="support-agent")
def support_agent(message: str) -> str:
    """One agent turn: ask the model, run the tool it picked, answer."""
    decision = fake_model(message)
    if decision is None:
        return "How can I help you?"
    tool_name, argument = decision
    return TOOLS[tool_name](argument)


def main() -> None:
    config = sdk.init(service_name="quickstart-support-bot")
    conversations = {
        "u-alice": ["Where is my order A-100?", "Thanks!"],
        "u-bob": ["I want a refund for A-200", "Where is A-200?"],
    }
    for user, messages in conversations.items():
        with sdk.session("support-chat", user_id=user, tags=["quickstart"]) as s:
            for message in messages:
                print(f"[{user}] {message!r} -> {support_agent(message)!r}")
        print(f"  session {s.id} for {user}: {s.state}, {s.span_count} spans, trace {s.trace_id}")
    sdk.shutdown()
    for where in config.destinations_text():
        print(f"spans went to {where}")
    stats = sdk.stats()
    print(
        f"  ({stats.spans_exported} delivered, {stats.spans_spooled} kept in the spool, {stats.spans_dropped} dropped)"
    )
    if not config.summary_enabled:
        print("  (set SESSIONTRACE_CONSOLE_SUMMARY=true for a summary line per session here too)")


if __name__ == "__main__":
    main()
