"""Simulated users for the Agency Swarm chat server: checks each chat stays one session and one trace.

    python examples/agency_swarm/load.py http://127.0.0.1:8080 --users 10 --messages 5

Standard library only (it runs under any Python). Each simulated user owns one chat
(``<run>-chat-<n>``) and sends its messages one after the other; all users run at once. Every
reply is checked: the chat, the user, the turn number, the session id (the chat id) and the trace
id (the same for every message of a chat, and never reported for two chats). ``--first N``
continues chats at message N (after a restart of the server: ``--run`` names the chats of the
earlier run); ``--report FILE`` appends one JSON line per reply, and the trace ids of earlier
lines in it must be the ones this run sees. ``--echo`` also checks the reply is the test model's
echo (``Hello! You said: <message>``). Prints a summary; exits 1 on any problem, else 0.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def message_for(chat_id: str, number: int) -> str:
    """The user's `number`-th message: it names the chat and an order of its own."""
    return f"{chat_id} message {number}: where is order {chat_id}-{number}?"


class Load:
    def __init__(self, base_url: str, run: str, echo: bool, stream: bool, earlier: dict[str, str]) -> None:
        self.base_url = base_url.rstrip("/")
        self.run = run
        self.echo = echo
        self.stream = stream
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.replies: list[dict[str, Any]] = []
        self.trace_of: dict[str, str] = dict(earlier)
        self.chat_of_trace: dict[str, str] = {trace: chat for chat, trace in earlier.items()}

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def post(self, chat_id: str, user: str, message: str) -> dict[str, Any] | None:
        body = json.dumps({"user": user, "message": message, "stream": self.stream}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/chats/{chat_id}/messages",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                reply: dict[str, Any] = json.load(response)
                return reply
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.problem(f"{chat_id}: POST failed: {exc}")
            return None

    def user(self, index: int, first: int, last: int) -> None:
        chat_id = f"{self.run}-chat-{index}"
        user = f"user-{index}"
        for number in range(first, last):
            message = message_for(chat_id, number)
            reply = self.post(chat_id, user, message)
            if reply is None:
                return
            with self.lock:
                self.replies.append({"message": message, **reply})
            self.check(reply, chat_id, user, number, message)

    def check(self, reply: dict[str, Any], chat_id: str, user: str, number: int, message: str) -> None:
        for key, expected in (
            ("chat_id", chat_id),
            ("user", user),
            ("session_id", chat_id),
            ("turn", number + 1),
        ):
            if reply.get(key) != expected:
                self.problem(f"{chat_id}: reply has {key}={reply.get(key)!r}, expected {expected!r}")
        if self.echo and reply.get("reply") != f"Hello! You said: {message}":
            self.problem(f"{chat_id}: reply {reply.get('reply')!r} is not about {message!r}")
        trace = str(reply.get("trace_id"))
        with self.lock:
            known = self.trace_of.setdefault(chat_id, trace)
            owner = self.chat_of_trace.setdefault(trace, chat_id)
        if known != trace:
            self.problem(f"{chat_id}: trace {trace}, but earlier messages were in {known}")
        if owner != chat_id:
            self.problem(f"{chat_id}: trace {trace} also reported for {owner}")


def earlier_traces(report: Path | None) -> dict[str, str]:
    """Chat id -> trace id from an earlier run's report."""
    if report is None or not report.exists():
        return {}
    found: dict[str, str] = {}
    for line in report.read_text().splitlines():
        reply = json.loads(line)
        found.setdefault(reply["chat_id"], reply["trace_id"])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base_url")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--messages", type=int, default=5, help="messages per user (up to this number)")
    parser.add_argument("--first", type=int, default=0, help="start at this message (continuing a run)")
    parser.add_argument("--run", default=None, help="the chats' prefix (default: a new random one)")
    parser.add_argument("--report", type=Path, default=None, help="append one JSON line per reply")
    parser.add_argument("--echo", action="store_true", help="check replies are the test model's echo")
    parser.add_argument("--no-stream", action="store_true", help="ask for non-streamed runs")
    args = parser.parse_args(argv)
    run = args.run or f"r{secrets.token_hex(3)}"
    load = Load(args.base_url, run, args.echo, not args.no_stream, earlier_traces(args.report))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.users) as pool:
        list(pool.map(lambda i: load.user(i, args.first, args.messages), range(args.users)))
    elapsed = time.perf_counter() - started
    if args.report is not None:
        with args.report.open("a") as out:
            for reply in load.replies:
                out.write(json.dumps(reply) + "\n")
    chats = len({reply["chat_id"] for reply in load.replies})
    print(
        f"load: run {run}, {args.users} users, messages {args.first}..{args.messages - 1}: "
        f"{len(load.replies)} replies in {elapsed:.2f} s, {chats} chats"
    )
    for problem in load.problems[:20]:
        print(f"load: PROBLEM {problem}")
    print("load: OK" if not load.problems else f"load: {len(load.problems)} problems")
    return 0 if not load.problems else 1


if __name__ == "__main__":
    sys.exit(main())
