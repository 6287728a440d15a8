"""Instrumentation of the `anthropic` client: ``messages.create`` and the ``messages.stream`` helper.

Patched, sync and async: ``messages.create`` (``stream=True`` included) and ``messages.stream(...)``,
whose request starts when its manager is entered: see `INSTRUMENTOR`. Each call is one span
following the OpenTelemetry GenAI conventions.

Recent `anthropic` releases start a span of their own for each API call. For the calls the SDK
records, that span is not started (the client checks the SDK's context mark through a patch of
its span starter), so a call is one span, not two; the client's other calls keep theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdk.instrumentation.base import Instrumentor, Patch

if TYPE_CHECKING:
    from sdk.instrumentation.genai import LLMCall

PROVIDER = "anthropic"

_MESSAGES_MODULE = "anthropic.resources.messages.messages"
_CLIENT_MODULE = "anthropic._base_client"
_NATIVE_SPAN = "anthropic native span (suppressed inside recorded calls)"

SUPPORTED = ">=1.0,<3"
"""The anthropic versions whose module layout the patches are written for (docs/compatibility.md)."""


def _native_span(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from sdk.instrumentation.genai import in_instrumented_call

    if in_instrumented_call():
        return None
    return wrapped(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Requests and responses


def _request(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "gen_ai.request.max_tokens": kwargs.get("max_tokens"),
        "gen_ai.request.temperature": kwargs.get("temperature"),
        "gen_ai.request.top_p": kwargs.get("top_p"),
        "gen_ai.request.top_k": kwargs.get("top_k"),
        "gen_ai.request.stop_sequences": kwargs.get("stop_sequences"),
    }


def _blocks_to_parts(content: Any) -> list[Any]:
    from sdk.instrumentation.genai import get, text_part, tool_call_part

    if isinstance(content, str):
        return [text_part(content)]
    parts: list[Any] = []
    for block in content if isinstance(content, (list, tuple)) else ():
        kind = get(block, "type")
        if kind == "text":
            parts.append(text_part(get(block, "text")))
        elif kind == "tool_use":
            parts.append(tool_call_part(get(block, "id"), get(block, "name"), get(block, "input")))
        elif kind == "tool_result":
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": get(block, "tool_use_id"),
                    "response": get(block, "content"),
                }
            )
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": get(block, "thinking")})
        else:
            parts.append(block)
    return parts


def _content(kwargs: dict[str, Any]) -> Any:
    def content(call: LLMCall) -> dict[str, Any]:
        from sdk.instrumentation.genai import (
            INPUT_MESSAGES,
            SYSTEM_INSTRUCTIONS,
            TOOL_DEFINITIONS,
            get,
            given,
        )

        raw = kwargs.get("messages")
        messages = [
            {"role": get(m, "role") or "user", "parts": _blocks_to_parts(get(m, "content"))}
            for m in (raw if isinstance(raw, (list, tuple)) else ())
        ]
        system = kwargs.get("system")
        tools = kwargs.get("tools")
        return {
            INPUT_MESSAGES: messages,
            SYSTEM_INSTRUCTIONS: _blocks_to_parts(system) if given(system) else None,
            TOOL_DEFINITIONS: tools if given(tools) else None,
        }

    return content


def _usage(call: LLMCall, usage: Any) -> None:
    """Token counts; input tokens include cache reads and writes, as the GenAI conventions ask."""
    from sdk.instrumentation.genai import as_int, get

    if usage is None:
        return
    plain = as_int(get(usage, "input_tokens"))
    read = as_int(get(usage, "cache_read_input_tokens"))
    written = as_int(get(usage, "cache_creation_input_tokens"))
    if plain is not None:
        call.input_tokens = plain + (read or 0) + (written or 0)
    if read:
        call.cache_read_tokens = read
    if written:
        call.cache_write_tokens = written
    output = as_int(get(usage, "output_tokens"))
    if output is not None:
        call.output_tokens = output


def _identity(call: LLMCall, message: Any) -> None:
    from sdk.instrumentation.genai import get

    message_id, model = get(message, "id"), get(message, "model")
    if isinstance(message_id, str) and message_id:
        call.response_id = message_id
    if isinstance(model, str) and model:
        call.response_model = model


def _message_result(call: LLMCall, message: Any) -> None:
    from sdk.instrumentation.genai import get

    _identity(call, message)
    _usage(call, get(message, "usage"))
    reason = get(message, "stop_reason")
    if isinstance(reason, str):
        call.finish_reasons = [reason]
    content = get(message, "content")
    for block in content if isinstance(content, (list, tuple)) else ():
        if get(block, "type") == "tool_use":
            call.tool_calls.append(
                {
                    "id": get(block, "id"),
                    "name": get(block, "name"),
                    "type": "function",
                    "arguments": get(block, "input"),
                }
            )
    if call.capture:
        call.output = [{"role": "assistant", "parts": _blocks_to_parts(content), "finish_reason": reason}]


class _EventStream:
    """Accumulates a raw message event stream into the call."""

    def __init__(self, call: LLMCall) -> None:
        self.blocks: dict[int, dict[str, Any]] = {}
        self.reason: str | None = None
        call.on_end = self.materialize

    def __call__(self, call: LLMCall, event: Any) -> None:
        from sdk.instrumentation.genai import get

        kind = get(event, "type")
        if kind == "message_start":
            message = get(event, "message")
            _identity(call, message)
            _usage(call, get(message, "usage"))
        elif kind == "content_block_start":
            block = get(event, "content_block")
            self.blocks[get(event, "index") or 0] = {
                "type": get(block, "type"),
                "id": get(block, "id"),
                "name": get(block, "name"),
                "text": [],
            }
        elif kind == "content_block_delta":
            entry = self.blocks.get(get(event, "index") or 0)
            delta = get(event, "delta")
            if entry is not None and call.capture:
                piece = get(delta, "text") or get(delta, "partial_json") or get(delta, "thinking")
                if isinstance(piece, str):
                    entry["text"].append(piece)
        elif kind == "message_delta":
            reason = get(event, "delta", "stop_reason")
            if isinstance(reason, str):
                self.reason = reason
            usage = get(event, "usage")
            from sdk.instrumentation.genai import as_int

            output = as_int(get(usage, "output_tokens"))
            if output is not None:
                call.output_tokens = output
            if as_int(get(usage, "input_tokens")) is not None:
                _usage(call, usage)

    def materialize(self, call: LLMCall) -> None:
        from sdk.instrumentation.genai import text_part, tool_call_part

        if self.reason is not None:
            call.finish_reasons = [self.reason]
        parts: list[Any] = []
        for _, block in sorted(self.blocks.items()):
            text = "".join(block["text"])
            if block["type"] == "tool_use":
                call.tool_calls.append(
                    {"id": block["id"], "name": block["name"], "type": "function", "arguments": text or None}
                )
                parts.append(tool_call_part(block["id"], block["name"], text))
            elif block["type"] == "thinking":
                parts.append({"type": "reasoning", "content": text})
            else:
                parts.append(text_part(text))
        if call.capture:
            call.output = [{"role": "assistant", "parts": parts, "finish_reason": self.reason}]


# ---------------------------------------------------------------------------------------------
# Wrappers


def _start(instance: Any, kwargs: dict[str, Any], stream: bool) -> LLMCall | None:
    from sdk.instrumentation import genai

    return genai.start(
        PROVIDER,
        "chat",
        kwargs.get("model"),
        _request(kwargs),
        client=getattr(instance, "_client", None),
        stream=stream,
        content=_content(kwargs),
    )


def _sync_create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from anthropic import Stream

    from sdk.instrumentation import genai

    call = _start(instance, kwargs, kwargs.get("stream") is True)
    return genai.call_sync(call, wrapped, args, kwargs, _message_result, _EventStream, Stream)


def _async_create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from anthropic import AsyncStream

    from sdk.instrumentation import genai

    call = _start(instance, kwargs, kwargs.get("stream") is True)
    return genai.call_async(call, wrapped, args, kwargs, _message_result, _EventStream, AsyncStream)


def _request_attribute(manager: Any) -> str | None:
    """The name under which a stream manager keeps its request (a private, name-mangled attribute)."""
    for cls in type(manager).__mro__:
        name = f"_{cls.__name__}__api_request"
        if name in vars(manager):
            return name
    return None


def _sync_stream_helper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    manager = wrapped(*args, **kwargs)
    try:
        name = _request_attribute(manager)
        if name is not None:
            request = getattr(manager, name)

            def traced_request() -> Any:
                from anthropic import Stream

                from sdk.instrumentation import genai

                call = _start(instance, kwargs, True)
                return genai.call_sync(call, request, (), {}, _message_result, _EventStream, Stream)

            setattr(manager, name, traced_request)
    except Exception as exc:
        from sdk.guard import internal_error

        internal_error("anthropic messages.stream", exc)
    return manager


def _async_stream_helper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    manager = wrapped(*args, **kwargs)
    try:
        name = _request_attribute(manager)
        if name is not None:
            pending = getattr(manager, name)  # an awaitable: the request starts when it is awaited

            async def traced_request() -> Any:
                from anthropic import AsyncStream

                from sdk.instrumentation import genai

                async def send() -> Any:
                    return await pending

                try:
                    call = _start(instance, kwargs, True)
                except BaseException:  # the session is over its budget: the request is never sent
                    close = getattr(pending, "close", None)
                    if callable(close):
                        close()
                    raise
                return await genai.call_async(call, send, (), {}, _message_result, _EventStream, AsyncStream)

            setattr(manager, name, traced_request())
    except Exception as exc:
        from sdk.guard import internal_error

        internal_error("anthropic messages.stream (async)", exc)
    return manager


INSTRUMENTOR = Instrumentor(
    "anthropic",
    "anthropic",
    SUPPORTED,
    (
        Patch(_MESSAGES_MODULE, "Messages", "create", _sync_create, "anthropic.messages.create"),
        Patch(
            _MESSAGES_MODULE, "AsyncMessages", "create", _async_create, "anthropic.messages.create (async)"
        ),
        Patch(_MESSAGES_MODULE, "Messages", "stream", _sync_stream_helper, "anthropic.messages.stream"),
        Patch(
            _MESSAGES_MODULE,
            "AsyncMessages",
            "stream",
            _async_stream_helper,
            "anthropic.messages.stream (async)",
        ),
        # Releases before 1.14 start no span of their own: nothing to suppress there.
        Patch(_CLIENT_MODULE, None, "start_api_call_span", _native_span, _NATIVE_SPAN, optional=True),
    ),
    requires=("sdk.instrumentation.genai",),
)
"""``messages.create`` (``stream=True`` included) and the ``messages.stream`` helper, sync and async."""
