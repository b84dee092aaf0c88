"""Benchmarks run on CPU here; pass `--bench-device cuda` to run the same cases on a GPU."""

import pytest
import torch


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    device = torch.device(request.config.getoption("--bench-device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but no GPU is visible")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued kernels so a timed call covers its own work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
