"""A program that set up OpenTelemetry its own way, and sessiontrace beside it: run by tests/test_foreign.py.

    python foreign_app.py SETUP ORDER [--inits N] [--shutdown] [--http URL] [--openai URL]

With ``--instrumentor``, OpenInference's or OpenTelemetry-contrib's openai instrumentor is
applied first. SETUP is how the application set up OpenTelemetry: `instrument` (the program runs under
``opentelemetry-instrument``, which did it before this file runs), `by-hand` (a TracerProvider
with a BatchSpanProcessor and an OTLP/HTTP exporter to $APP_OTLP_ENDPOINT; after init(), that
processor added to the global provider), `logfire`
(``logfire.configure(send_to_logfire=False, console=False)``, which reads the OTEL_EXPORTER_OTLP_*
variables) or `traceloop` (``Traceloop.init(api_endpoint=$APP_OTLP_ENDPOINT)``). ORDER is
`before` or `after` ``sdk.init()``. The program then makes: a raw span in the auto session, an
explicit session with a raw span (and an HTTP request, an OpenAI call, a Logfire span where
asked), a failing session, and, with ``--shutdown``, a raw span after ``sdk.shutdown()``. It prints
one JSON line: the session ids and states it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import frameworks  # tests/ is on PYTHONPATH: the loopback-only network log

frameworks.log_network_at_exit()


def set_up(setup: str, order: str) -> None:
    """Set up OpenTelemetry as the application would (by hand after init(): a processor on the global provider)."""
    endpoint = os.environ.get("APP_OTLP_ENDPOINT", "")
    if setup == "by-hand":
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces"))
        if order == "after":  # OpenTelemetry keeps the first global provider: add to it
            trace.get_tracer_provider().add_span_processor(processor)  # type: ignore[attr-defined]
            return
        provider = TracerProvider(resource=Resource({"service.name": "app"}))
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
    elif setup == "logfire":
        import logfire

        import sdk.foreign

        scrubbing = logfire.ScrubbingOptions(callback=sdk.foreign.keep_session_attributes)
        logfire.configure(send_to_logfire=False, console=False, service_name="app", scrubbing=scrubbing)
    elif setup == "traceloop":
        from traceloop.sdk import Traceloop

        Traceloop.init(app_name="app", api_endpoint=endpoint, telemetry_enabled=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setup", choices=["instrument", "by-hand", "logfire", "traceloop"])
    parser.add_argument("order", choices=["before", "after"])
    parser.add_argument("--inits", type=int, default=1)
    parser.add_argument("--shutdown", action="store_true")
    parser.add_argument("--http", default="")
    parser.add_argument("--openai", default="")
    parser.add_argument("--instrumentor", choices=["openinference", "contrib"], default=None)
    options = parser.parse_args()

    if options.instrumentor == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
    elif options.instrumentor == "contrib":
        from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()

    if options.order == "before":
        set_up(options.setup, options.order)
    from opentelemetry import trace

    import sdk

    for _ in range(options.inits):
        sdk.init(service_name="app", auto_start_session=True, console_summary=False)
    if options.order == "after":
        set_up(options.setup, options.order)
    tracer = trace.get_tracer("app")
    auto = sdk.current_session()
    with tracer.start_as_current_span("in-auto"):
        pass
    with sdk.session("explicit") as explicit:
        with tracer.start_as_current_span("in-session"):
            if options.http:
                import requests

                requests.get(options.http, timeout=10)
            if options.openai:
                import openai

                client = openai.OpenAI(base_url=options.openai, api_key="test-key")
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
            if options.setup == "logfire":
                import logfire

                with logfire.span("logfire-span"):
                    pass
    try:
        with sdk.session("failing") as failing:
            raise ValueError("boom")
    except ValueError:
        pass
    if options.shutdown:
        sdk.shutdown()
        with tracer.start_as_current_span("after-shutdown"):
            pass
    report = {
        "auto": auto.id if auto is not None else None,
        "explicit": explicit.id,
        "failing": failing.id,
        "states": {"explicit": str(explicit.state), "failing": str(failing.state)},
        "stats": {"internal_errors": sdk.stats().internal_errors},
    }
    print(json.dumps(report), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
