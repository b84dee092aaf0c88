"""The learning-rate schedule against hand-computed values, the optimizer's parameter groups and what
one SGD step does with them, gradient clipping."""

from __future__ import annotations

import copy
import dataclasses
import sys

import pytest
import torch
from torch import nn

from harness.config import SolverConfig
from harness.solver import LRSchedule, build_optimizer, clip_grad_norm, lr_at, parameter_groups

# The reference schedule: base 0.02, linear warmup from 1/3 over 500 iterations, x0.1 at 60k and 80k.
REFERENCE = SolverConfig(
    base_lr=0.02,
    warmup_method="linear",
    warmup_factor=1 / 3,
    warmup_iters=500,
    steps=(60000, 80000),
)
# NVIDIA's accepted 8xV100 configuration (see docs/REFERENCE.md).
NVIDIA_V100 = SolverConfig(
    base_lr=0.06,
    warmup_method="mlperf_linear",
    warmup_factor=0.000096,
    warmup_iters=625,
    steps=(24000, 32000),
)


@pytest.mark.parametrize(
    "iteration,expected",
    [
        (0, 0.02 / 3),
        (250, 0.02 * (1 / 3 * 0.5 + 0.5)),  # halfway: 0.013333
        (499, 0.02 * (1 / 3 * (1 / 500) + 499 / 500)),
        (500, 0.02),
        (59999, 0.02),
        (60000, 0.002),
        (79999, 0.002),
        (80000, 0.0002),
        (89999, 0.0002),
    ],
)
def test_linear_warmup_then_steps(iteration, expected):
    assert lr_at(iteration, REFERENCE) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "iteration,expected",
    [
        (0, 0.0),  # 0.06 - 625 * 0.000096 = 0.06 - 0.06, which is -7e-18 in floats: not an error
        (100, 0.0096),  # 0.06 - 525 * 0.000096 = 0.06 - 0.0504
        (624, 0.06 - 0.000096),
        (625, 0.06),
        (24000, 0.006),
        (32000, 0.0006),
    ],
)
def test_mlperf_linear_warmup_subtracts_a_fixed_decrement(iteration, expected):
    assert lr_at(iteration, NVIDIA_V100) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mlperf_linear_subtracts_the_same_decrement_from_the_bias_rate():
    # The reference warms each group's own base rate: bias 0.12 - 0.0504, not 2 * 0.0096.
    assert lr_at(100, NVIDIA_V100, base_lr=0.12) == pytest.approx(0.0696)


def test_constant_warmup_and_a_step_inside_warmup():
    cfg = dataclasses.replace(REFERENCE, warmup_method="constant", warmup_iters=20, steps=(10, 30))
    assert lr_at(5, cfg) == pytest.approx(0.02 / 3)
    assert lr_at(10, cfg) == pytest.approx(0.02 / 3 * 0.1)
    assert lr_at(20, cfg) == pytest.approx(0.002)
    linear = dataclasses.replace(cfg, warmup_method="linear")
    assert lr_at(10, linear) == pytest.approx(0.02 * (1 / 3 * 0.5 + 0.5) * 0.1)


def test_no_warmup_starts_at_base():
    assert lr_at(0, dataclasses.replace(REFERENCE, warmup_iters=0)) == 0.02


@pytest.mark.parametrize(
    "cfg,iteration,match",
    [
        (dataclasses.replace(REFERENCE, warmup_method="cosine"), 0, "solver.warmup_method"),
        (dataclasses.replace(REFERENCE, steps=(80000, 60000)), 0, "solver.steps"),
        (REFERENCE, -1, "iteration must be >= 0"),
        # mlperf_linear with the linear method's factor: 0.02 - 500 / 3 < 0
        (dataclasses.replace(REFERENCE, warmup_method="mlperf_linear"), 0, "warmup_factor"),
    ],
)
def test_bad_schedules_are_named(cfg, iteration, match):
    with pytest.raises(ValueError, match=match):
        lr_at(iteration, cfg)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(1, 1, 1)
        self.norm = nn.GroupNorm(1, 1)
        self.fc = nn.Linear(1, 1, bias=False)


def test_groups_split_weights_and_biases_and_leave_out_frozen():
    model = Tiny()
    weights, biases = parameter_groups(model, REFERENCE)
    assert {id(p) for p in weights["params"]} == {
        id(model.conv.weight),
        id(model.norm.weight),
        id(model.fc.weight),
    }
    assert {id(p) for p in biases["params"]} == {id(model.conv.bias), id(model.norm.bias)}
    assert (weights["lr"], weights["weight_decay"]) == (0.02, 1e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.04, 0.0)


def test_one_sgd_step_applies_group_lr_and_weight_decay():
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    optimizer = build_optimizer(model, REFERENCE, torch.device("cpu"))
    assert optimizer.defaults["fused"] and optimizer.defaults["momentum"] == 0.9
    model.weight.grad = torch.full_like(model.weight, 0.5)
    model.bias.grad = torch.full_like(model.bias, 0.5)
    optimizer.step()
    # first momentum step: buffer = grad + wd * param; weight: lr 0.02, wd 1e-4; bias: lr 0.04, wd 0
    assert model.weight.item() == pytest.approx(1 - 0.02 * (0.5 + 1e-4))
    assert model.bias.item() == pytest.approx(1 - 0.04 * 0.5)


