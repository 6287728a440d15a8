"""Beside the OpenTelemetry an application already has: what sessiontrace adds, where it exports.

An application may have its own pipeline before `init()` runs: ``opentelemetry-instrument`` (a
distro), a TracerProvider set up by hand, Logfire, OpenLLMetry (Traceloop). sessiontrace then
joins that provider (tracing.py adds its span processor: sessions, `session.id` on every span)
and this module decides which of sessiontrace's own destinations it still exports to, so that
the same spans never reach the same endpoint twice:

- `export_mode = own`: every destination of the config, as without an application pipeline;
- `export_mode = stamp`: none (the application's pipeline exports the sessions);
- `export_mode = auto` (default): each destination the application's pipeline does not already
  cover. An OTLP destination is covered by an application exporter with the same protocol and
  resolved endpoint; it is in doubt, and left to the application, when an application exporter
  sends to the same host over the other protocol (or to the same port on another path), or is
  one sessiontrace cannot see into. A console
  destination is covered by an application console exporter; the local file is sessiontrace's
  own and always written.

The plan is made at every `init()` and when the application adds a span processor to
sessiontrace's own provider later (Traceloop initialised after `sdk.init()`); docs/concepts.md
has the table, and `doctor` shows the plan for the process it runs in.

Instrumentations from others: when OpenInference's, OpenTelemetry-contrib's or OpenLLMetry's
instrumentation of an LLM client is loaded next to sessiontrace's own, sessiontrace's span wins:
inside a call it records, the others see OpenTelemetry's suppress-instrumentation flag and
record nothing (`quiet_other_instrumentations`).
"""

from __future__ import annotations

import ipaddress
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from sdk import otel_internals
from sdk.display import mask_url
from sdk.guard import internal_error, warn_once
from sdk.settings import Config

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

OTLP_HTTP = "http/protobuf"
OTLP_GRPC = "grpc"
_OTLP_MODULES = {
    "opentelemetry.exporter.otlp.proto.http": OTLP_HTTP,
    "opentelemetry.exporter.otlp.proto.grpc": OTLP_GRPC,
}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_WALK_DEPTH = 12
"""How deep wrappers may nest (Logfire: proxy > provider > multi > suppression check > main wrapper >
multi > batch processor > its worker > exporter, 8 deep)."""

OTHER_INSTRUMENTATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "openai": (
        ("openinference.instrumentation.openai", "OpenInference"),
        ("opentelemetry.instrumentation.genai.openai", "OpenTelemetry contrib"),
        ("opentelemetry.instrumentation.openai_v2", "OpenTelemetry contrib (openai-v2)"),
        ("opentelemetry.instrumentation.openai", "OpenLLMetry"),
    ),
    "anthropic": (
        ("openinference.instrumentation.anthropic", "OpenInference"),
        ("opentelemetry.instrumentation.anthropic", "OpenLLMetry"),
    ),
}
"""Other instrumentations of the LLM clients sessiontrace instruments: (module, who), by client."""


@dataclass(frozen=True)
class Destination:
    """Where one exporter of the application's pipeline sends spans."""

    kind: str
    """`otlp`, `console` or `unknown` (an exporter sessiontrace cannot see into)."""
    exporter: str
    """The exporter's class name."""
    protocol: str = ""
    url: str = ""

    def describe(self) -> str:
        """``otlp grpc 127.0.0.1:4317 (OTLPSpanExporter)``: how doctor and the messages show it."""
        if self.kind == "otlp":
            return f"otlp {self.protocol} {mask_url(self.url)} ({self.exporter})"
        if self.kind == "console":
            return f"console ({self.exporter})"
        return f"{self.exporter} (an exporter sessiontrace cannot see into)"


