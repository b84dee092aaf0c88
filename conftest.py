"""Root pytest hooks: `pytest` runs tests/, `pytest --benchmark-only` runs benchmarks/ (timed), and
`pytest --benchmark-disable` adds benchmarks/ with each body run once, untimed: how the test
command (scripts/test.sh) makes a broken benchmark fail CI."""

from pathlib import Path

import pytest

# Benchmark files whose untimed run alone costs minutes on a 2-core CPU (whole Mask R-CNN training
# steps, ours and torchvision's): the test command imports and collects them, and skips the bodies.
COLLECT_ONLY = {"test_model_bench.py"}


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="device for benchmarks (cpu|cuda)")


def pytest_ignore_collect(collection_path: Path, config):
    # Benchmarks are not tests: collect them only when timed (--benchmark-only) or when checked
    # once without timing (--benchmark-disable).
    if "benchmarks" in collection_path.parts and not (
        config.getoption("benchmark_only") or config.getoption("benchmark_disable")
    ):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only") or not config.getoption("benchmark_disable"):
        return
    skip = pytest.mark.skip(
        reason="collected only: its untimed run costs minutes; time it with --benchmark-only"
    )
    for item in items:
        if item.path.name in COLLECT_ONLY and "benchmarks" in item.path.parts:
            item.add_marker(skip)
