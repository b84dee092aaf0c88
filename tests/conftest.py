"""Shared test setup: the `cuda` marker skips without a GPU; every test starts from fixed seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


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
