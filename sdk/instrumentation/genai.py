"""What the LLM client instrumentations share: one GenAI span per call, streams, cost, metrics.

A call is an `LLMCall`: its span starts before the client's method runs (kind CLIENT, named
``{operation} {model}``, with the OpenTelemetry GenAI request attributes), the provider module
fills in what the response says, and `end()` writes the response attributes, the cost, the
session's totals, the counters and the metrics, then ends the span (recording the error, if any).
Streams are returned inside a transparent proxy (`SyncStream`, `AsyncStream`) that feeds each
chunk to the provider's handler and ends the call when the stream is exhausted, fails, is closed
or exits its ``with`` block, or is garbage-collected.

Content (prompts, completions, tool-call arguments) is recorded only with `capture_content`,
after redaction (sdk.redaction), in ``gen_ai.input.messages``, ``gen_ai.output.messages`` and
``gen_ai.system_instructions`` as JSON, as the GenAI conventions lay them out.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sdk import dialects, runtime
from sdk.attributes import to_attribute_value, write_attributes
from sdk.foreign import quiet_other_instrumentations
from sdk.guard import internal_error
from sdk.pricing import PricingTable, table_for
from sdk.redaction import Redactor, redactor_for
from sdk.semconv import SPAN_KIND
from sdk.session_core import Session, current_session, detach_quietly, end_span, session_for_trace
from sdk.state import STATE

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_write.input_tokens"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
CONVERSATION_ID = "gen_ai.conversation.id"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
REQUEST_STREAM = "gen_ai.request.stream"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"
COST = "llm.cost.total"
"""The call's cost in USD: the GenAI conventions have no cost attribute; this is OpenInference's
name, which Langfuse reads as the cost (a ``gen_ai.usage.*`` key would become a token type there)."""
STREAM_END = "sessiontrace.stream.end"
"""How a stream's span ended: ``completed``, ``closed`` (before the end), ``abandoned`` (collected unread) or ``error``."""
TOOL_CALL_EVENT = "gen_ai.tool.call"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

SUPPRESS_KEY = otel_context.create_key("sessiontrace-llm-call")
"""Set in the context while an instrumented client call runs (the client's own spans check it)."""
FRAMEWORK_MODEL_CALL = otel_context.create_key("sessiontrace-framework-model-call")
"""Set by an agent framework's bridge around a model call the framework makes: a `ModelCallMark`
that `start()` marks, so the bridge records the call itself only when no client call recorded it."""


class ModelCallMark:
    """Whether an instrumented client call ran inside a framework's model call (see FRAMEWORK_MODEL_CALL)."""

    __slots__ = ("recorded",)

    def __init__(self) -> None:
        self.recorded = False


_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


def in_instrumented_call() -> bool:
    """Whether the code running now is inside a client call that the SDK records."""
    return bool(otel_context.get_value(SUPPRESS_KEY))


def given(value: Any) -> bool:
    """False for None and the clients' "not given" sentinels (openai.omit, anthropic.NOT_GIVEN, ...)."""
    return value is not None and type(value).__name__ not in ("Omit", "NotGiven")


def get(obj: Any, *path: str) -> Any:
    """``obj.a.b`` (attributes or mapping keys), or None wherever the path breaks."""
    for name in path:
        if obj is None:
            return None
        if isinstance(obj, dict):
            obj = obj.get(name)
            continue
        try:
            value = getattr(obj, name, _ABSENT)
        except Exception:
            return None
        if value is _ABSENT:
            value = obj.get(name) if isinstance(obj, Mapping) else None
        obj = value
    return obj


_ABSENT = object()


def _valid(attrs: Mapping[str, Any], max_length: int) -> dict[str, Any]:
    """Attribute values as the span stores them (lists as tuples), to be written without re-validation."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        converted = to_attribute_value(value, max_length)
        out[key] = tuple(converted) if isinstance(converted, list) else converted
    return out


def as_int(value: Any) -> int | None:
    """An int token count, or None for anything else (a new shape, a bool, a string)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def server_of(client: Any) -> tuple[str | None, int | None]:
    """(host, port) of a client's base URL (only these two: the URL itself is not recorded)."""
    url = get(client, "base_url")
    host = get(url, "host")
    port = get(url, "port")
    if port is None:
        scheme = get(url, "scheme")
        port = 443 if scheme == "https" else 80 if scheme == "http" else None
    return (host if isinstance(host, str) and host else None), as_int(port)


