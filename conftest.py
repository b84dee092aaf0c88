"""Root pytest hooks: `pytest` runs tests/, `pytest --benchmark-only` runs benchmarks/."""

from pathlib import Path


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="device for benchmarks (cpu|cuda)")


def pytest_ignore_collect(collection_path: Path, config):
    # Benchmarks are not tests: collect them only when asked for with --benchmark-only.
    if "benchmarks" in collection_path.parts and not config.getoption("benchmark_only"):
        return True
    return None