@dataclass(frozen=True)
class ExportPlan:
    """What sessiontrace exports beside the application's pipeline, and why."""

    mode: str
    """The `export_mode` setting."""
    application: tuple[Destination, ...] | None
    """The application pipeline's destinations; None when there is no application pipeline."""
    provider: str
    """Whose TracerProvider spans are made on (``sessiontrace`` or the application's type name)."""
    exported: tuple[str | SpanExporter, ...]
    """sessiontrace's destinations that it exports to."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(sessiontrace destination, why it is left to the application)."""
    doubt: bool = False
    """A destination was left out because sessiontrace could not tell whether it is covered."""

    @property
    def beside_application(self) -> bool:
        """Whether an application pipeline was found (sessiontrace then stamps its spans)."""
        return self.application is not None

    def summary(self) -> str:
        """One line: what is exported where (the line `init()` logs once and doctor prints)."""
        if self.application is None:
            return "no application pipeline: sessiontrace exports to " + _names(self.exported)
        theirs = ", ".join(d.describe() for d in self.application) or "nothing (no exporter)"
        ours = _names(self.exported) if self.exported else "nothing of its own (stamp only)"
        left = "; ".join(f"{name}: {why}" for name, why in self.skipped)
        text = (
            f"the application's TracerProvider ({self.provider}) exports to {theirs}; sessiontrace adds "
            f"sessions to its spans and exports to {ours} (export_mode={self.mode})"
        )
        return f"{text}; left to the application: {left}" if left else text

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines, as `doctor` shows them."""
        if self.application is None:
            return [
                ("provider", "none of the application's in this process: sessiontrace uses its own"),
                ("sessiontrace exports to", _names(self.exported)),
            ]
        rows = [
            ("provider", f"the application's ({self.provider}); sessiontrace adds its span processor"),
            ("application exports to", ", ".join(d.describe() for d in self.application) or "nothing"),
            ("sessiontrace exports to", _names(self.exported) if self.exported else "nothing (stamp only)"),
        ]
        rows += [("left to the application", f"{name}: {why}") for name, why in self.skipped]
        return rows

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict."""
        return {
            "mode": self.mode,
            "provider": self.provider,
            "application": None
            if self.application is None
            else [
                {"kind": d.kind, "exporter": d.exporter, "protocol": d.protocol, "url": mask_url(d.url)}
                for d in self.application
            ],
            "exported": [_label(d) for d in self.exported],
            "skipped": [{"destination": name, "why": why} for name, why in self.skipped],
            "doubt": self.doubt,
        }


def _names(destinations: Sequence[str | SpanExporter]) -> str:
    return ", ".join(d if isinstance(d, str) else type(d).__name__ for d in destinations) or "nothing"


# ---------------------------------------------------------------------------------------------
# What the application's pipeline exports to


def application_destinations(roots: Sequence[object], skip: object = None) -> tuple[Destination, ...]:
    """Every exporter reachable from `roots` (providers, processors, exporters), classified.

    Wrappers are looked through (Logfire's processor and exporter wrappers, multi-processors,
    batch processors); `skip` (sessiontrace's own span processor) is not entered.
    """
    found: list[Destination] = []
    seen: set[int] = {id(skip)} if skip is not None else set()
    for root in roots:
        for exporter in _leaf_exporters(root, seen, 0):
            destination = _classify(exporter)
            if destination is not None and destination not in found:
                found.append(destination)
    return tuple(found)


def _leaf_exporters(obj: object, seen: set[int], depth: int) -> Iterator[object]:
    if id(obj) in seen or depth > _WALK_DEPTH:
        return
    seen.add(id(obj))
    inner = [child for child in _pipeline_parts(obj) if id(child) not in seen]
    exporters_inside = False
    for child in inner:
        for leaf in _leaf_exporters(child, seen, depth + 1):
            exporters_inside = True
            yield leaf
    if not exporters_inside and _is_span_exporter(obj):
        yield obj


def _pipeline_parts(obj: object) -> list[object]:
    """The processors, exporters and providers `obj` holds.

    OpenTelemetry has no public API that lists a provider's span processors or a processor's
    exporter (they live in private attributes: ``TracerProvider._active_span_processor``,
    ``SynchronousMultiSpanProcessor._span_processors``, ``BatchProcessor._exporter``), and
    wrappers of other libraries hold theirs under names of their own; so this reads an object's
    instance attributes and keeps those that look like pipeline parts. This is the one place here
    that reaches into other objects' attributes.
    """
    try:
        values = list(vars(obj).values())
    except TypeError:  # no __dict__ (slots): nothing to look through
        return []
    parts: list[object] = []
    for value in values:
        items = value if isinstance(value, (list, tuple)) else (value,)
        parts += [item for item in items if _is_pipeline_part(item)]
    return parts


def sdk_provider_of(provider: object) -> TracerProvider | None:
    """The OpenTelemetry SDK TracerProvider that `provider` is, or holds (Logfire's global provider
    is a proxy around one); None for anything else."""
    if isinstance(provider, TracerProvider):
        return provider
    if not callable(getattr(provider, "add_span_processor", None)):
        return None
    inner = [part for part in _pipeline_parts(provider) if isinstance(part, TracerProvider)]
    return inner[0] if len(inner) == 1 else None


def _is_pipeline_part(value: object) -> bool:
    if isinstance(value, SpanProcessor) or _is_span_exporter(value):
        return True
    name = type(value).__name__
    return any(word in name for word in ("Processor", "Exporter", "TracerProvider"))


