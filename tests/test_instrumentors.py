"""The instrumentors: OpenTelemetry's shape, supported ranges, and one warning instead of a silent no-op."""

from __future__ import annotations

import importlib
import logging
from importlib import metadata

import openai
import pytest

import sdk
from sdk.instrumentation import FRAMEWORKS, LIBRARIES, LLM_LIBRARIES, instrumentor
from sdk.instrumentation.base import Instrumentor, Patch, applied
from sdk.settings import INSTRUMENTABLE
from sdk.version import in_range, release


def passthrough(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs)


@pytest.fixture(autouse=True)
def _openai_modules_imported():
    """openai imports its resource modules lazily: import the patched ones, so patches apply at once."""
    for patch in instrumentor("openai").patches:
        importlib.import_module(patch.module)


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("1.68.0", ">=1.68,<4", True),
        ("3.51.0", ">=1.68,<4", True),
        ("4.0.0", ">=1.68,<4", False),
        ("1.67.9", ">=1.68,<4", False),
        ("0.4.9", ">=0.4.9,<0.8", True),
        ("2.0.0rc1", ">=2", True),
        ("1.2", "==1.2.0", True),
        ("1.2.1", "!=1.2.1", False),
    ],
)
def test_version_ranges(version, spec, expected):
    """Version ranges compare numeric releases, the way the supported ranges are written."""
    assert in_range(version, spec) is expected
    assert release("10.2.3.post1") == (10, 2, 3)


def test_every_library_declares_its_supported_range_in_opentelemetrys_shape():
    """Each built-in instrumentor declares its package and range (instrumentation_dependencies), and the installed test versions are inside them."""
    assert set(LLM_LIBRARIES + FRAMEWORKS) == set(INSTRUMENTABLE)
    for name in LIBRARIES:
        inst = instrumentor(name)
        (dependency,) = inst.instrumentation_dependencies()
        assert dependency.startswith(f"{inst.package} >=")
        assert in_range(metadata.version(inst.package), inst.supported), name


def test_a_version_outside_the_range_warns_once_with_the_versions_and_patches_nothing(caplog):
    """An installed version outside the supported range gets one warning naming the package, its version and the range, and is not patched."""
    real = instrumentor("openai")
    narrow = Instrumentor(
        "openai-narrow",
        "openai",
        ">=99,<100",
        tuple(p._replace(name=f"narrow {p.name}") for p in real.patches),
    )
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        narrow.instrument()
        narrow.instrument()
    try:
        warnings = [r.getMessage() for r in caplog.records if "outside the range" in r.getMessage()]
        assert warnings == [
            f"sessiontrace: openai {openai.__version__} is outside the range this SDK supports (>=99,<100); "
            "its calls are not recorded. Install a supported version, or see docs/compatibility.md"
        ]
        assert not [name for name in applied() if name.startswith("narrow ")]
    finally:
        narrow.uninstrument()


def test_a_missing_class_or_method_warns_once_naming_it(caplog):
    """A patched method the installed version lacks is warned about once (package, version, range); an optional one is not."""
    inst = Instrumentor(
        "openai-missing",
        "openai",
        ">=1",
        (
            Patch(
                "openai.resources.embeddings", "Embeddings", "no_such_method", passthrough, "missing create"
            ),
            Patch("openai.resources.embeddings", "NoSuchClass", "create", passthrough, "missing class"),
            Patch(
                "openai.resources.embeddings",
                None,
                "nothing_here",
                passthrough,
                "optional one",
                optional=True,
            ),
        ),
    )
    with caplog.at_level(logging.WARNING, logger="sessiontrace"):
        inst.instrument()
        inst.instrument()
    inst.uninstrument()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Embeddings.no_such_method" in m for m in messages) == 1
    assert sum("NoSuchClass.create" in m for m in messages) == 1
    assert not any("nothing_here" in m for m in messages)
    missing = [m for m in messages if "has no" in m]
    assert len(missing) == 2
    assert all(f"openai {openai.__version__}" in m and m.endswith("(supported: >=1)") for m in missing)


def test_instrument_and_uninstrument_from_the_face():
    """sdk.uninstrument() removes the LLM patches, sdk.instrument() puts them back; an unknown name is a ValueError."""
    sdk.init(exporter="none")
    assert "openai.chat.completions.create" in applied()
    sdk.uninstrument("openai")
    assert "openai.chat.completions.create" not in applied()
    sdk.instrument("openai")
    assert "openai.chat.completions.create" in applied()
    with pytest.raises(ValueError, match="unknown library 'cohere'"):
        sdk.instrument("cohere")
