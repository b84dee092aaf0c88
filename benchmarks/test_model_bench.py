"""Our Mask R-CNN beside torchvision's (same hyperparameters, same inputs, same precision): a whole
training step, and the RPN + ROI heads alone.

Run: `.venv/bin/python -m pytest benchmarks/test_model_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine; `-m "not slow"` leaves out the 800 px case). Groups pair
`ours` with `peer`; the models and inputs are built by benchmarks/model_cases.py (see there how
torchvision's input transform is bypassed so both models see the same padded tensor).

Cases, batch 2, seeded synthetic images with 3-8 convex objects each:
- train_step_320: forward + backward + SGD step at 320 x 480, fp32;
- train_step_320_bf16: the same under bf16 autocast (both models);
- train_step_800: the same at 800 x 1333 (padded to 800 x 1344), fp32; slow on a CPU;
- heads_320: RPN + ROI heads forward and backward on fixed, precomputed FPN maps at 320 x 480;
- heads_800: the same at 800 x 1333; slow on a CPU.

pytest-benchmark runs one case's rounds after the other's; on a machine with a varying load,
`python -m benchmarks.model_cases` (see there) times both in interleaved rounds instead.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import sync
from benchmarks.model_cases import build_case, build_heads_case, fpn_features, make_inputs

BATCH = 2
SIZE_320 = (320, 480)
SIZE_800 = (800, 1333)
# A CPU step takes seconds: a few explicit rounds after one warm-up (first-call allocations and
# the anchor cache) instead of pytest-benchmark's calibration. A GPU step takes a fraction of one.
ROUNDS = 3
ROUNDS_800 = 1
ROUNDS_CUDA = 20


def _bench(benchmark, case, device: torch.device, autocast: torch.dtype | None, rounds: int):
    def step() -> None:
        case.step(autocast)
        sync(device)

    rounds = ROUNDS_CUDA if device.type == "cuda" else rounds
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)


def _train_step(benchmark, which, device, size, autocast=None, rounds=ROUNDS) -> None:
    case = build_case(which, make_inputs(BATCH, *size), device)
    _bench(benchmark, case, device, autocast, rounds)


def _heads_inputs(device: torch.device, size: tuple[int, int]):
    inputs = make_inputs(BATCH, *size)
    return inputs, fpn_features(inputs, device)


@pytest.fixture(scope="module")
def heads_inputs(bench_device):
    """The 320 px batch and its FPN maps from our backbone, shared by both heads cases."""
    return _heads_inputs(bench_device, SIZE_320)


@pytest.fixture(scope="module")
def heads_inputs_800(bench_device):
    """The 800 px batch and its FPN maps, shared by both 800 px heads cases."""
    return _heads_inputs(bench_device, SIZE_800)


def _heads(benchmark, which, device, heads_inputs, rounds=ROUNDS) -> None:
    inputs, features = heads_inputs
    _bench(benchmark, build_heads_case(which, inputs, features), device, None, rounds)


@pytest.mark.benchmark(group="train_step_320")
def test_train_step_320_ours(benchmark, bench_device):
    _train_step(benchmark, "ours", bench_device, SIZE_320)


@pytest.mark.benchmark(group="train_step_320")
def test_train_step_320_peer(benchmark, bench_device):
    _train_step(benchmark, "peer", bench_device, SIZE_320)


@pytest.mark.benchmark(group="train_step_320_bf16")
def test_train_step_320_bf16_ours(benchmark, bench_device):
    _train_step(benchmark, "ours", bench_device, SIZE_320, torch.bfloat16)


@pytest.mark.benchmark(group="train_step_320_bf16")
def test_train_step_320_bf16_peer(benchmark, bench_device):
    _train_step(benchmark, "peer", bench_device, SIZE_320, torch.bfloat16)


@pytest.mark.slow
@pytest.mark.benchmark(group="train_step_800")
def test_train_step_800_ours(benchmark, bench_device):
    _train_step(benchmark, "ours", bench_device, SIZE_800, rounds=ROUNDS_800)


@pytest.mark.slow
@pytest.mark.benchmark(group="train_step_800")
def test_train_step_800_peer(benchmark, bench_device):
    _train_step(benchmark, "peer", bench_device, SIZE_800, rounds=ROUNDS_800)


@pytest.mark.benchmark(group="heads_320")
def test_heads_320_ours(benchmark, bench_device, heads_inputs):
    _heads(benchmark, "ours", bench_device, heads_inputs)


@pytest.mark.benchmark(group="heads_320")
def test_heads_320_peer(benchmark, bench_device, heads_inputs):
    _heads(benchmark, "peer", bench_device, heads_inputs)


@pytest.mark.slow
@pytest.mark.benchmark(group="heads_800")
def test_heads_800_ours(benchmark, bench_device, heads_inputs_800):
    _heads(benchmark, "ours", bench_device, heads_inputs_800, ROUNDS_800)


@pytest.mark.slow
@pytest.mark.benchmark(group="heads_800")
def test_heads_800_peer(benchmark, bench_device, heads_inputs_800):
    _heads(benchmark, "peer", bench_device, heads_inputs_800, ROUNDS_800)
