"""The SDK's instrumentors for OpenTelemetry's zero-code ``opentelemetry-instrument`` command.

pyproject.toml registers one class per library under the ``opentelemetry_instrumentor`` entry-point
group. The command (from the opentelemetry-instrumentation package) loads each class, makes one and
calls ``instrument()`` before the program starts. Here that starts sessiontrace if the program has
not (``sdk.init()`` with its settings from the environment and the config file, as always) and
instruments the library. A program that calls ``sdk.init()`` itself keeps working as before: the
``instrument`` setting then decides, as it always does. A library that is not installed is skipped
by the command (``ModuleNotFoundError``), before anything starts; one named in OpenTelemetry's
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (by its entry-point name: ``openai``, ``anthropic``,
``autogen``, ``openai_agents``, ``langgraph``) is not loaded at all.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sdk import instrumentation, lifecycle, runtime
from sdk.version import installed_version


class _EntryPointInstrumentor:
    """One library's instrumentor, in the shape of OpenTelemetry's ``BaseInstrumentor``."""

    library = ""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The supported versions (``openai >= 1.66, < 4``)."""
        return instrumentation.instrumentor(self.library).instrumentation_dependencies()

    def instrument(self, **kwargs: Any) -> None:
        """Start sessiontrace if the program has not, then patch the library (now, or when imported)."""
        package = instrumentation.instrumentor(self.library).package
        if installed_version(package) is None:
            raise ModuleNotFoundError(f"{package} is not installed", name=package)
        if runtime.current().config is None:
            lifecycle.init()
        instrumentation.instrument(self.library)

    def uninstrument(self, **kwargs: Any) -> None:
        """Put the library's methods back."""
        instrumentation.uninstrument(self.library)


class OpenAIInstrumentor(_EntryPointInstrumentor):
    """The openai client: ``chat.completions``, ``responses`` and ``embeddings``."""

    library = "openai"


class AnthropicInstrumentor(_EntryPointInstrumentor):
    """The anthropic client: ``messages.create`` and ``messages.stream``."""

    library = "anthropic"


class AutogenInstrumentor(_EntryPointInstrumentor):
    """autogen-core's agent runtime."""

    library = "autogen"


class OpenAIAgentsInstrumentor(_EntryPointInstrumentor):
    """The OpenAI Agents SDK: runs, agents, tools, handoffs and guardrails as spans in the session."""

    library = "openai_agents"


class LangGraphInstrumentor(_EntryPointInstrumentor):
    """LangGraph: graph runs, nodes and tool calls as spans in the session."""

    library = "langgraph"
