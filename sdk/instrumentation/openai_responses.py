"""The response objects of the openai client's ``with_raw_response`` and ``with_streaming_response``, recorded.

Such a call returns a response object, not its result: the span reads the result when it is
parsed — at once for a raw response whose body has arrived, else when the program calls
``parse()`` (sync, or awaited for the async client's streaming response). A stream that
``parse()`` returns is recorded like the client's other streams, and the span ends when the
stream does; a response closed, or garbage-collected, before anything was parsed ends it too.
Imported by `sdk.instrumentation.openai` on the first such call.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import openai

from sdk.guard import internal_error
from sdk.instrumentation.genai import AsyncStream, LLMCall, ObjectProxy, SyncStream


def _end_unparsed(call: LLMCall, parsed: list[bool]) -> None:
    if not parsed:
        call.end()


class _Recording:
    """What a response object's proxy shares: the call, the API's handlers, the stream it handed out."""

    __slots__ = ("api", "call", "handlers", "parsed", "stream")

    def __init__(self, call: LLMCall, api: str, handlers: tuple[Any, Any]) -> None:
        self.call = call
        self.api = api
        self.handlers = handlers
        """The API's (result, stream) readers."""
        self.parsed: list[bool] = []
        """Non-empty once parse() returned (a stream then ends the call, not the response)."""
        self.stream: Any = None

    def record(self, parsed: Any) -> Any:
        """Read what ``parse()`` returned into the call; return it, or a recorded proxy of its stream."""
        self.parsed.append(True)
        call = self.call
        on_result, on_stream = self.handlers
        if isinstance(parsed, (openai.Stream, openai.AsyncStream)):
            if self.stream is not None and self.stream.__wrapped__ is parsed:
                return self.stream  # parse() again: the client returns its cached stream
            if call.done or on_stream is None:
                return parsed
            try:
                proxy = SyncStream if isinstance(parsed, openai.Stream) else AsyncStream
                self.stream = proxy(parsed, call, on_stream(call))
            except Exception as exc:
                internal_error(f"openai {self.api} response stream", exc)
                call.end()
                return parsed
            return self.stream
        if not call.done:
            try:
                on_result(call, parsed)
            except Exception as exc:
                internal_error(f"openai {self.api} response", exc)
            call.end()
        return parsed

    def closed(self) -> None:
        """The response was closed: the call ends here unless it has (a stream read to its end)."""
        self.call.end(stream_end="closed" if self.stream is not None else None)


class _RecordedResponse(ObjectProxy):
    """A response object (``with_raw_response``, sync ``with_streaming_response``) whose ``parse()`` is recorded."""

    def __init__(self, wrapped: Any, recording: _Recording) -> None:
        super().__init__(wrapped)
        self._self_recording = recording
        weakref.finalize(self, _end_unparsed, recording.call, recording.parsed).atexit = False

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """The client's ``parse()``, read into the span (a stream it returns is recorded as it is read)."""
        return self._self_recording.record(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        """The client's ``close()``; ends the span if nothing was parsed."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_recording.closed()


class _AsyncRecordedResponse(ObjectProxy):
    """An async ``with_streaming_response`` response whose ``await parse()`` is recorded."""

    def __init__(self, wrapped: Any, recording: _Recording) -> None:
        super().__init__(wrapped)
        self._self_recording = recording
        weakref.finalize(self, _end_unparsed, recording.call, recording.parsed).atexit = False

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        """The client's ``parse()``, read into the span (a stream it returns is recorded as it is read)."""
        return self._self_recording.record(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        """The client's ``close()``; ends the span if nothing was parsed."""
        try:
            await self.__wrapped__.close()
        finally:
            self._self_recording.closed()


def recorded(
    call: LLMCall, api: str, handlers: tuple[Any, Any], mode: str, stream: bool, response: Any
) -> Any:
    """The response object a raw or streaming-response call returned, recorded (see the module docstring)."""
    parse = getattr(response, "parse", None)
    if not callable(parse):
        call.end()
        return response
    recording = _Recording(call, api, handlers)
    if inspect.iscoroutinefunction(parse):
        return _AsyncRecordedResponse(response, recording)
    if mode == "raw" and not stream:
        # The body has arrived: read it now (the client caches what parse() returns, so the
        # program's own parse() does no second parse).
        try:
            recording.record(parse())
        except Exception:  # a body the client cannot parse: the program's own parse() says so
            call.end()
        return response
    return _RecordedResponse(response, recording)
