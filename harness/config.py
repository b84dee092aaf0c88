"""Typed run configuration: frozen dataclasses loaded from YAML, with overrides `section.key=value`.

Everything that can be checked without the data is checked here, at load, in one place: unknown
keys, types, choices (`Literal` fields) and values that cannot be meant (a negative learning rate,
unsorted decay steps, a single class). Each mistake is a ConfigError naming the key; values that
are legal but unusual (a decay step after max_iter, gamma >= 1) are logged as warnings. Defaults
are the MLPerf reference's (`e2e_mask_rcnn_R_50_FPN_1x`, see docs/REFERENCE.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class BackboneConfig:
    depth: Literal[10, 18, 34, 50] = 50  # 10/18/34: basic blocks; 50: bottlenecks
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    freeze_at: int = 2  # stem + res2 frozen (0 = nothing frozen, 5 = the whole body)
    stride_in_1x1: bool = True  # the Caffe2/MSRA ResNet puts the stride in the 1x1 conv
    weights: str = ""  # local file: Caffe2 R-50.pkl or torchvision resnet50 state_dict; "" = random
    weights_format: Literal["auto", "caffe2", "torchvision"] = "auto"
    gn_groups: int = 32


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256
    norm: Literal["", "gn"] = ""


@dataclass(frozen=True)
class RPNConfig:
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    straddle_thresh: int = 0
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # num_image_candidates: over the whole per-GPU batch
    post_nms_top_n_test: int = 1000  # per image
    nms_thresh: float = 0.7
    # NMS counting box widths with +1 (x2 - x1 + 1), the MLPerf reference's (maskrcnn-benchmark's)
    # convention; the MLPerf configs set it, the closed-division guard requires it
    nms_legacy: bool = False
    min_size: float = 0.0
    smooth_l1_beta: float = 1.0 / 9.0


@dataclass(frozen=True)
class ROIHeadsConfig:
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_pooler_resolution: int = 7
    mask_pooler_resolution: int = 14
    pooler_sampling_ratio: int = 2
    pooler_scales: tuple[float, ...] = (0.25, 0.125, 0.0625, 0.03125)
    mlp_head_dim: int = 1024
    mask_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    mask_resolution: int = 28
    mask_norm: Literal["", "gn"] = ""
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    nms_legacy: bool = False  # as model.rpn.nms_legacy, for the per-class NMS at test time
    detections_per_img: int = 100
    mask_threshold: float = 0.5
    box_smooth_l1_beta: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 81  # 80 COCO categories + background
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    channels_last: bool = False
    # torch.compile(fullgraph=True) the backbone + FPN and the RPN head (benchmarks/RESULTS.md,
    # "torch.compile of the core": off by default, it did not pay on the CPU)
    compile: bool = False


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/coco"  # COCO layout: train2017/, val2017/, annotations/instances_*.json
    train_split: str = "train2017"
    val_split: str = "val2017"
    loader: Literal["auto", "dali", "pytorch"] = "auto"  # auto: DALI when importable
    decode_device: Literal["auto", "mixed", "cpu"] = "auto"  # auto: mixed on GPU, cpu otherwise
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    flip_prob: float = 0.5
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    val_ims_per_batch: int = 2  # evaluation images per rank per batch


@dataclass(frozen=True)
class SolverConfig:
    optimizer: Literal["sgd", "apex_fused_sgd"] = "sgd"  # torch.optim.SGD | apex FusedSGD
    ims_per_batch: int = 16  # global batch
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    weight_decay_bias: float = 0.0
    # The reference: linear from 1/3; the MLPerf configs: mlperf_linear (see harness.solver.lr_at).
    warmup_method: Literal["linear", "mlperf_linear", "constant"] = "linear"
    warmup_factor: float = 1.0 / 3.0
    warmup_iters: int = 500
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    max_iter: int = 90000
    max_epochs: int = 0  # 0 = no epoch limit (stop on target or max_iter)
    grad_clip: float = 0.0  # 0 = off
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class RunConfig:
    name: str = "mlperf"  # letters, digits, '.', '_', '-': the run directory's prefix
    platform: str = ""  # filled from the detected hardware when empty
    gpus: int = 0  # expected GPUs per node; 0 = CPU run
    # amp (fp16 on CUDA, bf16 on CPU) | auto (fp16 on CUDA, bf16 on CPUs with AMX or AVX512-BF16,
    # fp32 on others) | fp32
    precision: Literal["auto", "amp", "fp32"] = "amp"
    seed: int = -1  # -1 = random, logged
    output_dir: str = "runs"
    target_bbox_map: float = 0.377
    target_segm_map: float = 0.339
    eval_every_epochs: int = 1  # and always after the last epoch; 0 = never evaluate
    async_eval: bool = False
    eval_backend: Literal["auto", "faster", "pycocotools"] = "auto"  # auto: faster-coco-eval if any
    checkpoint_every_epochs: int = 1
    log_every_iters: int = 20
    division: Literal["closed", "open"] = "closed"
    submission_org: str = "Backend.AI MLPerf harness"
    submission_status: Literal["cloud", "onprem", "preview", "research"] = "onprem"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


# What YAML 1.2 reads as a float but PyYAML (YAML 1.1) leaves a string: "1e-4", "5E3", "1.e-4".
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value is None and "" in choices:
            return ""
        # bool is an int: `true` must not pass for a depth of 1
        if isinstance(value, bool) or value not in choices:
            names = [str(c) for c in choices]
            hint = _suggest(str(value), names) if isinstance(value, str) else ""
            raise ConfigError(
                f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}{hint}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in the schema")
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override '{text}': the value is not YAML ({_first_line(exc)})"
        ) from None
    return key.strip().split("."), value


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {data!r:.60}")
    return data


def load(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), warn: bool = True
) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `section.key=value`
    overrides. Raises ConfigError naming the offending key; logs a warning for each value that is
    legal but unusual (unless warn is False: a config read back, e.g. a run's own config.yaml)."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        keys, value = _parse_override(text)
        _merge(data, keys, value)
    cfg = check(_build(Config, data))
    for message in unusual(cfg) if warn else ():
        log.warning("config: %s", message)
    return cfg


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _problems(cfg: Config) -> typing.Iterator[str]:
    """What cannot be meant, one message per mistake, each naming its key."""
    model, data, solver, run = cfg.model, cfg.data, cfg.solver, cfg.run
    bb, rpn, roi = model.backbone, model.rpn, model.roi_heads

    def at_least(where: str, value: float, least: float) -> typing.Iterator[str]:
        if value < least:
            yield f"{where} must be at least {least}, got {value}"

    def positive(where: str, value: float) -> typing.Iterator[str]:
        if value <= 0:
            yield f"{where} must be positive, got {value}"

    def fraction(where: str, value: float) -> typing.Iterator[str]:
        if not 0.0 <= value <= 1.0:
            yield f"{where} must be in [0, 1], got {value}"

    # model
    if model.num_classes < 2:
        yield (
            f"model.num_classes must be at least 2 (background + one category), "
            f"got {model.num_classes}"
        )
    if not 0 <= bb.freeze_at <= 5:
        yield f"model.backbone.freeze_at must be in 0..5, got {bb.freeze_at}"
    yield from positive("model.backbone.gn_groups", bb.gn_groups)
    yield from positive("model.fpn.out_channels", model.fpn.out_channels)
    if bb.gn_groups > 0:
        # Every ResNet width is a multiple of 64 (stem 64, stages 64..2048).
        if bb.norm == "gn" and 64 % bb.gn_groups:
            yield f"model.backbone.gn_groups={bb.gn_groups} must divide 64 (the stem's channels)"
        if model.fpn.norm == "gn" and model.fpn.out_channels % bb.gn_groups:
            yield (
                f"model.backbone.gn_groups={bb.gn_groups} (also used by the FPN) must divide "
                f"model.fpn.out_channels={model.fpn.out_channels}"
            )
    if roi.mask_norm == "gn" and any(d % 32 for d in roi.mask_conv_dims):
        yield (
            f"model.roi_heads.mask_conv_dims={list(roi.mask_conv_dims)} must be multiples of 32 "
            "with mask_norm=gn (32 groups)"
        )
    if not rpn.anchor_sizes or len(rpn.anchor_sizes) != len(rpn.anchor_strides):
        yield (
            f"model.rpn.anchor_sizes {list(rpn.anchor_sizes)} and anchor_strides "
            f"{list(rpn.anchor_strides)} must have one entry per FPN level"
        )
    for where, values in (
        ("model.rpn.anchor_sizes", rpn.anchor_sizes),
        ("model.rpn.anchor_strides", rpn.anchor_strides),
        ("model.rpn.aspect_ratios", rpn.aspect_ratios),
        ("model.roi_heads.bbox_reg_weights", roi.bbox_reg_weights),
        ("model.roi_heads.pooler_scales", roi.pooler_scales),
        ("model.roi_heads.mask_conv_dims", roi.mask_conv_dims),
    ):
        if not values or min(values) <= 0:
            yield f"{where} must be a non-empty list of positive numbers, got {list(values)}"
    if len(roi.bbox_reg_weights) != 4:
        yield f"model.roi_heads.bbox_reg_weights must hold 4 weights, got {roi.bbox_reg_weights}"
    for prefix, heads in (("model.rpn", rpn), ("model.roi_heads", roi)):
        yield from fraction(f"{prefix}.fg_iou_thresh", heads.fg_iou_thresh)
        yield from fraction(f"{prefix}.bg_iou_thresh", heads.bg_iou_thresh)
        if heads.bg_iou_thresh > heads.fg_iou_thresh:
            yield (
                f"{prefix}.bg_iou_thresh={heads.bg_iou_thresh} must not exceed "
                f"fg_iou_thresh={heads.fg_iou_thresh}"
            )
        yield from fraction(f"{prefix}.positive_fraction", heads.positive_fraction)
        yield from positive(f"{prefix}.batch_size_per_image", heads.batch_size_per_image)
        yield from fraction(f"{prefix}.nms_thresh", heads.nms_thresh)
    for key in ("pre_nms_top_n_train", "pre_nms_top_n_test"):
        yield from positive(f"model.rpn.{key}", getattr(rpn, key))
    for key in ("post_nms_top_n_train", "post_nms_top_n_test"):
        yield from positive(f"model.rpn.{key}", getattr(rpn, key))
    yield from at_least("model.rpn.min_size", rpn.min_size, 0)
    yield from positive("model.rpn.smooth_l1_beta", rpn.smooth_l1_beta)
    for key in (
        "box_pooler_resolution",
        "mask_pooler_resolution",
        "mlp_head_dim",
        "mask_resolution",
        "detections_per_img",
    ):
        yield from positive(f"model.roi_heads.{key}", getattr(roi, key))
    yield from at_least("model.roi_heads.pooler_sampling_ratio", roi.pooler_sampling_ratio, 0)
    yield from fraction("model.roi_heads.score_thresh", roi.score_thresh)
    yield from fraction("model.roi_heads.mask_threshold", roi.mask_threshold)
    yield from positive("model.roi_heads.box_smooth_l1_beta", roi.box_smooth_l1_beta)

    # data
    for key in ("root", "train_split", "val_split"):
        if not getattr(data, key):
            yield f"data.{key} must not be empty"
    yield from positive("data.min_size", data.min_size)
    if data.max_size < data.min_size:
        yield f"data.max_size={data.max_size} must be at least data.min_size={data.min_size}"
    yield from at_least("data.size_divisibility", data.size_divisibility, 0)
    yield from fraction("data.flip_prob", data.flip_prob)
    yield from at_least("data.num_workers", data.num_workers, 0)
    yield from at_least("data.val_ims_per_batch", data.val_ims_per_batch, 1)

    # solver
    yield from at_least("solver.ims_per_batch", solver.ims_per_batch, 1)
    yield from positive("solver.base_lr", solver.base_lr)
    if not 0.0 <= solver.momentum < 1.0:
        yield f"solver.momentum must be in [0, 1), got {solver.momentum}"
    for key in ("weight_decay", "weight_decay_bias", "bias_lr_factor", "grad_clip"):
        yield from at_least(f"solver.{key}", getattr(solver, key), 0)
    yield from at_least("solver.warmup_factor", solver.warmup_factor, 0)
    yield from at_least("solver.warmup_iters", solver.warmup_iters, 0)
    # mlperf_linear: lr(0) = base_lr - warmup_iters * warmup_factor (harness.solver.lr_at's rule,
    # with its rounding slack)
    first_lr = solver.base_lr - solver.warmup_iters * solver.warmup_factor
    if solver.warmup_method == "mlperf_linear" and first_lr < -1e-9 * solver.base_lr:
        yield (
            f"solver: mlperf_linear warmup starts at the negative learning rate {first_lr:g}: "
            f"it needs base_lr >= warmup_iters * warmup_factor ({solver.base_lr:g} < "
            f"{solver.warmup_iters} * {solver.warmup_factor:g})"
        )
    if any(s < 0 for s in solver.steps):
        yield f"solver.steps must not be negative, got {list(solver.steps)}"
    # The reference's WarmupMultiStepLR accepts repeated steps (two decays at once), not unsorted.
    if any(b < a for a, b in itertools.pairwise(solver.steps)):
        yield f"solver.steps must be in increasing order, got {list(solver.steps)}"
    yield from positive("solver.gamma", solver.gamma)
    yield from at_least("solver.max_iter", solver.max_iter, 1)
    yield from at_least("solver.max_epochs", solver.max_epochs, 0)
    yield from at_least("solver.gradient_accumulation_steps", solver.gradient_accumulation_steps, 1)
    if solver.ims_per_batch % solver.gradient_accumulation_steps:
        yield (
            f"solver.ims_per_batch={solver.ims_per_batch} must be a multiple of "
            f"solver.gradient_accumulation_steps={solver.gradient_accumulation_steps}"
        )

    # run
    if not _RUN_NAME.fullmatch(run.name):
        yield f"run.name {run.name!r} must be letters, digits, '.', '_' or '-' (not first)"
    yield from at_least("run.gpus", run.gpus, 0)
    yield from at_least("run.seed", run.seed, -1)
    if not run.output_dir:
        yield "run.output_dir must not be empty"
    for key in ("target_bbox_map", "target_segm_map"):  # 0: any evaluation reaches it (tests)
        yield from fraction(f"run.{key}", getattr(run, key))
    yield from at_least("run.eval_every_epochs", run.eval_every_epochs, 0)
    yield from at_least("run.checkpoint_every_epochs", run.checkpoint_every_epochs, 1)
    yield from at_least("run.log_every_iters", run.log_every_iters, 1)


def unusual(cfg: Config) -> list[str]:
    """Values that are legal but rarely meant (logged as warnings by `load`)."""
    solver = cfg.solver
    notes = []
    if not solver.steps:
        notes.append("solver.steps is empty: the learning rate never decays")
    late = [s for s in solver.steps if s >= solver.max_iter]
    if late:
        notes.append(
            f"solver.steps {late} are not before solver.max_iter={solver.max_iter}: "
            "those decays never happen"
        )
    if solver.gamma >= 1:
        notes.append(f"solver.gamma={solver.gamma} does not decay the learning rate")
    if solver.warmup_iters >= solver.max_iter:
        notes.append(
            f"solver.warmup_iters={solver.warmup_iters} is not before "
            f"solver.max_iter={solver.max_iter}: the whole run is warmup"
        )
    if solver.warmup_method != "mlperf_linear" and solver.warmup_factor > 1:
        notes.append(
            f"solver.warmup_factor={solver.warmup_factor} starts {solver.warmup_method} warmup "
            "above base_lr"
        )
    if solver.base_lr > 1:
        notes.append(f"solver.base_lr={solver.base_lr} is far above the reference's 0.02 per 16")
    return notes


def check(cfg: Config) -> Config:
    """Raise ConfigError for the first value that cannot be meant; return cfg."""
    for problem in _problems(cfg):
        raise ConfigError(problem)
    return cfg


def save(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
