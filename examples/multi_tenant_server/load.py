"""Simulated users for the multi-tenant chat server: checks that no conversation ever mixes.

    python examples/multi_tenant_server/load.py http://127.0.0.1:8080 --users 50

Each simulated user owns one conversation. All users run at once (aiohttp.ClientSession); each
sends ``--messages`` messages one after the other, then ``--burst`` more all at once (concurrent
requests for the same conversation), then reads its history back. Finally every user tries to
post to and read its neighbour's conversation, which the server must refuse (403).

Every reply is checked against what this user sent: the conversation id, the user, the session
id (the conversation id), the turn number, the history (exactly this conversation's messages, in
order; a burst's messages in some order, each once) and, for order questions, the order id in
the reply. A trace id reported for two conversations is a mix-up too. Prints a summary; exits 1
on any mix-up or failed request, else 0. ``--report FILE`` writes one JSON line per reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Results:
    """What the run saw: replies, problems (mix-ups) and failed requests."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    mixups: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    trace_owner: dict[str, str] = field(default_factory=dict)
    intact: int = 0
    refused: int = 0
    intrusions: int = 0


def message_for(user_index: int, number: int, conversation_id: str) -> str:
    """The `number`-th message of a user: every other one asks about an order of this user's own."""
    if number % 2 == 0:
        return f"hi, user-{user_index:03d} here: where is order A-{user_index:03d}-{number}?"
    return f"message {number} of conversation {conversation_id}, please count my words"


def order_in(message: str) -> str | None:
    words = [w.strip("?,.") for w in message.split()]
    return next((w for w in words if w.startswith("A-")), None)


class User:
    """One simulated user with its own conversation."""

    def __init__(self, index: int, run_id: str, base_url: str, results: Results) -> None:
        self.index = index
        self.user = f"user-{index:03d}"
        self.conversation_id = f"{run_id}-{index:03d}"
        self.url = f"{base_url}/conversations/{self.conversation_id}/messages"
        self.results = results
        self.sent: list[str] = []

    def problem(self, text: str) -> None:
        self.results.mixups.append(f"{self.conversation_id}: {text}")

    async def post(self, http: aiohttp.ClientSession, message: str, phase: str) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            async with http.post(self.url, json={"user": self.user, "message": message}) as response:
                if response.status != 200:
                    self.results.errors.append(
                        f"{self.conversation_id}: POST -> {response.status} {await response.text()}"
                    )
                    return None
                reply: dict[str, Any] = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.results.errors.append(f"{self.conversation_id}: POST failed: {type(exc).__name__}: {exc}")
            return None
        self.results.latencies.append(time.perf_counter() - started)
        self.results.replies.append(
            {
                "phase": phase,
                "message": message,
                **{k: reply.get(k) for k in ("conversation_id", "user", "turn", "request_id")},
                **{k: reply.get(k) for k in ("session_id", "trace_id", "reply")},
            }
        )
        self.check_common(reply, message)
        return reply

    def check_common(self, reply: dict[str, Any], message: str) -> None:
        for key, expected in (
            ("conversation_id", self.conversation_id),
            ("user", self.user),
            ("session_id", self.conversation_id),
        ):
            if reply.get(key) != expected:
                self.problem(f"reply has {key}={reply.get(key)!r}, expected {expected!r}")
        history = reply.get("history")
        if not isinstance(history, list) or not history or history[-1] != message:
            self.problem(f"history does not end with this message: {history!r}")
        elif reply.get("turn") != len(history):
            self.problem(f"turn {reply.get('turn')!r} but {len(history)} messages in history")
        order = order_in(message)
        if order is not None and order not in str(reply.get("reply")):
            self.problem(f"reply {reply.get('reply')!r} does not answer about {order}")
        trace_id = str(reply.get("trace_id"))
        owner = self.results.trace_owner.setdefault(trace_id, self.conversation_id)
        if owner != self.conversation_id:
            self.problem(f"trace {trace_id} also reported for {owner}")

    async def run(self, http: aiohttp.ClientSession, messages: int, burst: int) -> None:
        mixups_before = len(self.results.mixups)
        errors_before = len(self.results.errors)
        for number in range(messages):
            message = message_for(self.index, number, self.conversation_id)
            reply = await self.post(http, message, "sequential")
            if reply is None:
                return
            self.sent.append(message)
            if reply.get("history") != self.sent:
                self.problem(f"history {reply.get('history')!r}, expected {self.sent!r}")

        batch = [message_for(self.index, messages + j, self.conversation_id) for j in range(burst)]
        replies = await asyncio.gather(*(self.post(http, m, "burst") for m in batch))
        for reply in replies:
            if reply is None:
                continue
            history = reply.get("history") or []
            if history[: len(self.sent)] != self.sent or not set(history[len(self.sent) :]) <= set(batch):
                self.problem(f"burst reply history {history!r} has messages this user did not send")
        self.sent.extend(batch)

        history = await self.read_history(http, self.url, self.user)
        if history is not None:
            head, tail = history[:messages], history[messages:]
            if head != self.sent[:messages] or sorted(tail) != sorted(batch):
                self.problem(f"final history {history!r}, expected {self.sent!r} (burst in any order)")
        if len(self.results.mixups) == mixups_before and len(self.results.errors) == errors_before:
            self.results.intact += 1

    async def read_history(self, http: aiohttp.ClientSession, url: str, user: str) -> list[str] | None:
        try:
            async with http.get(url, params={"user": user}) as response:
                if response.status != 200:
                    self.results.errors.append(f"{self.conversation_id}: GET -> {response.status}")
                    return None
                body = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.results.errors.append(f"{self.conversation_id}: GET failed: {type(exc).__name__}: {exc}")
            return None
        history = body.get("history")
        if body.get("conversation_id") != self.conversation_id or not isinstance(history, list):
            self.problem(f"GET answered {body!r}")
            return None
        return history

    async def intrude(self, http: aiohttp.ClientSession, other: User) -> None:
        """Post to and read another user's conversation: both must be refused with 403."""
        self.results.intrusions += 1
        try:
            async with http.post(other.url, json={"user": self.user, "message": "let me in"}) as posted:
                post_status = posted.status
            async with http.get(other.url, params={"user": self.user}) as read:
                get_status = read.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.results.errors.append(f"{self.conversation_id}: intrusion failed: {exc}")
            return
        if post_status == 403 and get_status == 403:
            self.results.refused += 1
        else:
            self.problem(
                f"{self.user} got POST {post_status} / GET {get_status} on {other.conversation_id}, expected 403"
            )


