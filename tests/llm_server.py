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
- ``usage-details``: a text answer whose usage has the detail counts (``CACHE_READ_TOKENS`` cached
  or read from the cache, ``CACHE_WRITE_TOKENS`` written to it (Anthropic), ``REASONING_TOKENS``
  of the output for reasoning (OpenAI));
- ``script`` (any model whose name starts with it): a scripted *agent* model for agent
  frameworks (OpenAI chat completions and Responses), deciding from the request alone (see
  `scripted_tool_call`): it calls a handoff tool (``transfer_to_*``) or a function tool the
  request offers, with arguments that fit the tool's JSON schema, until this turn holds the
  tool's result, then answers with text. Its ids (responses, messages, tool calls) are unique;
- anything else: a text answer, ``"Hello! You said: <the last user text>"``.

Usage is always ``INPUT_TOKENS`` in and ``OUTPUT_TOKENS`` out. Responses streams send the API's
full event sequence (``response.created``, ``response.in_progress``, ``response.output_item.added``,
the content part or function-call argument events, ``response.output_item.done``,
``response.completed``). A Responses request's ``conversation`` comes back in the response, as
the API returns it (``{"id": ...}``). The benchmarks import this module too (``benchmarks/llm_call.py``), so it
depends only on the standard library.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

INPUT_TOKENS = 12
OUTPUT_TOKENS = 5
CACHE_READ_TOKENS = 4
CACHE_WRITE_TOKENS = 3
REASONING_TOKENS = 2
USAGE_DETAILS = "usage-details"
EMBEDDING = [0.25, -0.5, 0.75]
TOOL_ARGUMENTS = {"city": "Paris"}
CREATED = 1_700_000_000
SCRIPT = "script"
"""Models whose name starts with this are the scripted agent model."""
HANDOFF_PREFIX = "transfer_to_"
"""The OpenAI Agents SDK names a handoff's tool ``transfer_to_<agent>``."""


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


class ToolCall(NamedTuple):
    """A tool call the server answers with."""

    id: str
    name: str
    arguments: str
    """JSON text."""


def new_id(prefix: str) -> str:
    """A unique id such as ``resp_3f2a...`` (the scripted model's ids are all unique)."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def offered_tools(tools: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, JSON schema of the parameters) of each function tool a request offers (chat or Responses shape)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        spec = tool["function"] if isinstance(tool.get("function"), dict) else tool
        name, parameters = spec.get("name"), spec.get("parameters")
        if isinstance(name, str) and name:
            found.append((name, parameters if isinstance(parameters, dict) else {}))
    return found


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return target
    return schema


def _value_for(key: str, schema: Any, root: dict[str, Any], text: str) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for choice in schema.get("anyOf") or schema.get("oneOf") or ():
        choice = _resolve(choice, root)
        if isinstance(choice, dict) and choice.get("type") != "null":
            return _value_for(key, choice, root, text)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds:
        return TOOL_ARGUMENTS["city"] if key == "city" else text
    if "integer" in kinds or "number" in kinds:
        return 1
    if "boolean" in kinds:
        return False
    if "array" in kinds:
        return []
    if "object" in kinds:
        return tool_arguments(schema, text, root)
    return None


def tool_arguments(schema: dict[str, Any], text: str, root: dict[str, Any] | None = None) -> dict[str, Any]:
    """Arguments that fit a tool's JSON schema: every property, an enum's first value, ``city``
    ``"Paris"``, other strings the user's text, numbers 1, booleans false."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {key: _value_for(key, prop, root or schema, text) for key, prop in properties.items()}


class Turn(NamedTuple):
    """What the scripted model reads in a request: the items after the last user message."""

    text: str
    """The last user message's text."""
    results: list[str]
    """The names of the tools whose results this turn holds, in order."""
    last_result: str | None
    """The tool whose result is the request's last item (None: the last item is no tool result)."""


def chat_turn(messages: Any) -> Turn:
    """The current turn of a chat completions request."""
    items = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    users = [i for i, m in enumerate(items) if m.get("role") == "user"]
    turn = items[users[-1] :] if users else items
    names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for m in turn
        for call in m.get("tool_calls") or ()
        if isinstance(call, dict)
    }
    results = [str(names.get(m.get("tool_call_id")) or "") for m in turn if m.get("role") == "tool"]
    last = turn[-1] if turn else {}
    last_result = str(names.get(last.get("tool_call_id")) or "") if last.get("role") == "tool" else None
    return Turn(_last_user_text(items), results, last_result)


