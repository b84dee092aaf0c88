"""The closed-division guard: a run that logs `submission_division: closed` must be a closed run.

MLPerf Training 3.1 (mlcommons/training_policies training_rules.adoc, "Hyperparameters and
Optimizer" and the hyperparameter table, rows `maskrcnn`) lets a closed Mask R-CNN submission
change only these hyperparameters, within the values the table allows:

  global_batch_size               arbitrary constant
  opt_base_learning_rate          0.02 * K, or 0.02 / K when global_batch_size < 16
  opt_learning_rate_decay_steps   (60000, 80000) * (1 + K / 10) * 16 / global_batch_size
  opt_learning_rate_warmup_*      unconstrained (factor > 0, steps >= 0: the 3.1.0 checker)
  num_image_candidates            1000 or 1000 * batches per chip
  (decay factor, min/max image size: fixed to the reference)

Everything else is the reference's (mlcommons/training retired_benchmarks/maskrcnn,
configs/e2e_mask_rcnn_R_50_FPN_1x.yaml and maskrcnn_benchmark/config/defaults.py): the defaults of
harness/config.py hold those values, so a closed config may differ from the defaults only in the
tunable keys above and in keys that do not change the mathematics (run.*, data.loader, ...).

`problems(cfg, world_size)` lists every departure as "key=value: rule"; harness.train refuses to
start (exit 2, before init_start) while the list is not empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from harness.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    SolverConfig,
)
from harness.data.sampler import images_per_rank
from harness.model.weights import resolve_format

RULES = "training_rules.adoc (3.1), hyperparameter table"
REFERENCE = "fixed to the reference (e2e_mask_rcnn_R_50_FPN_1x)"

# Keys a closed run may set freely: they do not change what is computed, only how or where.
FREE_KEYS = frozenset(
    {
        # how the model is laid out in memory
        "model.channels_last",
        # backbone weights: a path, and its file format (both formats hold the reference's weights)
        "model.backbone.weights",
        "model.backbone.weights_format",
        # group count of GroupNorm, unused by the reference's frozen BatchNorm
        "model.backbone.gn_groups",
        # the data's location and the loader that reads it ("mathematically equivalent padding of
        # images is allowed": training_rules.adoc, Data Representation)
        "data.root",
        "data.train_split",
        "data.val_split",  # checked by its own rule (_evaluation_problems)
        "data.loader",
        "data.decode_device",
        "data.size_divisibility",
        "data.num_workers",
        "data.aspect_ratio_grouping",
        "data.val_ims_per_batch",
        # the tunables of the table, checked by their own rules below
        "solver.ims_per_batch",
        "solver.base_lr",
        "solver.steps",
        "solver.warmup_method",
        "solver.warmup_iters",
        "solver.warmup_factor",
        "model.rpn.post_nms_top_n_train",
        # how long the run may go on and which SGD implementation runs it
        "solver.max_iter",
        "solver.max_epochs",
        "solver.optimizer",
        "solver.gradient_accumulation_steps",
    }
)
# Run settings that decide no mathematics of training, except these, which the rules fix:
# The reference's values where harness/config.py's defaults differ from them.
REFERENCE_VALUES = {
    # maskrcnn-benchmark's NMS counts widths with +1 (its csrc/cuda/nms.cu)
    "model.rpn.nms_legacy": True,
    "model.roi_heads.nms_legacy": True,
}
RUN_FIXED = {
    "run.target_bbox_map": 0.377,  # training_rules.adoc, benchmark table: 0.377 Box min AP
    "run.target_segm_map": 0.339,  # ... and 0.339 Mask min AP
    "run.eval_every_epochs": 1,  # training_rules.adoc, evaluation frequency: every 1 epoch
}
VAL_SPLIT = "val2017"  # all 5000 COCO val2017 images, as the reference evaluates


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from _leaves(value, key + ".")
        else:
            yield key, value


def _is_integer(value: float) -> bool:
    # The 3.1.0 checker's tolerance: 0.06 / 0.02 is 2.9999999999999996 in floating point.
    return abs(round(value) - value) < 1e-5


def _fixed_problems(cfg: Config) -> list[str]:
    """Every model/data/solver key that differs from the reference default and is not tunable."""
    reference = {
        **dict(_leaves(ModelConfig(), "model.")),
        **dict(_leaves(DataConfig(), "data.")),
        **dict(_leaves(SolverConfig(), "solver.")),
        **REFERENCE_VALUES,
    }
    actual = {
        **dict(_leaves(cfg.model, "model.")),
        **dict(_leaves(cfg.data, "data.")),
        **dict(_leaves(cfg.solver, "solver.")),
    }
    problems = []
    for key, want in reference.items():
        if key in FREE_KEYS:
            continue
        got = actual[key]
        same = math.isclose(got, want, rel_tol=1e-9) if isinstance(want, float) else got == want
        if not same:
            problems.append(f"{key}={got!r}: {REFERENCE} ({want!r})")
    run_defaults = dict(_leaves(RunConfig(), "run."))
    for key, want in RUN_FIXED.items():
        assert key in run_defaults, key
        got = getattr(cfg.run, key.split(".", 1)[1])
        if got != want:
            problems.append(f"{key}={got!r}: fixed by the rules ({want!r})")
    return problems


def _tunable_problems(cfg: Config, world_size: int) -> list[str]:
    solver = cfg.solver
    batch = solver.ims_per_batch
    problems = []
    lr_ok = _is_integer(solver.base_lr / 0.02) or (
        batch < 16 and _is_integer(0.02 / solver.base_lr)
    )
    if not lr_ok:
        problems.append(
            f"solver.base_lr={solver.base_lr}: {RULES} allows 0.02*K, or 0.02/K when the global "
            "batch is below 16"
        )
    steps = list(solver.steps)
    # (60000, 80000) * (1 + K/10) * 16 / batch, for one integer K shared by both steps
    scale = (steps[0] * batch / 16 / 60000 - 1) * 10 if len(steps) == 2 else math.nan
    k = round(scale) if math.isfinite(scale) else None
    expected = (
        [60000 * (1 + k / 10) * 16 / batch, 80000 * (1 + k / 10) * 16 / batch]
        if k is not None
        else []
    )
    # The reference's steps are integers: the nearest integer to the formula's value.
    if not expected or any(abs(s - e) > 0.5 for s, e in zip(steps, expected, strict=True)):
        problems.append(
            f"solver.steps={steps}: {RULES} allows (60000, 80000) * (1 + K/10) * 16 / "
            f"global_batch_size={batch} for an integer K"
        )
    if solver.warmup_iters < 0:
        problems.append(f"solver.warmup_iters={solver.warmup_iters}: must be >= 0 (3.1.0 checker)")
    if solver.warmup_factor <= 0:
        problems.append(f"solver.warmup_factor={solver.warmup_factor}: must be > 0 (3.1.0 checker)")
    try:
        per_chip = images_per_rank(batch, world_size)
    except ConfigError as error:
        problems.append(str(error))
    else:
        candidates = cfg.model.rpn.post_nms_top_n_train
        if candidates not in (1000, 1000 * per_chip):
            problems.append(
                f"model.rpn.post_nms_top_n_train={candidates}: {RULES} allows num_image_candidates "
                f"1000 or 1000 * batches per chip ({1000 * per_chip} at {per_chip} images per chip)"
            )
    return problems


def _evaluation_problems(cfg: Config) -> list[str]:
    problems = []
    if cfg.data.val_split != VAL_SPLIT:
        problems.append(
            f"data.val_split={cfg.data.val_split!r}: closed runs evaluate on all of {VAL_SPLIT}"
        )
    if cfg.run.eval_backend not in ("auto", "faster", "pycocotools"):
        problems.append(f"run.eval_backend={cfg.run.eval_backend!r}: not a COCO scorer")
    return problems


def _weights_problems(cfg: Config) -> list[str]:
    weights = cfg.model.backbone.weights
    if not weights:
        return [
            "model.backbone.weights='': closed runs start from the reference's pretrained "
            "backbone (ImageNetPretrained/MSRA/R-50.pkl)"
        ]
    if not Path(weights).is_file():
        return [f"model.backbone.weights={weights!r}: file not found"]
    fmt = resolve_format(weights, cfg.model.backbone.weights_format)
    if fmt != "caffe2":
        return [
            f"model.backbone.weights={weights!r} is a {fmt} file: closed runs start from the "
            "reference's Caffe2 pickle (ImageNetPretrained/MSRA/R-50.pkl)"
        ]
    return []


def problems(cfg: Config, world_size: int) -> list[str]:
    """Why `cfg`, run on `world_size` chips, is not a closed-division Mask R-CNN run ([] when it is).

    Only meaningful for cfg.run.division == "closed"; an open run may differ in anything.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return [
        *_fixed_problems(cfg),
        *_tunable_problems(cfg, world_size),
        *_evaluation_problems(cfg),
        *_weights_problems(cfg),
    ]
