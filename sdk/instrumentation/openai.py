"""Instrumentation of the `openai` client: chat completions, responses and embeddings.

Patched (sync and async, streaming included): ``chat.completions.create``, ``responses.create``
and ``embeddings.create``: see `INSTRUMENTOR`. Each call is one span following the OpenTelemetry
GenAI conventions; see docs/instrumentation.md.

Calls through ``with_raw_response`` and ``with_streaming_response`` (LangChain and the OpenAI
Agents SDK make theirs so) return a response object instead of the result. Their span reads the
result when it is parsed: at once for a raw response whose body has arrived, else when the
program calls ``parse()``; a stream that ``parse()`` returns is recorded like any other, and the
span ends when the stream does (or when the response is closed unread).

This module imports neither `openai` nor the span machinery until `openai` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdk.instrumentation.base import Instrumentor, Patch, Wrapper

if TYPE_CHECKING:
    from sdk.instrumentation.genai import LLMCall

PROVIDER = "openai"

_CHAT_MODULE = "openai.resources.chat.completions.completions"
_RESPONSES_MODULE = "openai.resources.responses.responses"
_EMBEDDINGS_MODULE = "openai.resources.embeddings"

SUPPORTED = ">=1.66,<4"
"""The openai versions whose module layout the patches are written for (docs/compatibility.md)."""

# ---------------------------------------------------------------------------------------------
# Requests


def _max_tokens(kwargs: dict[str, Any]) -> Any:
    from sdk.instrumentation.genai import given

    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if given(kwargs.get(key)):
            return kwargs[key]
    return None


def _stop(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _output_type(response_format: Any) -> str | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        return "json"
    return "text" if kind == "text" else None


def _chat_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    n = kwargs.get("n")
    return {
        "gen_ai.request.temperature": kwargs.get("temperature"),
        "gen_ai.request.top_p": kwargs.get("top_p"),
        "gen_ai.request.max_tokens": _max_tokens(kwargs),
        "gen_ai.request.frequency_penalty": kwargs.get("frequency_penalty"),
        "gen_ai.request.presence_penalty": kwargs.get("presence_penalty"),
        "gen_ai.request.stop_sequences": _stop(kwargs.get("stop")),
        "gen_ai.request.seed": kwargs.get("seed"),
        "gen_ai.request.choice.count": n if isinstance(n, int) and n != 1 else None,
        "gen_ai.output.type": _output_type(kwargs.get("response_format")),
        "openai.request.service_tier": kwargs.get("service_tier"),
    }


def _chat_input(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    from sdk.instrumentation.genai import get, text_part, tool_call_part

    messages: list[dict[str, Any]] = []
    raw = kwargs.get("messages")
    for message in raw if isinstance(raw, (list, tuple)) else []:
        role = get(message, "role") or "user"
        parts: list[Any] = []
        content = get(message, "content")
        if role == "tool":
            parts.append(
                {"type": "tool_call_response", "id": get(message, "tool_call_id"), "response": content}
            )
        elif isinstance(content, str):
            parts.append(text_part(content))
        elif isinstance(content, (list, tuple)):
            for part in content:
                if get(part, "type") == "text":
                    parts.append(text_part(get(part, "text")))
                else:
                    parts.append(part)
        for call in get(message, "tool_calls") or ():
            parts.append(
                tool_call_part(
                    get(call, "id"), get(call, "function", "name"), get(call, "function", "arguments")
                )
            )
        messages.append({"role": role, "parts": parts})
    return messages


def _chat_content(kwargs: dict[str, Any]) -> Any:
    def content(call: LLMCall) -> dict[str, Any]:
        tools = kwargs.get("tools")
        from sdk.instrumentation.genai import INPUT_MESSAGES, TOOL_DEFINITIONS, given

        return {INPUT_MESSAGES: _chat_input(kwargs), TOOL_DEFINITIONS: tools if given(tools) else None}

    return content


def _conversation_id(conversation: Any) -> str | None:
    """The id of a Responses call's server-side conversation (``conversation="conv_..."`` or
    ``{"id": "conv_..."}``): the only conversation id the OpenAI API has, so the only one recorded."""
    from sdk.instrumentation.genai import get

    found = conversation if isinstance(conversation, str) else get(conversation, "id")
    return found if isinstance(found, str) and found else None


def _responses_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    from sdk.instrumentation.genai import CONVERSATION_ID

    text = kwargs.get("text")
    previous = kwargs.get("previous_response_id")
    return {
        "gen_ai.request.temperature": kwargs.get("temperature"),
        "gen_ai.request.top_p": kwargs.get("top_p"),
        "gen_ai.request.max_tokens": _max_tokens(kwargs),
        "gen_ai.output.type": _output_type(text.get("format") if isinstance(text, dict) else None),
        "gen_ai.request.previous_response.id": previous if isinstance(previous, str) and previous else None,
        CONVERSATION_ID: _conversation_id(kwargs.get("conversation")),
        "openai.request.service_tier": kwargs.get("service_tier"),
    }


def _responses_content(kwargs: dict[str, Any]) -> Any:
    def content(call: LLMCall) -> dict[str, Any]:
        from sdk.instrumentation.genai import (
            INPUT_MESSAGES,
            SYSTEM_INSTRUCTIONS,
            TOOL_DEFINITIONS,
            get,
            given,
            text_part,
        )

        raw = kwargs.get("input")
        messages: list[dict[str, Any]] = []
        if isinstance(raw, str):
            messages.append({"role": "user", "parts": [text_part(raw)]})
        elif isinstance(raw, (list, tuple)):
            for item in raw:
                role = get(item, "role")
                body = get(item, "content")
                if role is not None and isinstance(body, str):
                    messages.append({"role": role, "parts": [text_part(body)]})
                elif role is not None and isinstance(body, (list, tuple)):
                    parts = [text_part(get(p, "text")) if get(p, "text") is not None else p for p in body]
                    messages.append({"role": role, "parts": parts})
                else:
                    messages.append({"role": "user", "parts": [item]})
        instructions = kwargs.get("instructions")
        tools = kwargs.get("tools")
        return {
            INPUT_MESSAGES: messages,
            SYSTEM_INSTRUCTIONS: [text_part(instructions)] if isinstance(instructions, str) else None,
            TOOL_DEFINITIONS: tools if given(tools) else None,
        }

    return content


def _embeddings_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    from sdk.instrumentation.genai import given

    fmt = kwargs.get("encoding_format")
    return {
        "gen_ai.request.encoding_formats": [fmt] if given(fmt) and isinstance(fmt, str) else None,
        "gen_ai.embeddings.dimension.count": kwargs.get("dimensions"),
    }


# ---------------------------------------------------------------------------------------------
# Responses


def _usage(call: LLMCall, usage: Any, input_key: str, output_key: str) -> None:
    from sdk.instrumentation.genai import as_int, get

    if usage is None:
        return
    tokens_in = as_int(get(usage, input_key))
    tokens_out = as_int(get(usage, output_key))
    if tokens_in is not None:
        call.input_tokens = tokens_in
    if tokens_out is not None:
        call.output_tokens = tokens_out
    cached = as_int(get(usage, f"{input_key}_details", "cached_tokens"))
    if cached:
        call.cache_read_tokens = cached
    reasoning = as_int(get(usage, f"{output_key}_details", "reasoning_tokens"))
    if reasoning:
        call.reasoning_tokens = reasoning


def _identity(call: LLMCall, result: Any) -> None:
    from sdk.instrumentation.genai import get

    response_id = get(result, "id")
    model = get(result, "model")
    if isinstance(response_id, str) and response_id:
        call.response_id = response_id
    if isinstance(model, str) and model:
        call.response_model = model


def _chat_result(call: LLMCall, result: Any) -> None:
    from sdk.instrumentation.genai import get, text_part, tool_call_part

    _identity(call, result)
    _usage(call, get(result, "usage"), "prompt_tokens", "completion_tokens")
    fingerprint = get(result, "system_fingerprint")
    if isinstance(fingerprint, str):
        call.extra["openai.response.system_fingerprint"] = fingerprint
    tier = get(result, "service_tier")
    if isinstance(tier, str):
        call.extra["openai.response.service_tier"] = tier
    choices = get(result, "choices")
    for choice in choices if isinstance(choices, (list, tuple)) else ():
        reason = get(choice, "finish_reason")
        if isinstance(reason, str):
            call.finish_reasons.append(reason)
        message = get(choice, "message")
        parts: list[Any] = []
        text = get(message, "content")
        if isinstance(text, str):
            parts.append(text_part(text))
        for tool in get(message, "tool_calls") or ():
            name, arguments = get(tool, "function", "name"), get(tool, "function", "arguments")
            call.tool_calls.append(
                {"id": get(tool, "id"), "name": name, "type": get(tool, "type"), "arguments": arguments}
            )
            parts.append(tool_call_part(get(tool, "id"), name, arguments))
        if call.capture:
            call.output.append(
                {"role": get(message, "role") or "assistant", "parts": parts, "finish_reason": reason}
            )


class _ChatStream:
    """Accumulates a chat completion stream's chunks into the call."""

    def __init__(self, call: LLMCall) -> None:
        self.text: dict[int, list[str]] = {}
        self.finish: dict[int, str] = {}
        self.tools: dict[tuple[int, int], dict[str, Any]] = {}
        call.on_end = self.materialize

    def __call__(self, call: LLMCall, chunk: Any) -> None:
        from sdk.instrumentation.genai import get

        _identity(call, chunk)
        _usage(call, get(chunk, "usage"), "prompt_tokens", "completion_tokens")
        choices = get(chunk, "choices")
        for choice in choices if isinstance(choices, (list, tuple)) else ():
            index = get(choice, "index") or 0
            reason = get(choice, "finish_reason")
            if isinstance(reason, str):
                self.finish[index] = reason
            delta = get(choice, "delta")
            text = get(delta, "content")
            if isinstance(text, str) and text and call.capture:
                self.text.setdefault(index, []).append(text)
            for tool in get(delta, "tool_calls") or ():
                key = (index, get(tool, "index") or 0)
                entry = self.tools.setdefault(key, {"id": None, "name": None, "type": None, "arguments": ""})
                for field in ("id", "type"):
                    if get(tool, field):
                        entry[field] = get(tool, field)
                if get(tool, "function", "name"):
                    entry["name"] = get(tool, "function", "name")
                piece = get(tool, "function", "arguments")
                if isinstance(piece, str) and call.capture:
                    entry["arguments"] += piece

    def materialize(self, call: LLMCall) -> None:
        from sdk.instrumentation.genai import text_part, tool_call_part

        call.finish_reasons = [self.finish[i] for i in sorted(self.finish)]
        call.tool_calls = [
            {**entry, "arguments": entry["arguments"] or None} for _, entry in sorted(self.tools.items())
        ]
        if not call.capture:
            return
        for index in sorted(set(self.text) | set(self.finish) | {i for i, _ in self.tools}):
            parts: list[Any] = []
            if index in self.text:
                parts.append(text_part("".join(self.text[index])))
            for (i, _), entry in sorted(self.tools.items()):
                if i == index:
                    parts.append(tool_call_part(entry["id"], entry["name"], entry["arguments"]))
            call.output.append({"role": "assistant", "parts": parts, "finish_reason": self.finish.get(index)})


