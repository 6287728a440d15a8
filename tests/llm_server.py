"""A fake LLM API on 127.0.0.1 that speaks OpenAI's and Anthropic's wire formats, SSE included.

    with LLMServer() as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="test", max_retries=0)

Endpoints: OpenAI ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``;
Anthropic ``POST /v1/messages``. The reply depends on the request's ``model``, so tests need no
shared state:

- ``error-429`` / ``error-500``: that HTTP status with the provider's error body;
- ``malformed``: a 200 whose body is not JSON (for a stream: an event whose data is not JSON);
- ``no-usage``: a valid response without usage and with fields the clients do not know;
- ``tool-call``: the model asks for the ``get_weather`` tool (``{"city": "Paris"}``);
- ``stream-error``: a stream that sends one chunk, then an error;
- anything else: a text answer, ``"Hello! You said: <the last user text>"``.

Usage is always ``INPUT_TOKENS`` in and ``OUTPUT_TOKENS`` out. The benchmarks import this module
too (``benchmarks/llm_call.py``), so it depends only on the standard library.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INPUT_TOKENS = 12
OUTPUT_TOKENS = 5
EMBEDDING = [0.25, -0.5, 0.75]
TOOL_ARGUMENTS = {"city": "Paris"}
CREATED = 1_700_000_000


def _last_user_text(messages: Any) -> str:
    """The text of the last user message (OpenAI chat, Anthropic messages or a Responses input)."""
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role", "user") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part
            )
    return ""


def answer_for(text: str) -> str:
    """The text answer the server gives to a prompt."""
    return f"Hello! You said: {text}"


def _chunks(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        self.server.owner.record(self.path, dict(self.headers.items()), raw)
        path = self.path.split("?", 1)[0].rstrip("/")
        anthropic = path.endswith("/messages")
        model = str(body.get("model", ""))
        if model.startswith("error-"):
            self._error(int(model.split("-", 1)[1]), anthropic)
            return
        if model == "malformed" and not body.get("stream"):
            self._send(200, b'{"id": "broken", "choices": [', "application/json")
            return
        if path.endswith("/chat/completions"):
            self._chat(body, model)
        elif path.endswith("/responses"):
            self._responses(body, model)
        elif path.endswith("/embeddings"):
            self._embeddings(body, model)
        elif anthropic:
            self._messages(body, model)
        else:
            self._send(404, b'{"error": {"message": "not found"}}', "application/json")

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-request-id", "req_test")
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, data: Any) -> None:
        self._send(200, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, anthropic: bool) -> None:
        if anthropic:
            kind = "rate_limit_error" if status == 429 else "api_error"
            data: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": f"fake {status}"}}
        else:
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            data = {"error": {"message": f"fake {status}", "type": kind, "param": None, "code": kind}}
        self._send(status, json.dumps(data).encode(), "application/json")

    def _stream(self, events: Iterator[tuple[str | None, str]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event, data in events:
                frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
                self.wfile.write(frame.encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client closed the stream early
            pass

    # -- OpenAI ----------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any], model: str) -> None:
        text = answer_for(_last_user_text(body.get("messages")))
        tool = model == "tool-call"
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(_chat_events(model, text, tool, usage))
            return
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else text, "refusal": None}
        if tool:
            message["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(TOOL_ARGUMENTS)},
                }
            ]
        data: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_test",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": INPUT_TOKENS,
                "completion_tokens": OUTPUT_TOKENS,
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            },
        }
        if model == "no-usage":
            del data["usage"]
            data["brand_new_field"] = {"nested": [1, 2, 3]}
            data["choices"][0]["another_new_field"] = True
        self._json(data)

    def _responses(self, body: dict[str, Any], model: str) -> None:
        text = answer_for(_last_user_text(body.get("input")))
        response = _response_object(model, text, "completed")
        if model == "no-usage":
            del response["usage"]
            response["brand_new_field"] = "x"
        if body.get("stream"):
            self._stream(_responses_events(model, text, response))
            return
        self._json(response)

    def _embeddings(self, body: dict[str, Any], model: str) -> None:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and not isinstance(inputs[0], int) else 1
        packed: Any = EMBEDDING
        if body.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        data: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": packed} for i in range(count)],
            "model": model,
            "usage": {"prompt_tokens": INPUT_TOKENS, "total_tokens": INPUT_TOKENS},
        }
        if model == "no-usage":
            del data["usage"]
        self._json(data)

    # -- Anthropic -------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], model: str) -> None:
        text = answer_for(_last_user_text(body.get("messages")))
        tool = model == "tool-call"
        if body.get("stream"):
            self._stream(_anthropic_events(model, text, tool))
            return
        content: list[dict[str, Any]] = (
            [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": TOOL_ARGUMENTS}]
            if tool
            else [{"type": "text", "text": text}]
        )
        data: dict[str, Any] = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }
        if model == "no-usage":
            del data["usage"]
            data["brand_new_field"] = {"nested": True}
        self._json(data)


def _chat_chunk(model: str, delta: dict[str, Any], finish: str | None) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
    )


def _chat_events(model: str, text: str, tool: bool, usage: bool) -> Iterator[tuple[str | None, str]]:
    if model == "malformed":
        yield None, _chat_chunk(model, {"role": "assistant", "content": ""}, None)
        yield None, "{not json"
        return
    yield None, _chat_chunk(model, {"role": "assistant", "content": ""}, None)
    if model == "stream-error":
        yield None, _chat_chunk(model, {"content": "partial"}, None)
        yield None, json.dumps({"error": {"message": "fake stream failure", "type": "server_error"}})
        return
    if tool:
        arguments = json.dumps(TOOL_ARGUMENTS)
        first = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        yield None, _chat_chunk(model, {"tool_calls": [first]}, None)
        for piece in _chunks(arguments, 6):
            yield (
                None,
                _chat_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None),
            )
        yield None, _chat_chunk(model, {}, "tool_calls")
    else:
        for piece in _chunks(text):
            yield None, _chat_chunk(model, {"content": piece}, None)
        yield None, _chat_chunk(model, {}, "stop")
    if usage and model != "no-usage":
        yield (
            None,
            json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": INPUT_TOKENS,
                        "completion_tokens": OUTPUT_TOKENS,
                        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
                    },
                }
            ),
        )
    yield None, "[DONE]"


def _response_object(model: str, text: str, status: str) -> dict[str, Any]:
    done = status == "completed"
    output = (
        [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else []
    )
    if done and model == "tool-call":
        output = [
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": json.dumps(TOOL_ARGUMENTS),
                "status": "completed",
            }
        ]
    data: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
    }
    if done:
        data["usage"] = {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
    return data


def _responses_events(model: str, text: str, final: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    seq = iter(range(1000))

    def event(kind: str, **fields: Any) -> tuple[str, str]:
        return kind, json.dumps({"type": kind, "sequence_number": next(seq), **fields})

    yield event("response.created", response=_response_object(model, "", "in_progress"))
    if model == "malformed":
        yield "response.output_text.delta", "{not json"
        return
    if model == "stream-error":
        yield event(
            "response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta="par"
        )
        yield event("error", code="server_error", message="fake stream failure", param=None)
        return
    for piece in _chunks(text):
        yield event(
            "response.output_text.delta",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=[],
        )
    yield event("response.completed", response=final)


def _anthropic_events(model: str, text: str, tool: bool) -> Iterator[tuple[str | None, str]]:
    def event(kind: str, **fields: Any) -> tuple[str, str]:
        return kind, json.dumps({"type": kind, **fields})

    yield event(
        "message_start",
        message={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
        },
    )
    if model == "malformed":
        yield "content_block_start", "{not json"
        return
    yield "ping", json.dumps({"type": "ping"})
    if tool:
        block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
        yield event("content_block_start", index=0, content_block=block)
        for piece in _chunks(json.dumps(TOOL_ARGUMENTS), 6):
            yield event(
                "content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": piece}
            )
    else:
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        pieces = ["partial"] if model == "stream-error" else _chunks(text)
        for piece in pieces:
            yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
        if model == "stream-error":
            yield event("error", error={"type": "overloaded_error", "message": "fake stream failure"})
            return
    yield event("content_block_stop", index=0)
    usage = {} if model == "no-usage" else {"output_tokens": OUTPUT_TOKENS}
    yield event(
        "message_delta",
        delta={"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
        usage=usage,
    )
    yield event("message_stop")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LLMServer


class LLMServer:
    """The fake API, serving from a daemon thread on 127.0.0.1 until `close()` (or the ``with`` ends)."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="llm-server"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.requests.append((path, headers, body))
            del self.requests[:-1000]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