def test_fused_cpu_sgd_follows_the_foreach_one():
    # Fused on the CPU for speed: over several momentum steps it must track the reference foreach
    # implementation on both parameter groups (weights with decay, biases at 2x lr without).
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.Conv2d(8, 4, 1))]
    models.append(copy.deepcopy(models[0]))
    fused = build_optimizer(models[0], REFERENCE, torch.device("cpu"))
    groups = parameter_groups(models[1], REFERENCE)
    foreach = torch.optim.SGD(groups, lr=REFERENCE.base_lr, momentum=REFERENCE.momentum)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, optimizer in zip(models, (fused, foreach), strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
def test_cuda_uses_fused_sgd():
    optimizer = build_optimizer(nn.Linear(2, 2).cuda(), REFERENCE, torch.device("cuda"))
    assert optimizer.defaults["fused"]


def test_apex_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # makes `import apex...` raise ImportError
    cfg = dataclasses.replace(REFERENCE, optimizer="apex_fused_sgd")
    with pytest.raises(RuntimeError, match="needs NVIDIA apex, which is not installed"):
        build_optimizer(nn.Linear(2, 2), cfg, torch.device("cpu"))


def test_bad_optimizer_and_frozen_model_are_named():
    with pytest.raises(ValueError, match=r"solver\.optimizer"):
        build_optimizer(
            nn.Linear(2, 2), dataclasses.replace(REFERENCE, optimizer="adam"), torch.device("cpu")
        )
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), REFERENCE, torch.device("cpu"))


def test_schedule_sets_each_group_from_its_own_base_rate():
    model = nn.Conv2d(1, 1, 1)
    cfg = dataclasses.replace(NVIDIA_V100, bias_lr_factor=2.0)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    schedule = LRSchedule(optimizer, cfg)
    # step(i) sets the rates of the update after i completed ones: lr_at(i + 1)
    assert schedule.step(99) == pytest.approx(0.0096)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0096, 0.0696])
    schedule.step(23999)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.006, 0.012])


def test_schedule_refuses_a_negative_warmup_before_training():
    optimizer = build_optimizer(nn.Linear(2, 2), REFERENCE, torch.device("cpu"))
    with pytest.raises(ValueError, match="negative learning rate"):
        LRSchedule(optimizer, dataclasses.replace(REFERENCE, warmup_method="mlperf_linear"))
    with pytest.raises(ValueError, match="base_lr"):
        LRSchedule(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), REFERENCE)


def test_clip_grad_norm_scales_to_max_norm_and_is_off_at_zero():
    model = nn.Linear(2, 1, bias=False)
    optimizer = build_optimizer(model, REFERENCE, torch.device("cpu"))
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert clip_grad_norm(optimizer, 0.0) is None
    assert torch.equal(model.weight.grad, torch.tensor([[3.0, 4.0]]))
    norm = clip_grad_norm(optimizer, 1.0)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.6, 0.8]]), atol=1e-5, rtol=0)


class _ReferenceWarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """The MLPerf reference's scheduler (mlcommons/training retired_benchmarks/maskrcnn,
    maskrcnn_benchmark/solver/lr_scheduler.py), written from its formula: an independent oracle."""

    def __init__(self, optimizer, cfg):
        self.cfg = cfg
        super().__init__(optimizer)

    def get_lr(self):
        cfg, it = self.cfg, self.last_epoch
        factor, delta = 1.0, 0.0
        if it < cfg.warmup_iters:
            if cfg.warmup_method == "constant":
                factor = cfg.warmup_factor
            elif cfg.warmup_method == "linear":
                alpha = it / cfg.warmup_iters
                factor = cfg.warmup_factor * (1 - alpha) + alpha
            else:
                delta = (cfg.warmup_iters - it) * cfg.warmup_factor
        decay = cfg.gamma ** sum(it >= s for s in cfg.steps)
        return [(base - delta) * factor * decay for base in self.base_lrs]


@pytest.mark.parametrize("cfg", [REFERENCE, NVIDIA_V100], ids=["linear", "mlperf_linear"])
def test_rate_of_each_update_equals_the_reference_trainer(cfg):
    """The reference's do_train calls scheduler.step() before every optimizer step (its scheduler
    stepped once at construction): update k (1-based) runs at its last_epoch = k. Ours must match
    update for update, including the first (mlperf_linear's lr_at(0) = 0 would waste it)."""
    cfg = dataclasses.replace(cfg, warmup_iters=10, steps=(15, 20))
    if cfg.warmup_method == "mlperf_linear":
        cfg = dataclasses.replace(cfg, warmup_factor=cfg.base_lr / cfg.warmup_iters)
    ours = build_optimizer(nn.Linear(2, 2), cfg, torch.device("cpu"))
    schedule = LRSchedule(ours, cfg)
    reference_opt = torch.optim.SGD(
        [{"params": [nn.Parameter(torch.zeros(1))], "lr": g["base_lr"]} for g in ours.param_groups]
    )
    reference = _ReferenceWarmupMultiStepLR(reference_opt, cfg)
    for completed in range(25):
        reference.step()  # before the update, as the reference's loop does
        schedule.step(completed)
        want = [g["lr"] for g in reference_opt.param_groups]
        assert [g["lr"] for g in ours.param_groups] == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert want[0] > 0, "the reference never takes a zero-rate update"
