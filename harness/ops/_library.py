"""The `harness` operator library: harness._C's kernels in PyTorch's dispatcher, plus the switch for
the value checks that read device memory.

Importing harness._C registers every op's schema (csrc/ops.cpp), its CPU/CUDA kernels and its
autocast rule; `library()` then adds the Python parts once: the fake (meta) implementations of
harness/ops/_meta.py and the autograd formulas registered by each op's module through `on_load`.
Callers go through `library()` (the Python faces in harness/ops/ do), so the library is complete before
the first call, and torch.compile, fake tensors and torch.library.opcheck see every op.

Debug checks: shape, dtype and device checks are free (host metadata) and always run. Checks of
values (NaN, index ranges, offsets) read the data, which on CUDA waits for the device; they run
only when `debug_checks()` is on: `set_debug(True)`, or HARNESS_DEBUG_CHECKS=1 in the environment.
With them off, the kernels still never read or write out of bounds: they skip or zero what is
invalid.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from harness import extension

__all__ = ["debug_checks", "library", "on_load", "set_debug"]

_on_load: list[Callable[[], None]] = []
_debug = os.environ.get("HARNESS_DEBUG_CHECKS", "0") not in ("", "0")


def on_load(register: Callable[[], None]) -> Callable[[], None]:
    """Decorator: run `register` (e.g. torch.library.register_autograd calls) when the library loads."""
    _on_load.append(register)
    return register


@functools.cache
def library() -> torch._ops._OpNamespace:
    """torch.ops.harness with every registration in place (loads harness._C on first use)."""
    extension.load()
    from harness.ops import _meta

    _meta.register()
    for register in _on_load:
        register()
    return torch.ops.harness


def set_debug(enabled: bool) -> None:
    """Turn the value checks on (tests, debugging) or off (the default: no host syncs)."""
    global _debug
    if not isinstance(enabled, bool):
        raise TypeError(f"set_debug takes a bool, got {enabled!r}")
    _debug = enabled


def debug_checks() -> bool:
    """True when the ops check values that need the data (and sync with the GPU to do so)."""
    return _debug
