"""Secrets out of spans before they leave: run on the export worker, never on the program's threads.

Every span a pipeline exports (the SDK's, other instrumentations', the application's) passes
through `scrub_spans` on its way to the exporters, the spool and the local files: its name,
attribute and event-attribute values (exception messages and stack traces included), link attributes and the
status description are scrubbed (see sdk/redaction.py). A span with nothing to scrub is exported
as it is; one with something gets a scrubbed copy. The backend dialects' attributes
(sdk/dialects.py) are added in the same pass, before scrubbing, so that a span the SDK made is
copied once for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, Status

from sdk.otel_internals import plain_attributes, span_fields, span_origin
from sdk.redaction import Scrubber

Translate = Callable[[ReadableSpan], "dict[str, Any] | None"]
"""A span's attributes with a dialect's added (a new dict), or None when it adds none."""


def scrub_spans(
    spans: Sequence[ReadableSpan], scrubber: Scrubber, translate: Translate | None = None
) -> list[ReadableSpan]:
    """`spans`, each with the attributes `translate` adds and scrubbed (the same object when
    neither changed anything)."""
    if translate is None:
        if not scrubber.enabled:
            return list(spans)
        return [scrub_span(span, scrubber) for span in spans]
    return [scrub_span(span, scrubber, translate(span)) for span in spans]


def scrub_span(
    span: ReadableSpan, scrubber: Scrubber, translated: dict[str, Any] | None = None
) -> ReadableSpan:
    """One span with its secrets removed (a copy), or the span itself when it has none.
    `translated`: attributes to use instead of the span's own (its dialect attributes added)."""
    (
        context,
        parent,
        span_name,
        kind,
        start_time,
        end_time,
        raw_attributes,
        raw_events,
        raw_links,
        span_status,
    ) = span_fields(span)
    name = scrubber.text(span_name)
    attributes = scrubber.attributes(
        translated if translated is not None else plain_attributes(raw_attributes)
    )
    if attributes is None:
        attributes = translated
    events = _events(raw_events, scrubber) if raw_events else None
    links = _links(raw_links, scrubber) if raw_links else None
    status = span_status
    description = status.description
    if description:
        clean = scrubber.text(description)
        if clean != description:
            status = Status(status.status_code, clean)
    if (
        attributes is None
        and events is None
        and links is None
        and status is span_status
        and name == span_name
    ):
        return span
    resource, scope = span_origin(span)
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=events if events is not None else raw_events,
        links=links if links is not None else raw_links,
        kind=kind,
        status=status,
        start_time=start_time,
        end_time=end_time,
        instrumentation_scope=scope,
    )


def _events(events: Sequence[Event], scrubber: Scrubber) -> list[Event] | None:
    changed: list[Event] | None = None
    for index, event in enumerate(events):
        attributes = scrubber.attributes(event.attributes)
        if attributes is None:
            continue
        if changed is None:
            changed = list(events)
        changed[index] = Event(event.name, attributes, event.timestamp, limit=None)
    return changed


def _links(links: Sequence[Link], scrubber: Scrubber) -> list[Link] | None:
    changed: list[Link] | None = None
    for index, link in enumerate(links):
        attributes = scrubber.attributes(link.attributes)
        if attributes is None:
            continue
        if changed is None:
            changed = list(links)
        changed[index] = Link(link.context, attributes)
    return changed