def _is_span_exporter(value: object) -> bool:
    from opentelemetry.sdk.trace.export import SpanExporter

    return isinstance(value, SpanExporter)


def _classify(exporter: object) -> Destination | None:
    """The destination of a leaf exporter; None for one that sends nowhere (in memory)."""
    name = type(exporter).__name__
    if name == "InMemorySpanExporter":
        return None
    for cls in type(exporter).__mro__:
        protocol = next((p for m, p in _OTLP_MODULES.items() if cls.__module__.startswith(m)), None)
        if protocol is not None and cls.__name__ == "OTLPSpanExporter":
            endpoint = otel_internals.exporter_endpoint(exporter)
            if endpoint is not None:
                return Destination("otlp", name, protocol, endpoint)
            return Destination("unknown", name)
    if "Console" in name:
        return Destination("console", name)
    return Destination("unknown", name)


# ---------------------------------------------------------------------------------------------
# The plan


def plan(config: Config, application: tuple[Destination, ...] | None, provider: str) -> ExportPlan:
    """Which of `config`'s destinations sessiontrace exports to beside `application`."""
    mode = config.export_mode
    destinations = config.destinations
    if application is None or mode == "own":
        return ExportPlan(mode, application, provider, destinations)
    if mode == "stamp":
        skipped = tuple((_label(d), "export_mode=stamp") for d in destinations if d != "none")
        return ExportPlan(mode, application, provider, (), skipped)
    exported: list[str | SpanExporter] = []
    skipped_list: list[tuple[str, str]] = []
    doubt = False
    for destination in destinations:
        why, unsure = _covered(config, destination, application)
        if why is None:
            exported.append(destination)
        else:
            skipped_list.append((_label(destination), why))
            doubt = doubt or unsure
    return ExportPlan(mode, application, provider, tuple(exported), tuple(skipped_list), doubt)


def _label(destination: str | SpanExporter) -> str:
    return destination if isinstance(destination, str) else type(destination).__name__


def _covered(
    config: Config, destination: str | SpanExporter, application: tuple[Destination, ...]
) -> tuple[str | None, bool]:
    """(why `destination` is left to the application, or None to export to it; whether in doubt)."""
    if destination in ("none", "file"):
        return None, False
    if destination == "console":
        console = [d for d in application if d.kind == "console"]
        return (
            (f"the application prints spans already ({console[0].exporter})", False)
            if console
            else (None, False)
        )
    if destination == "otlp":
        from sdk.export.otlp import traces_endpoint

        ours = traces_endpoint(config)
        return _otlp_covered(ours.protocol, ours.url, application)
    classified = _classify(destination)
    if classified is not None and classified.kind == "otlp":
        return _otlp_covered(classified.protocol, classified.url, application)
    return None, False  # an exporter instance given to init(): the user asked for it


def _otlp_covered(protocol: str, url: str, application: tuple[Destination, ...]) -> tuple[str | None, bool]:
    ours = _place(protocol, url)
    for theirs in application:
        if theirs.kind == "otlp":
            place = _place(theirs.protocol, theirs.url)
            if place == ours:
                return f"the application exports to it already ({theirs.describe()})", False
            # The same host over another protocol (a collector's 4317 and 4318), or the same port
            # on another path, is likely one backend; the same protocol on another port is another.
            if place[1] == ours[1] and (place[0] != ours[0] or place[2] == ours[2]):
                return (
                    f"in doubt: the application exports to the same host another way ({theirs.describe()})",
                    True,
                )
        elif theirs.kind == "unknown":
            return f"in doubt: the application exports through {theirs.exporter}", True
    return None, False


def _place(protocol: str, url: str) -> tuple[str, str, int, str]:
    """(protocol, host, port, path) with loopback names made one and default ports filled in."""
    text = url if "://" in url else f"//{url}"  # a gRPC exporter keeps host:port only
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "localhost").lower()
    if host in _LOOPBACK_NAMES or _is_loopback_address(host):
        host = "loopback"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else (4317 if protocol == OTLP_GRPC else 80)
    path = "" if protocol == OTLP_GRPC else parts.path.rstrip("/")
    return protocol, host, port, path


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def announce(current: ExportPlan) -> None:
    """Say once per distinct plan what sessiontrace does beside the application's pipeline."""
    if current.application is None:
        return
    warn_once(f"foreign-export {current.summary()}", "sessiontrace: %s", current.summary())
    if current.doubt:
        warn_once(
            "foreign-export-doubt",
            "sessiontrace: when it cannot tell whether the application's pipeline already sends spans "
            "where sessiontrace would, sessiontrace only adds sessions to them (set export_mode=own to "
            "export through sessiontrace's pipeline as well, export_mode=stamp to say it is meant)",
        )