class CallSettings:
    """What a call needs from the config: content capture, the redactor, the pricing table."""

    __slots__ = ("capture", "max_length", "pricing", "redactor", "texts")

    def __init__(
        self,
        capture: bool,
        redactor: Redactor,
        pricing: PricingTable,
        max_length: int,
        texts: bool = False,
    ) -> None:
        self.capture = capture
        self.redactor = redactor
        self.pricing = pricing
        self.max_length = max_length
        self.texts = texts
        """Write the question and answer texts for the OpenInference dialect (capture on only)."""


def settings_now(rt: runtime.Runtime) -> CallSettings:
    """The settings for a call starting now (capture_content may be set per session)."""
    config = rt.config
    session = current_session()
    capture = False
    if session is not None and session.config is not None:
        capture = session.config.capture_content
    elif config is not None:
        capture = config.capture_content
    return CallSettings(
        capture,
        redactor_for(config),
        table_for(config.pricing if config is not None else None),
        rt.attribute_max_length,
        capture and config is not None and dialects.OPENINFERENCE in config.dialects,
    )


class LLMCall:
    """One recorded client call: its span, and what the response said so far."""

    __slots__ = (
        "_lock",
        "asked",
        "cache_read_tokens",
        "cache_write_tokens",
        "ctx",
        "done",
        "extra",
        "finish_reasons",
        "first_chunk_ns",
        "input_tokens",
        "on_end",
        "operation",
        "output",
        "output_tokens",
        "provider",
        "reasoning_tokens",
        "request_model",
        "response_id",
        "response_model",
        "server",
        "settings",
        "span",
        "started_ns",
        "stream_error",
        "tool_calls",
    )

    def __init__(
        self,
        span: Span,
        provider: str,
        operation: str,
        request_model: str | None,
        settings: CallSettings,
        server: tuple[str | None, int | None],
    ) -> None:
        self.span = span
        self.provider = provider
        self.operation = operation
        self.request_model = request_model
        self.settings = settings
        self.server = server
        self.ctx = quiet_other_instrumentations(
            provider, otel_context.set_value(SUPPRESS_KEY, True, trace.set_span_in_context(span))
        )
        self.started_ns = time.monotonic_ns()
        self.first_chunk_ns: int | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_tokens: int | None = None
        self.cache_write_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.tool_calls: list[dict[str, Any]] = []
        """Each ``{"id", "name", "type", "arguments"}`` (arguments: a JSON string or an object)."""
        self.output: list[dict[str, Any]] = []
        """Output messages in the conventions' shape (filled only when content is captured)."""
        self.extra: dict[str, Any] = {}
        self.on_end: Callable[[LLMCall], None] | None = None
        """Called first by `end()`: a stream's accumulator puts what it gathered into the call."""
        self.stream_error: str | None = None
        """An error the stream reported as an event rather than raised (the span's status is ERROR)."""
        self.asked: str | None = None
        """The last user message's text (redacted), when the call writes texts (`CallSettings.texts`)."""
        self.done = False
        self._lock = threading.Lock()

    @property
    def capture(self) -> bool:
        """Whether this call records content."""
        return self.settings.capture

    def enter(self) -> object:
        """Make the call's span current (and mark the context as inside a recorded call)."""
        return otel_context.attach(self.ctx)

    def exit(self, token: object) -> None:
        """Undo `enter()`."""
        detach_quietly(token)

    def first_chunk(self) -> None:
        """Note the arrival of a stream's first chunk (time to first chunk)."""
        if self.first_chunk_ns is None:
            self.first_chunk_ns = time.monotonic_ns()

    def end(self, error: BaseException | None = None, stream_end: str | None = None) -> None:
        """Write what is known, count the call, end the span. Only the first call does anything."""
        with self._lock:
            if self.done:
                return
            self.done = True
        span = self.span
        try:
            self._finish(error, stream_end)
        except Exception as exc:
            internal_error("LLM span end", exc)
        finally:
            end_span(span, error if isinstance(error, Exception) else None)

    def _add_tool_call_events(self) -> None:
        """One `gen_ai.tool.call` event per tool call the model asked for (arguments only with capture)."""
        for call in self.tool_calls:
            event: dict[str, Any] = {"gen_ai.tool.name": str(call.get("name") or "")}
            if call.get("id"):
                event["gen_ai.tool.call.id"] = str(call["id"])
            event["gen_ai.tool.type"] = str(call.get("type") or "function")
            if self.capture and call.get("arguments") is not None:
                event["gen_ai.tool.call.arguments"] = arguments_text(
                    self.settings.redactor, call["arguments"]
                )
            self.span.add_event(TOOL_CALL_EVENT, event)

    def _response_attributes(self, error: BaseException | None, stream_end: str | None) -> dict[str, Any]:
        """The span attributes the response (or the error) gave: ids, model, finish reasons, tokens."""
        attrs: dict[str, Any] = dict(self.extra)
        if self.response_id:
            attrs[RESPONSE_ID] = self.response_id
        if self.response_model:
            attrs[RESPONSE_MODEL] = self.response_model
        if self.finish_reasons:
            attrs[FINISH_REASONS] = [str(r) for r in self.finish_reasons]
        if self.input_tokens is not None:
            attrs[INPUT_TOKENS] = self.input_tokens
        if self.output_tokens is not None:
            attrs[OUTPUT_TOKENS] = self.output_tokens
        if self.cache_read_tokens is not None:
            attrs[CACHE_READ_TOKENS] = self.cache_read_tokens
        if self.cache_write_tokens is not None:
            attrs[CACHE_WRITE_TOKENS] = self.cache_write_tokens
        if self.reasoning_tokens is not None:
            attrs[REASONING_TOKENS] = self.reasoning_tokens
        if self.first_chunk_ns is not None:
            attrs[TIME_TO_FIRST_CHUNK] = (self.first_chunk_ns - self.started_ns) / 1e9
        if stream_end is not None:
            attrs[STREAM_END] = stream_end
        status = get(error, "status_code")
        if isinstance(status, int) and not isinstance(status, bool):
            attrs["http.response.status_code"] = status
        return attrs

    def _finish(self, error: BaseException | None, stream_end: str | None) -> None:
        span = self.span
        now = time.monotonic_ns()
        if self.on_end is not None:
            self.on_end(self)
        if self.stream_error is not None and error is None:
            span.set_status(Status(StatusCode.ERROR, self.stream_error))
        attrs = self._response_attributes(error, stream_end)
        model = self.response_model or self.request_model
        cost = self.settings.pricing.cost(model, self.input_tokens, self.output_tokens)
        if cost is not None:
            attrs[COST] = round(cost, 10)
        elif model and (self.input_tokens is not None or self.output_tokens is not None):
            STATE.counters.llm_calls_unpriced.add()
        answer = None
        if self.capture and self.output:
            attrs[OUTPUT_MESSAGES] = self.settings.redactor.json(self.output)
            if self.settings.texts:
                answer = dialects.first_text(self.output)
        output = attrs.pop(OUTPUT_MESSAGES, None)
        valid = _valid(attrs, self.settings.max_length)
        if output is not None:
            valid[OUTPUT_MESSAGES] = (
                output  # JSON: not cut to attribute_max_length (content_max_length applies)
            )
        write_attributes(span, valid)
        self._add_tool_call_events()
        STATE.counters.llm_calls.add()
        session = session_for_trace(span.get_span_context().trace_id)
        counted_error = session is not None  # record_error() counts the error of a span in a session's trace
        if self.settings.texts and session is not None:
            dialects.note_session_content(
                session.span, self.asked, self.settings.redactor.text(answer) if answer is not None else None
            )
        if session is None:
            session = current_session()
        if session is not None:
            session.add_llm_usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cost_usd=cost,
                error=isinstance(error, Exception) and not counted_error,
            )
        _record_metrics(self, error, (now - self.started_ns) / 1e9, cost)


