"""A real client release outside the supported range: one warning naming it, the client working unrecorded.

The default run has supported releases installed, so these tests skip there; the compat matrix's
``outside`` sessions (noxfile.py) install releases below the floors (openai 1.62.0, whose chat
module is not where the patches look; anthropic 0.40.0, before the messages module moved) and run
this file. docs/compatibility.md lists them as tested "not supported" cells.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

import sdk
from sdk.instrumentation import instrumentor
from sdk.instrumentation.base import applied
from sdk.version import in_range, installed_version


def call_openai(module: Any, url: str) -> str:
    client = module.OpenAI(base_url=url, api_key="test-key", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    return str(reply.choices[0].message.content)


def call_anthropic(module: Any, url: str) -> str:
    client = module.Anthropic(base_url=url, api_key="test-key", max_retries=0)
    reply = client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    )
    return str(reply.content[0].text)


CLIENTS: dict[str, tuple[Callable[[Any, str], str], str]] = {
    "openai": (call_openai, "openai_url"),
    "anthropic": (call_anthropic, "anthropic_url"),
}


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_an_installed_release_outside_the_range_warns_once_and_the_client_still_works(
    library, llm_server, captured, caplog
):
    """With a release below the floor installed, the library's import and a second instrument() give exactly one warning naming the package, its version and the supported range; nothing is patched, and the client's call works, unrecorded."""
    inst = instrumentor(library)
    version = installed_version(inst.package)
    if version is None or in_range(version, inst.supported):
        pytest.skip(
            f"{inst.package} {version} is supported here (the compat matrix's `outside` sessions run this)"
        )
    call, url = CLIENTS[library]
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        module = importlib.import_module(library)
        sdk.instrument(library)  # asked again: still one warning
        with sdk.session("s"):
            answer = call(module, getattr(llm_server, url))
    assert answer
    messages = [r.getMessage() for r in caplog.records if inst.package in r.getMessage()]
    assert messages == [
        f"sessiontrace: {inst.package} {version} is outside the range this SDK supports ({inst.supported}); "
        "its calls are not recorded. Install a supported version, or see docs/compatibility.md"
    ]
    assert not [p.name for p in inst.patches if p.name in applied()]
    assert [s.name for s in captured.spans()] == ["s"]