def responses_result(call: LLMCall, result: Any) -> None:
    from sdk.instrumentation.genai import CONVERSATION_ID, get, text_part, tool_call_part

    _identity(call, result)
    _usage(call, get(result, "usage"), "input_tokens", "output_tokens")
    reason = get(result, "incomplete_details", "reason") or get(result, "status")
    if isinstance(reason, str):
        call.finish_reasons = [reason]
    tier = get(result, "service_tier")
    if isinstance(tier, str):
        call.extra["openai.response.service_tier"] = tier
    conversation = _conversation_id(get(result, "conversation"))
    if conversation is not None:
        call.extra[CONVERSATION_ID] = conversation
    output = get(result, "output")
    parts: list[Any] = []
    call.tool_calls = []
    for item in output if isinstance(output, (list, tuple)) else ():
        kind = get(item, "type")
        if kind == "message":
            for piece in get(item, "content") or ():
                text = get(piece, "text")
                if isinstance(text, str):
                    parts.append(text_part(text))
        elif kind == "function_call":
            name, arguments = get(item, "name"), get(item, "arguments")
            call.tool_calls.append(
                {"id": get(item, "call_id"), "name": name, "type": "function", "arguments": arguments}
            )
            parts.append(tool_call_part(get(item, "call_id"), name, arguments))
    if call.capture:
        call.output = [{"role": "assistant", "parts": parts, "finish_reason": reason}]