def arguments_text(redactor: Redactor, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            import json

            return redactor.json(json.loads(arguments))
        except ValueError:
            return redactor.text(arguments)
    return redactor.json(arguments)


def session_of_call() -> Session | None:
    """The session an LLM call starting here belongs to: the one owning the current span's trace,
    else the current session."""
    span_context = trace.get_current_span().get_span_context()
    session = session_for_trace(span_context.trace_id) if span_context.is_valid else None
    return session if session is not None else current_session()


def start(
    provider: str,
    operation: str,
    request_model: Any,
    request: Mapping[str, Any],
    *,
    client: Any = None,
    stream: bool = False,
    content: Callable[[LLMCall], Mapping[str, Any]] | None = None,
) -> LLMCall | None:
    """Start the span of a call (None when the SDK is off, or on an internal error).

    `request` holds the request attributes (None values are left out); `content(call)` gives the
    content attributes (input messages, system instructions, tool definitions), asked only when
    the call captures content, and redacted here.
    """
    rt = runtime.current()
    if not rt.enabled:
        return None
    mark = otel_context.get_value(FRAMEWORK_MODEL_CALL)
    if isinstance(mark, ModelCallMark):
        mark.recorded = True  # this call's span is the model call's (even one a budget stops)
    session = session_of_call()
    if session is not None:
        session.check_budget()  # over budget: BudgetExceeded reaches the caller, nothing is sent
    try:
        settings = settings_now(rt)
        model = request_model if isinstance(request_model, str) and request_model else None
        server = server_of(client)
        attrs: dict[str, Any] = {
            OPERATION: operation,
            PROVIDER: provider,
            SPAN_KIND: "llm",
        }
        if model:
            attrs[REQUEST_MODEL] = model
        if server[0]:
            attrs[SERVER_ADDRESS] = server[0]
        if server[1] is not None:
            attrs[SERVER_PORT] = server[1]
        if stream:
            attrs[REQUEST_STREAM] = True
        attrs.update(_valid({k: v for k, v in request.items() if given(v)}, rt.attribute_max_length))
        span = rt.tracer.start_span(f"{operation} {model}" if model else operation, kind=SpanKind.CLIENT)
        call = LLMCall(span, provider, operation, model, settings, server)
        if settings.capture and content is not None:
            redactor = settings.redactor
            for key, value in content(call).items():
                if value is not None:
                    attrs[key] = redactor.json(value)
                    if key == INPUT_MESSAGES and settings.texts:
                        asked = dialects.last_user_text(value)
                        call.asked = redactor.text(asked) if asked is not None else None
        write_attributes(span, attrs)
        return call
    except Exception as exc:
        internal_error(f"{provider} {operation} span start", exc)
        return None


# ---------------------------------------------------------------------------------------------
# Streams


ChunkHandler = Callable[[LLMCall, Any], None]
StreamHandler = Callable[[LLMCall], ChunkHandler]
"""Makes the chunk handler of one stream (an accumulator), when the call returns a stream."""


def _abandoned(call: LLMCall) -> None:
    if not call.done:
        call.end(stream_end="abandoned")


def _handle(call: LLMCall, handler: ChunkHandler, chunk: Any) -> None:
    call.first_chunk()
    try:
        handler(call, chunk)
    except Exception as exc:
        internal_error(f"{call.provider} stream chunk", exc)


if TYPE_CHECKING:
    ObjectProxy = wrapt.ObjectProxy[Any]
else:  # subscriptable only from wrapt 2.2; the supported floor is 1.16
    ObjectProxy = wrapt.ObjectProxy
"""wrapt's transparent proxy, as the proxies of a client's streams and responses subclass it."""


class SyncStream(ObjectProxy):
    """A client's stream as the program sees it (isinstance and attributes unchanged), recorded."""

    def __init__(self, wrapped: Any, call: LLMCall, handler: ChunkHandler) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_handler = handler
        finalizer = weakref.finalize(self, _abandoned, call)
        finalizer.atexit = False

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        call = self._self_call
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            call.end(stream_end="completed")
            raise
        except BaseException as exc:
            call.end(exc, stream_end="error")
            raise
        _handle(call, self._self_handler, chunk)
        return chunk

    def __enter__(self) -> SyncStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_call.end(stream_end="closed")

    def close(self) -> None:
        """Close the client's stream (and end the span, if it has not ended)."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.end(stream_end="closed")


class AsyncStream(ObjectProxy):
    """A client's async stream as the program sees it, recorded (see `SyncStream`)."""

    def __init__(self, wrapped: Any, call: LLMCall, handler: ChunkHandler) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_handler = handler
        finalizer = weakref.finalize(self, _abandoned, call)
        finalizer.atexit = False

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        call = self._self_call
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            call.end(stream_end="completed")
            raise
        except BaseException as exc:
            call.end(exc, stream_end="error")
            raise
        _handle(call, self._self_handler, chunk)
        return chunk

    async def __aenter__(self) -> AsyncStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_call.end(stream_end="closed")

    async def close(self) -> None:
        """Close the client's stream (and end the span, if it has not ended)."""
        try:
            await self.__wrapped__.close()
        finally:
            self._self_call.end(stream_end="closed")

    async def aclose(self) -> None:
        """Alias of `close()` (as the clients have)."""
        await self.close()


# ---------------------------------------------------------------------------------------------
# Calling the client's method


def call_sync(
    call: LLMCall | None,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_result: Callable[[LLMCall, Any], None],
    on_stream: StreamHandler | None = None,
    stream_type: type | None = None,
) -> Any:
    """Run the client's method inside `call`'s span; return exactly what it returned (a stream proxied).

    The user's exceptions pass through unchanged; an error in the SDK's own work is recorded as
    an internal error and never changes what the method returns.
    """
    if call is None:
        return wrapped(*args, **kwargs)
    token = call.enter()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        call.exit(token)
        call.end(exc)
        raise
    call.exit(token)
    return _result(call, result, on_result, on_stream, stream_type, SyncStream)


async def call_async(
    call: LLMCall | None,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_result: Callable[[LLMCall, Any], None],
    on_stream: StreamHandler | None = None,
    stream_type: type | None = None,
) -> Any:
    """`call_sync` for a coroutine method."""
    if call is None:
        return await wrapped(*args, **kwargs)
    token = call.enter()
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        call.exit(token)
        call.end(exc)
        raise
    call.exit(token)
    return _result(call, result, on_result, on_stream, stream_type, AsyncStream)


def _result(
    call: LLMCall,
    result: Any,
    on_result: Callable[[LLMCall, Any], None],
    on_stream: StreamHandler | None,
    stream_type: type | None,
    proxy: type,
) -> Any:
    try:
        if on_stream is not None and stream_type is not None and isinstance(result, stream_type):
            return proxy(result, call, on_stream(call))
        on_result(call, result)
    except Exception as exc:
        call.end()
        internal_error(f"{call.provider} {call.operation} response", exc)
        return result
    call.end()
    return result


# ---------------------------------------------------------------------------------------------
# Metrics (the GenAI client metrics, through the OpenTelemetry metrics API)


class GenAIInstruments(NamedTuple):
    """The GenAI client metrics (the conventions' current names) and the SDK's LLM cost counter."""

    inference_duration: Any
    embeddings_duration: Any
    time_to_first_chunk: Any
    usage: Mapping[str, Any]
    """Counters by token category: ``input``, ``output``, ``cache_read``, ``cache_write``, ``reasoning``."""
    operation_input: Any
    operation_output: Any
    embeddings_input: Any
    cost: Any


USAGE_COUNTERS = {
    "input": "gen_ai.client.inference.usage.input_tokens",
    "output": "gen_ai.client.inference.usage.output_tokens",
    "cache_read": "gen_ai.client.inference.usage.cache_read.input_tokens",
    "cache_write": "gen_ai.client.inference.usage.cache_write.input_tokens",
    "reasoning": "gen_ai.client.inference.usage.reasoning.output_tokens",
}
"""The token usage counters, each with the required ``gen_ai.token.modality`` (``unknown``: the
providers report totals, not one count per modality)."""
COST_METRIC = "sessiontrace.llm.cost_usd"
TOKEN_MODALITY = "gen_ai.token.modality"
_UNKNOWN_MODALITY = {TOKEN_MODALITY: "unknown"}


def _meter_instruments() -> GenAIInstruments:
    provider = getattr(runtime.current(), "meter_provider", None)
    key = id(provider)
    found = STATE.genai_instruments.get(key)
    if found is not None:
        return found  # type: ignore[no-any-return]
    from opentelemetry import metrics

    from sdk.version import __version__

    meter = (
        provider.get_meter("sessiontrace", __version__)
        if provider is not None
        else metrics.get_meter("sessiontrace", __version__)
    )
    made = _make_instruments(meter)
    with STATE.genai_instruments_lock:
        if len(STATE.genai_instruments) > 8:
            STATE.genai_instruments.clear()
        STATE.genai_instruments[key] = made
    return made


def _make_instruments(meter: Meter) -> GenAIInstruments:
    tokens = list(_TOKEN_BUCKETS)
    durations = list(_DURATION_BUCKETS)
    return GenAIInstruments(
        inference_duration=meter.create_histogram(
            "gen_ai.client.inference.duration",
            unit="s",
            description="Duration of GenAI inference operations.",
            explicit_bucket_boundaries_advisory=durations,
        ),
        embeddings_duration=meter.create_histogram(
            "gen_ai.client.embeddings.duration",
            unit="s",
            description="GenAI client embeddings operation duration.",
            explicit_bucket_boundaries_advisory=durations,
        ),
        time_to_first_chunk=meter.create_histogram(
            "gen_ai.client.inference.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=durations,
        ),
        usage={
            category: meter.create_counter(name, unit="{token}", description=f"Tokens used ({category}).")
            for category, name in USAGE_COUNTERS.items()
        },
        operation_input=meter.create_histogram(
            "gen_ai.client.inference.operation.input_tokens",
            unit="{token}",
            description="Input tokens per inference operation.",
            explicit_bucket_boundaries_advisory=tokens,
        ),
        operation_output=meter.create_histogram(
            "gen_ai.client.inference.operation.output_tokens",
            unit="{token}",
            description="Output tokens per inference operation.",
            explicit_bucket_boundaries_advisory=tokens,
        ),
        embeddings_input=meter.create_histogram(
            "gen_ai.client.embeddings.operation.input_tokens",
            unit="{token}",
            description="Input tokens per embeddings operation.",
            explicit_bucket_boundaries_advisory=tokens,
        ),
        cost=meter.create_counter(
            COST_METRIC,
            unit="{USD}",
            description="Cost of the instrumented LLM calls in USD, from the pricing table.",
        ),
    )


def _record_metrics(call: LLMCall, error: BaseException | None, duration: float, cost: float | None) -> None:
    instruments = _meter_instruments()
    attrs: dict[str, Any] = {OPERATION: call.operation, PROVIDER: call.provider}
    if call.request_model:
        attrs[REQUEST_MODEL] = call.request_model
    if call.response_model:
        attrs[RESPONSE_MODEL] = call.response_model
    if call.server[0]:
        attrs[SERVER_ADDRESS] = call.server[0]
    if call.server[1] is not None:
        attrs[SERVER_PORT] = call.server[1]
    if error is not None:
        attrs["error.type"] = type(error).__qualname__
    if call.operation == "embeddings":
        instruments.embeddings_duration.record(duration, attrs)
        if call.input_tokens is not None:
            instruments.embeddings_input.record(call.input_tokens, attrs)
    else:
        instruments.inference_duration.record(duration, attrs)
        if call.first_chunk_ns is not None:
            instruments.time_to_first_chunk.record((call.first_chunk_ns - call.started_ns) / 1e9, attrs)
        if call.input_tokens is not None:
            instruments.operation_input.record(call.input_tokens, attrs)
        if call.output_tokens is not None:
            instruments.operation_output.record(call.output_tokens, attrs)
        counted = {
            "input": call.input_tokens,
            "output": call.output_tokens,
            "cache_read": call.cache_read_tokens,
            "cache_write": call.cache_write_tokens,
            "reasoning": call.reasoning_tokens,
        }
        with_modality = {**attrs, **_UNKNOWN_MODALITY}
        for category, tokens in counted.items():
            if tokens:
                instruments.usage[category].add(tokens, with_modality)
    if cost:
        instruments.cost.add(cost, attrs)


# ---------------------------------------------------------------------------------------------
# Content in the conventions' shape


def text_part(text: Any) -> dict[str, Any]:
    """``{"type": "text", "content": ...}``."""
    return {"type": "text", "content": text}


def tool_call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """``{"type": "tool_call", "id", "name", "arguments"}`` (arguments parsed when they are JSON text)."""
    if isinstance(arguments, str):
        import json

        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}
