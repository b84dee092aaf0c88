"""SGD and the learning-rate schedule of the MLPerf reference (maskrcnn-benchmark's make_optimizer and
WarmupMultiStepLR, with the `mlperf_linear` warmup of the MLPerf fork).

The loop calls, per iteration: `schedule.step(iteration)` before `optimizer.step()`, and
`clip_grad_norm(optimizer, cfg.grad_clip)` after the backward (after `scaler.unscale_(optimizer)`
under AMP) when cfg.grad_clip > 0.
"""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import Tensor, nn

from harness.config import SolverConfig

WARMUP_METHODS = ("constant", "linear", "mlperf_linear")
OPTIMIZERS = ("sgd", "apex_fused_sgd")


def lr_at(iteration: int, cfg: SolverConfig, base_lr: float | None = None) -> float:
    """The learning rate at `iteration` (0-based) for a parameter group whose undecayed, warmed-up
    rate is `base_lr` (cfg.base_lr when None).

    Decay: base_lr * gamma ** (number of cfg.steps <= iteration). During warmup
    (iteration < warmup_iters), with f = warmup_factor:
      constant:      lr * f
      linear:        lr * (f * (1 - a) + a), a = iteration / warmup_iters
      mlperf_linear: lr - (warmup_iters - iteration) * f, decay applied after (the MLPerf fork's rule;
                     f is an absolute decrement per iteration, e.g. base_lr / warmup_iters)
    where lr is base_lr with its decay. Raises ValueError for an unknown method, unsorted steps, a
    negative iteration, or a warmup that would make the rate negative.
    """
    base = cfg.base_lr if base_lr is None else base_lr
    if cfg.warmup_method not in WARMUP_METHODS:
        raise ValueError(
            f"solver.warmup_method must be one of {WARMUP_METHODS}, got {cfg.warmup_method!r}"
        )
    if list(cfg.steps) != sorted(cfg.steps):
        raise ValueError(f"solver.steps must be increasing, got {cfg.steps}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    decay = cfg.gamma ** bisect_right(cfg.steps, iteration)
    if iteration >= cfg.warmup_iters:
        return base * decay
    if cfg.warmup_method == "constant":
        return base * cfg.warmup_factor * decay
    if cfg.warmup_method == "linear":
        alpha = iteration / cfg.warmup_iters
        return base * (cfg.warmup_factor * (1 - alpha) + alpha) * decay
    lr = (base - (cfg.warmup_iters - iteration) * cfg.warmup_factor) * decay
    # Configs set warmup_factor = base_lr / warmup_iters (NVIDIA's 0.06 / 625 = 0.000096) to start
    # at exactly 0, which float rounding can miss by ~1e-18.
    if -1e-9 * base <= lr < 0:
        return 0.0
    if lr < 0:
        raise ValueError(
            f"solver: mlperf_linear warmup gives the negative learning rate {lr:g} at iteration "
            f"{iteration} (base {base:g}); it needs base_lr >= warmup_iters * warmup_factor "
            f"({cfg.warmup_iters} * {cfg.warmup_factor:g}): warmup_factor is a per-iteration "
            "decrement here, e.g. base_lr / warmup_iters"
        )
    return lr


def parameter_groups(model: nn.Module, cfg: SolverConfig) -> list[dict]:
    """The reference's two kinds of trainable parameters: weights (base_lr, weight_decay) and biases
    (base_lr * bias_lr_factor, weight_decay_bias). Frozen parameters (requires_grad False) are left
    out. Each group carries "base_lr", the rate the schedule scales; empty groups are dropped."""
    weights, biases = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if name.endswith("bias") else weights).append(param)
    groups = [
        {"params": weights, "lr": cfg.base_lr, "weight_decay": cfg.weight_decay},
        {
            "params": biases,
            "lr": cfg.base_lr * cfg.bias_lr_factor,
            "weight_decay": cfg.weight_decay_bias,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad False)")
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def build_optimizer(
    model: nn.Module, cfg: SolverConfig, device: torch.device
) -> torch.optim.Optimizer:
    """SGD over `model`'s trainable parameters (see parameter_groups), momentum cfg.momentum.

    cfg.optimizer "sgd": torch.optim.SGD, fused on CUDA and CPU (one pass over each parameter; 2.7x
    foreach on the CPU demo's parameters, benchmarks/test_solver_bench.py), foreach (multi-tensor)
    elsewhere. "apex_fused_sgd": apex.optimizers.FusedSGD; raises RuntimeError when
    apex is not installed. `device` is where the parameters live.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"solver.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "apex_fused_sgd":
        try:
            from apex.optimizers import FusedSGD
        except ImportError as e:
            raise RuntimeError(
                "solver.optimizer=apex_fused_sgd needs NVIDIA apex, which is not installed "
                f"({e}); use solver.optimizer=sgd (torch's fused SGD)"
            ) from e
        return FusedSGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    fast = {"fused": True} if torch.device(device).type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, **fast)


class LRSchedule:
    """Sets every group's lr to lr_at(iteration, cfg, group["base_lr"]).

    Per group rather than lr_at(iteration) * factor because mlperf_linear subtracts the same warmup
    decrement from each group's own base rate, as the reference does. The whole schedule is checked
    at construction (iteration 0 is the lowest mlperf_linear rate), so a bad config fails before
    training starts.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SolverConfig) -> None:
        for i, group in enumerate(optimizer.param_groups):
            if "base_lr" not in group:
                raise ValueError(
                    f"optimizer param group {i} has no 'base_lr'; build it with build_optimizer"
                )
            lr_at(0, cfg, group["base_lr"])
        self.optimizer = optimizer
        self.cfg = cfg

    def step(self, iteration: int) -> float:
        """Sets the rates of the optimizer step that follows `iteration` completed steps; returns
        the rate of cfg.base_lr (for logging).

        That step runs at lr_at(iteration + 1): the MLPerf reference's trainer
        (mlcommons/training retired_benchmarks/maskrcnn, maskrcnn_benchmark/engine/trainer.py,
        do_train) calls scheduler.step() before each optimizer step, and its WarmupMultiStepLR
        already stepped once at construction, so its first update uses last_epoch = 1. (NVIDIA's
        v0.7 trainer stepped after the update, which made mlperf_linear's first step a zero one.)
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(iteration + 1, self.cfg, group["base_lr"])
        return lr_at(iteration + 1, self.cfg)


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor | None:
    """Scales all gradients of `optimizer`'s parameters so that their total L2 norm is at most
    `max_norm`; returns the norm before clipping (a 0-dim tensor, left on the device so that no
    sync happens), or None when max_norm <= 0 (solver.grad_clip = 0 is off). Under AMP call it after
    scaler.unscale_(optimizer)."""
    if max_norm <= 0:
        return None
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
