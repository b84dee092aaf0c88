"""The SGD step build_optimizer returns (fused, one pass per parameter) beside torch's foreach SGD,
on the CPU demo model's parameters (6.1M with its ResNet-10), with the same parameter groups,
gradients and momentum.

Run: `.venv/bin/python -m pytest benchmarks/test_solver_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine). Group `sgd_step_demo` pairs `ours` with `peer`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.conftest import sync
from harness.config import load
from harness.model import build_model
from harness.solver import build_optimizer, parameter_groups

ROUNDS = 20
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu_demo.yaml"


def _case(device: torch.device, ours: bool):
    cfg = load(DEMO_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    if ours:
        return build_optimizer(model, cfg.solver, device)
    groups = parameter_groups(model, cfg.solver)
    return torch.optim.SGD(
        groups, lr=cfg.solver.base_lr, momentum=cfg.solver.momentum, foreach=True
    )


@pytest.mark.parametrize("which", ["ours", "peer"])
@pytest.mark.benchmark(group="sgd_step_demo")
def test_sgd_step(benchmark, bench_device, which):
    optimizer = _case(bench_device, which == "ours")

    def step() -> None:
        optimizer.step()
        sync(bench_device)

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=3, iterations=1)
