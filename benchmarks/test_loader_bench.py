"""Loader throughput at MLPerf resolution: the DALI pipeline beside the plain PyTorch loader.

Run: `.venv/bin/python -m pytest benchmarks/test_loader_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine for the mixed-decode group). Both loaders read the same 64
synthetic JPEGs (longer side 640, shorter 480 or 640) in the same batches with the same flips (they
share the sampler) and resize them to 800 x <= 1333 with 2 threads (DALI) or 2 workers (PyTorch);
one round is one epoch of batches of 2 (decode, resize, flip, normalize, pad, targets), delivered on
the benchmark device. `extra_info["images_per_s"]` is the throughput of the median round.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import sync
from harness.config import Config, DataConfig, ModelConfig, SolverConfig
from harness.data import build_train_loader
from harness.data.batch import Normalization
from harness.data.synthetic import generate

IMAGES, THREADS = 64, 2


@pytest.fixture(scope="module")
def coco_640(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("bench_coco"), train=IMAGES, val=0, seed=0, size=640)


def _epoch(loader, device: torch.device) -> int:
    count = 0
    for batch in loader:
        batch.to(device, non_blocking=True)
        count += len(batch.targets)
    sync(device)
    return count


def _run(benchmark, root, device: torch.device, loader: str, decode_device: str = "cpu") -> None:
    cfg = Config(
        model=ModelConfig(num_classes=5),  # the synthetic set's 4 categories + background
        data=DataConfig(
            root=str(root), loader=loader, decode_device=decode_device, num_workers=THREADS
        ),
        solver=SolverConfig(ims_per_batch=2),
    )
    train = build_train_loader(cfg, Normalization.caffe2(), rank=0, world_size=1, seed=0)
    images = benchmark.pedantic(_epoch, args=(train, device), rounds=3, warmup_rounds=1)
    assert images == len(train) * cfg.solver.ims_per_batch
    if benchmark.disabled:  # --benchmark-disable (the test command): one untimed epoch, no stats
        return
    benchmark.extra_info["images_per_s"] = images / benchmark.stats.stats.median
    benchmark.extra_info["threads"] = THREADS


@pytest.mark.benchmark(group="loader_800x1333")
def test_loader_800x1333_ours(benchmark, coco_640):
    pytest.importorskip("nvidia.dali")
    _run(benchmark, coco_640, torch.device("cpu"), "dali")


@pytest.mark.benchmark(group="loader_800x1333")
def test_loader_800x1333_peer(benchmark, coco_640):
    _run(benchmark, coco_640, torch.device("cpu"), "pytorch")


def _needs_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("GPU decoding is measured with --bench-device cuda")


@pytest.mark.benchmark(group="loader_800x1333_gpu")
def test_loader_800x1333_gpu_ours(benchmark, coco_640, bench_device):
    _needs_cuda(bench_device)
    pytest.importorskip("nvidia.dali")
    _run(benchmark, coco_640, bench_device, "dali", decode_device="mixed")


@pytest.mark.benchmark(group="loader_800x1333_gpu")
def test_loader_800x1333_gpu_peer(benchmark, coco_640, bench_device):
    _needs_cuda(bench_device)
    _run(benchmark, coco_640, bench_device, "pytorch")