class _ResponsesStream:
    """Reads a responses stream's events into the call (the final event carries the whole response)."""

    def __init__(self, call: LLMCall) -> None:
        self.text: list[str] = []
        self.complete = False
        call.on_end = self.materialize

    def __call__(self, call: LLMCall, event: Any) -> None:
        from sdk.instrumentation.genai import get

        kind = get(event, "type")
        if kind is None and get(event, "event") == "error":  # openai < 1.98 yields it untyped: {event, data}
            kind, event = "error", get(event, "data") or event
        response = get(event, "response")
        if kind in ("response.completed", "response.incomplete", "response.failed") and response is not None:
            responses_result(call, response)
            self.complete = True
        elif response is not None:
            _identity(call, response)
        elif kind == "response.output_text.delta" and call.capture:
            delta = get(event, "delta")
            if isinstance(delta, str):
                self.text.append(delta)
        elif kind == "error":
            call.extra["error.type"] = str(get(event, "code") or "error")
            call.stream_error = str(get(event, "message") or "stream error")

    def materialize(self, call: LLMCall) -> None:
        from sdk.instrumentation.genai import text_part

        if not self.complete and call.capture and self.text:
            call.output = [
                {"role": "assistant", "parts": [text_part("".join(self.text))], "finish_reason": None}
            ]