async def run(base_url: str, users: int, messages: int, burst: int, timeout: float) -> Results:
    results = Results()
    run_id = f"conv-{secrets.token_hex(3)}"
    people = [User(i, run_id, base_url.rstrip("/"), results) for i in range(users)]
    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
        await asyncio.gather(*(person.run(http, messages, burst) for person in people))
        if users > 1:
            await asyncio.gather(
                *(person.intrude(http, people[(i + 1) % users]) for i, person in enumerate(people))
            )
    return results


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base_url", nargs="?", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument("--users", type=int, default=50, help="concurrent users, one conversation each")
    parser.add_argument("--messages", type=int, default=4, help="messages each user sends one by one")
    parser.add_argument(
        "--burst", type=int, default=2, help="then this many at once to the same conversation"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take")
    parser.add_argument("--report", help="write one JSON line per reply to this file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = asyncio.run(run(args.base_url, args.users, args.messages, args.burst, args.timeout))
    elapsed = time.perf_counter() - started

    if args.report:
        with open(args.report, "w", encoding="utf-8") as report:
            for reply in results.replies:
                report.write(json.dumps(reply) + "\n")

    sent = args.users * (args.messages + args.burst)
    latencies = sorted(results.latencies)
    print(
        f"load: {args.users} users, {args.users} conversations, {len(results.replies)}/{sent} messages "
        f"answered in {elapsed:.2f} s ({len(results.replies) / elapsed:.0f} msg/s); latency "
        f"p50 {percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms"
    )
    print(
        f"load: {results.intact}/{args.users} conversations intact, {len(results.mixups)} mix-ups, "
        f"{len(results.errors)} failed requests, {results.refused}/{results.intrusions} cross-tenant "
        "requests refused"
    )
    for line in (results.mixups + results.errors)[:20]:
        print(f"  {line}")
    ok = not results.mixups and not results.errors and len(results.replies) == sent
    print("load: OK" if ok else "load: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
