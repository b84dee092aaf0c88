"""Loading `harness._C` with errors that say what to do when it is missing or stale."""

from __future__ import annotations

import functools
from types import ModuleType

import torch

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or run ./scripts/test.sh once)"


class ExtensionError(ImportError):
    """harness._C is missing or was built against another torch."""


@functools.cache
def load() -> ModuleType:
    """Import harness._C, checking that it was built against the running torch."""
    try:
        from harness import _C
    except ImportError as exc:
        raise ExtensionError(f"harness._C is not importable ({exc}); {BUILD_HINT}") from exc
    built = _C.torch_version()
    if built != torch.__version__:
        raise ExtensionError(
            f"harness._C was built against torch {built} but torch {torch.__version__} is running; "
            f"rebuild: {BUILD_HINT}"
        )
    return _C