def responses_turn(items: Any) -> Turn:
    """The current turn of a Responses API request."""
    if not isinstance(items, list):
        return Turn(str(items or ""), [], None)
    items = [i for i in items if isinstance(i, dict)]
    users = [n for n, i in enumerate(items) if i.get("role") == "user"]
    turn = items[users[-1] :] if users else items
    names = {i.get("call_id"): i.get("name") for i in turn if i.get("type") == "function_call"}
    results = [
        str(names.get(i.get("call_id")) or "") for i in turn if i.get("type") == "function_call_output"
    ]
    last = turn[-1] if turn else {}
    last_result = (
        str(names.get(last.get("call_id")) or "") if last.get("type") == "function_call_output" else None
    )
    return Turn(_last_user_text(items), results, last_result)


def scripted_tool_call(tools: Any, turn: Turn) -> ToolCall | None:
    """What the scripted agent model does next: a tool call, or None for a text answer.

    1. The last item is the result of a tool other than a handoff: answer with text.
    2. A handoff tool (``transfer_to_*``) is offered and no handoff happened this turn: call it.
    3. Another function tool is offered and none of them was answered this turn: call the first.
    4. Otherwise: answer with text.
    """
    if turn.last_result is not None and not turn.last_result.startswith(HANDOFF_PREFIX):
        return None
    offered = offered_tools(tools)
    handoffs = [name for name, _ in offered if name.startswith(HANDOFF_PREFIX)]
    if handoffs and not any(r.startswith(HANDOFF_PREFIX) for r in turn.results):
        return ToolCall(new_id("call_"), handoffs[0], "{}")
    plain = [(name, schema) for name, schema in offered if not name.startswith(HANDOFF_PREFIX)]
    if plain and not any(r in {name for name, _ in plain} for r in turn.results):
        name, schema = plain[0]
        return ToolCall(new_id("call_"), name, json.dumps(tool_arguments(schema, turn.text)))
    return None


FIXED_TOOL_CALL = ToolCall("call_1", "get_weather", json.dumps(TOOL_ARGUMENTS))
"""What model ``tool-call`` always asks for."""


def chat_reply(body: dict[str, Any]) -> tuple[str, ToolCall | None, str]:
    """What the server answers a chat completions request with: (text, tool call or None, completion id)."""
    model = str(body.get("model", ""))
    text = answer_for(_last_user_text(body.get("messages")))
    if model.startswith(SCRIPT):
        return (
            text,
            scripted_tool_call(body.get("tools"), chat_turn(body.get("messages"))),
            new_id("chatcmpl-"),
        )
    return text, FIXED_TOOL_CALL if model == "tool-call" else None, "chatcmpl-1"


def chat_completion(model: str, text: str, call: ToolCall | None, completion_id: str) -> dict[str, Any]:
    """A chat completion's JSON body (not streamed), as the server sends it; the benchmarks replay it in process."""
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text, "refusal": None}
    if call:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        ]
    data: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if call else "stop",
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
    elif model == USAGE_DETAILS:
        data["usage"]["prompt_tokens_details"] = {"cached_tokens": CACHE_READ_TOKENS}
        data["usage"]["completion_tokens_details"] = {"reasoning_tokens": REASONING_TOKENS}
    return data


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
        text, call, completion_id = chat_reply(body)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(_chat_events(model, text, call, usage, completion_id))
            return
        self._json(chat_completion(model, text, call, completion_id))

    def _responses(self, body: dict[str, Any], model: str) -> None:
        text = answer_for(_last_user_text(body.get("input")))
        if model.startswith(SCRIPT):
            call = scripted_tool_call(body.get("tools"), responses_turn(body.get("input")))
            item = _output_item(text, call, new_id("msg_"), new_id("fc_"))
            response = _response_object(model, item, "completed", new_id("resp_"))
        else:
            call = FIXED_TOOL_CALL if model == "tool-call" else None
            response = _response_object(model, _output_item(text, call, "msg_1", "fc_1"), "completed")
        if model == "no-usage":
            del response["usage"]
            response["brand_new_field"] = "x"
        elif model == USAGE_DETAILS:
            response["usage"]["input_tokens_details"] = {"cached_tokens": CACHE_READ_TOKENS}
            response["usage"]["output_tokens_details"] = {"reasoning_tokens": REASONING_TOKENS}
        conversation = body.get("conversation")
        if conversation is not None:
            response["conversation"] = {
                "id": conversation if isinstance(conversation, str) else conversation["id"]
            }
        if body.get("stream"):
            self._stream(_responses_events(model, response))
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
        elif model == USAGE_DETAILS:  # Anthropic's input_tokens leave out what was read or written
            data["usage"] = {
                "input_tokens": INPUT_TOKENS - CACHE_READ_TOKENS - CACHE_WRITE_TOKENS,
                "cache_read_input_tokens": CACHE_READ_TOKENS,
                "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
                "output_tokens": OUTPUT_TOKENS,
            }
        self._json(data)