def _embeddings_result(call: LLMCall, result: Any) -> None:
    from sdk.instrumentation.genai import as_int, get

    model = get(result, "model")
    if isinstance(model, str) and model:
        call.response_model = model
    tokens = as_int(get(result, "usage", "prompt_tokens"))
    if tokens is not None:
        call.input_tokens = tokens


# ---------------------------------------------------------------------------------------------
# Wrappers


def _start(instance: Any, api: str, kwargs: dict[str, Any]) -> LLMCall | None:
    from sdk.instrumentation import genai

    stream = kwargs.get("stream") is True
    if api == "chat":
        request, content = _chat_request(kwargs), _chat_content(kwargs)
    elif api == "embeddings":
        request, content = _embeddings_request(kwargs), None
    else:
        request, content = _responses_request(kwargs), _responses_content(kwargs)
    return genai.start(
        PROVIDER,
        "embeddings" if api == "embeddings" else "chat",
        kwargs.get("model"),
        request,
        client=getattr(instance, "_client", None),
        stream=stream,
        content=content,
    )


_HANDLERS: dict[str, tuple[Any, Any]] = {
    "chat": (_chat_result, _ChatStream),
    "embeddings": (_embeddings_result, None),
    "responses": (responses_result, _ResponsesStream),
}
"""Per API: (read a response into the call, make a stream's accumulator)."""


_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""The header the client's ``with_raw_response`` (``true``, ``raw``) and ``with_streaming_response``
(``stream``) wrappers add to the call's ``extra_headers``: the method then returns a response object."""


def _raw_mode(kwargs: dict[str, Any]) -> str | None:
    """``raw`` or ``stream`` when the call returns a response object rather than its result."""
    headers = kwargs.get("extra_headers")
    value = headers.get(_RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    if value in ("true", "raw"):
        return "raw"
    return "stream" if value == "stream" else None


def _sync_wrapper(api: str) -> Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from openai import Stream

        from sdk.instrumentation import genai

        if not INSTRUMENTOR.instrumented:  # a method captured while patched (with_raw_response's)
            return wrapped(*args, **kwargs)
        on_result, on_stream = _HANDLERS[api]
        call = _start(instance, api, kwargs)
        mode = _raw_mode(kwargs)
        if call is None or mode is None:
            return genai.call_sync(call, wrapped, args, kwargs, on_result, on_stream, Stream)
        token = call.enter()
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.exit(token)
            call.end(exc)
            raise
        call.exit(token)
        from sdk.instrumentation.openai_responses import recorded

        return recorded(call, api, _HANDLERS[api], mode, kwargs.get("stream") is True, response)

    return wrapper


def _async_wrapper(api: str) -> Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from openai import AsyncStream

        from sdk.instrumentation import genai

        if not INSTRUMENTOR.instrumented:
            return wrapped(*args, **kwargs)
        on_result, on_stream = _HANDLERS[api]
        call = _start(instance, api, kwargs)
        mode = _raw_mode(kwargs)
        if call is None or mode is None:
            return genai.call_async(call, wrapped, args, kwargs, on_result, on_stream, AsyncStream)
        return _raw_async(call, api, mode, wrapped, args, kwargs)

    return wrapper


async def _raw_async(
    call: LLMCall, api: str, mode: str, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    token = call.enter()
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        call.exit(token)
        call.end(exc)
        raise
    call.exit(token)
    from sdk.instrumentation.openai_responses import recorded

    return recorded(call, api, _HANDLERS[api], mode, kwargs.get("stream") is True, response)


_PATCHED = (
    (_CHAT_MODULE, "Completions", "chat", "openai.chat.completions.create"),
    (_RESPONSES_MODULE, "Responses", "responses", "openai.responses.create"),
    (_EMBEDDINGS_MODULE, "Embeddings", "embeddings", "openai.embeddings.create"),
)

INSTRUMENTOR = Instrumentor(
    "openai",
    "openai",
    SUPPORTED,
    tuple(
        patch
        for module, owner, api, name in _PATCHED
        for patch in (
            Patch(module, owner, "create", _sync_wrapper(api), name),
            Patch(module, f"Async{owner}", "create", _async_wrapper(api), f"{name} (async)"),
        )
    ),
    requires=("sdk.instrumentation.genai", "sdk.instrumentation.openai_responses"),
)
"""``chat.completions.create``, ``responses.create`` and ``embeddings.create``, sync and async."""