def keep_session_attributes(match: Any) -> Any:
    """A Logfire scrubbing callback that keeps sessiontrace's ``session.*`` attributes.

    Logfire's default scrubbing replaces the value of every attribute whose name contains
    "session" (``[Scrubbed due to 'session']``), ``session.id`` included. Pass this to it:
    ``logfire.configure(scrubbing=logfire.ScrubbingOptions(callback=sdk.foreign.keep_session_attributes))``.
    Only a match on the word "session" in a ``session.*`` attribute's name is undone; a value
    that looks like a secret is still scrubbed.
    """
    path: tuple[Any, ...] = tuple(getattr(match, "path", ()))
    found = getattr(match, "pattern_match", None)
    if (
        len(path) == 2
        and path[0] == "attributes"
        and isinstance(path[1], str)
        and path[1].startswith("session.")
        and found is not None
        and found.group(0).lower() == "session"
    ):
        return match.value
    return None


def announce_logfire(provider: object) -> None:
    """Say once how to keep `session.*` attributes through Logfire's scrubbing."""
    if type(provider).__module__.startswith("logfire"):
        warn_once(
            "logfire-scrubbing",
            "sessiontrace: Logfire scrubs attributes whose name contains 'session' (session.id, "
            "session.state) unless logfire.configure(scrubbing=logfire.ScrubbingOptions("
            "callback=sdk.foreign.keep_session_attributes)) is used",
        )


# ---------------------------------------------------------------------------------------------
# Other instrumentations of the LLM clients


def other_instrumentations(client: str) -> tuple[str, ...]:
    """Who else instruments `client` in this process (their modules are imported), by name."""
    modules = sys.modules
    return tuple(who for module, who in OTHER_INSTRUMENTATIONS.get(client, ()) if module in modules)


def quiet_other_instrumentations(client: str, ctx: Context) -> Context:
    """`ctx` marked so that another loaded instrumentation of `client` records nothing inside a call
    sessiontrace records (one LLM span per call): OpenTelemetry's suppress-instrumentation flag
    (OpenInference and OpenLLMetry read it) and, for OpenTelemetry-contrib's GenAI instrumentations,
    the invocation data their util package reads to nest an inner call into an outer one.

    The flag's key is private to opentelemetry-api, though every OpenTelemetry and OpenInference
    instrumentation reads it: sdk/otel_internals.py sets it (`suppressed_context`).
    """
    others = other_instrumentations(client)
    if not others:
        return ctx
    warn_once(
        f"other-instrumentation-{client}",
        "sessiontrace: %s is also instrumented by %s; sessiontrace records each %s call as one span "
        "and the other instrumentation records nothing inside it (leave %s out of sessiontrace's "
        "`instrument` setting to keep the other's spans instead)",
        client,
        " and ".join(others),
        client,
        client,
    )
    ctx = otel_internals.suppressed_context(ctx)
    genai = sys.modules.get("opentelemetry.util.genai.invocation")
    if genai is not None:  # imported by OpenTelemetry-contrib's GenAI instrumentations
        try:
            ctx = otel_context.set_value(genai.CLIENT_INFERENCE_CONTEXT_KEY, genai.InferenceData(), ctx)
            ctx = otel_context.set_value(genai.CLIENT_EMBEDDING_CONTEXT_KEY, genai.EmbeddingData(), ctx)
        except Exception as exc:  # another release of the util package: its spans may then be doubled
            internal_error("quieting OpenTelemetry-contrib's GenAI instrumentation", exc)
    return ctx


def announce_other_instrumentations(clients: Sequence[str]) -> None:
    """At init(): say once which LLM clients another instrumentation also covers, and who wins."""
    for client in clients:
        if other_instrumentations(client):
            quiet_other_instrumentations(client, Context())


def plan_beside(
    config: Config, pipeline: tuple[Sequence[object], object] | None, shown: object
) -> ExportPlan:
    """The plan for `config` beside the application's `pipeline` (what its processors hang from, and
    sessiontrace's processor among them), on the global provider `shown`."""
    if pipeline is None:
        return plan(config, None, "sessiontrace")
    roots, ours = pipeline
    destinations = application_destinations(roots, ours)
    if type(shown).__name__ == "SessionTracerProvider":
        if not destinations:  # processors that export nothing (the notebook's recorder): no pipeline
            return plan(config, None, "sessiontrace")
        return plan(config, destinations, "sessiontrace's own, with processors the application added")
    return plan(config, destinations, f"{type(shown).__module__.partition('.')[0]} {type(shown).__name__}")
