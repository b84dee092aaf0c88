"""Shared test setup: the `cuda` marker skips without a GPU; every test starts from fixed seeds."""

from __future__ import annotations

import random
import signal

import numpy as np
import pytest
import torch

# A suite started in the background of a non-interactive shell (`./scripts/test.sh &`, nohup) runs
# with SIGINT ignored, which every process it starts inherits: bash cannot trap an ignored signal,
# so the tests that stop run_and_time.sh with SIGINT would fail for the way they were started.
# A handled signal is reset to its default in the children, as a user's terminal would leave it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def devices() -> list:
    """CPU always, CUDA as a `cuda`-marked case (reported as skipped where there is no GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
