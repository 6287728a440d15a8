"""W3C Trace Context and Baggage, as the SDK reads and writes them between processes and services.

`W3C` is OpenTelemetry's composite of the ``traceparent``/``tracestate`` and ``baggage``
propagators, whatever the global propagator is; `extract_w3c` reads headers as they were sent,
no trust decision made (see `sdk.inbound` for that). A base helper: it imports nothing of the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def extract_w3c(carrier: Mapping[str, str], context: Context | None = None) -> Context:
    """W3C trace context and baggage from headers, exactly as sent: no trust decision made yet.

    Header names are matched case-insensitively.
    """
    lowered = {str(k).lower(): v for k, v in carrier.items()}
    return W3C.extract(lowered, context=context)