def _chat_chunk(
    model: str, delta: dict[str, Any], finish: str | None, completion_id: str = "chatcmpl-1"
) -> str:
    return json.dumps(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
    )


def _chat_events(
    model: str, text: str, call: ToolCall | None, usage: bool, completion_id: str = "chatcmpl-1"
) -> Iterator[tuple[str | None, str]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, str]:
        return None, _chat_chunk(model, delta, finish, completion_id)

    if model == "malformed":
        yield chunk({"role": "assistant", "content": ""})
        yield None, "{not json"
        return
    yield chunk({"role": "assistant", "content": ""})
    if model == "stream-error":
        yield chunk({"content": "partial"})
        yield None, json.dumps({"error": {"message": "fake stream failure", "type": "server_error"}})
        return
    if call:
        first = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk({"tool_calls": [first]})
        for piece in _chunks(call.arguments, 6):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
    else:
        for piece in _chunks(text):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
    if usage and model != "no-usage":
        yield (
            None,
            json.dumps(
                {
                    "id": completion_id,
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


def _output_item(text: str, call: ToolCall | None, message_id: str, function_call_id: str) -> dict[str, Any]:
    """A Responses output item: a function call, or an assistant message holding `text`."""
    if call:
        return {
            "type": "function_call",
            "id": function_call_id,
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
    return {
        "type": "message",
        "id": message_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _response_object(
    model: str, item: dict[str, Any] | None, status: str, response_id: str = "resp_1"
) -> dict[str, Any]:
    done = status == "completed"
    data: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": model,
        "output": [item] if done and item is not None else [],
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


def _responses_events(model: str, final: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    seq = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> tuple[str, str]:
        return kind, json.dumps({"type": kind, "sequence_number": next(seq), **fields})

    started = _response_object(model, None, "in_progress", final["id"])
    yield event("response.created", response=started)
    if model == "malformed":
        yield "response.output_text.delta", "{not json"
        return
    item = final["output"][0]
    if model == "stream-error":
        yield event(
            "response.output_text.delta", item_id=item["id"], output_index=0, content_index=0, delta="par"
        )
        yield event("error", code="server_error", message="fake stream failure", param=None)
        return
    yield event("response.in_progress", response=started)
    place = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        yield event(
            "response.output_item.added",
            output_index=0,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        for piece in _chunks(item["arguments"], 6):
            yield event("response.function_call_arguments.delta", **place, delta=piece)
        yield event(
            "response.function_call_arguments.done", **place, arguments=item["arguments"], name=item["name"]
        )
    else:
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield event(
            "response.output_item.added",
            output_index=0,
            item={**item, "content": [], "status": "in_progress"},
        )
        yield event("response.content_part.added", **place, content_index=0, part=part)
        for piece in _chunks(text):
            yield event("response.output_text.delta", **place, content_index=0, delta=piece, logprobs=[])
        yield event("response.output_text.done", **place, content_index=0, text=text, logprobs=[])
        yield event("response.content_part.done", **place, content_index=0, part={**part, "text": text})
    yield event("response.output_item.done", output_index=0, item=item)
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
