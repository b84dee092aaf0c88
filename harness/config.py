"""Typed run configuration: frozen dataclasses loaded from YAML, with overrides `section.key=value`.

Unknown or mistyped keys are errors that name the key and suggest the closest valid one. Defaults are
the MLPerf reference's (`e2e_mask_rcnn_R_50_FPN_1x`, see docs/REFERENCE.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 10, 18, 34 or 50
    norm: str = "frozen_bn"  # frozen_bn | bn | gn
    freeze_at: int = 2  # stem + res2 frozen (0 = nothing frozen)
    stride_in_1x1: bool = True  # the Caffe2/MSRA ResNet puts the stride in the 1x1 conv
    weights: str = ""  # local file: Caffe2 R-50.pkl or torchvision resnet50 state_dict; "" = random
    weights_format: str = "auto"  # auto | caffe2 | torchvision
    gn_groups: int = 32


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256
    norm: str = ""  # "" | gn


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
    mask_norm: str = ""  # "" | gn
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
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


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/coco"  # COCO layout: train2017/, val2017/, annotations/instances_*.json
    train_split: str = "train2017"
    val_split: str = "val2017"
    loader: str = "auto"  # auto (DALI when importable) | dali | pytorch
    decode_device: str = "auto"  # auto (mixed on GPU, cpu otherwise) | mixed | cpu
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    flip_prob: float = 0.5
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    val_ims_per_batch: int = 2  # evaluation images per rank per batch


@dataclass(frozen=True)
class SolverConfig:
    optimizer: str = "sgd"  # sgd (torch.optim.SGD) | apex_fused_sgd
    ims_per_batch: int = 16  # global batch
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    weight_decay_bias: float = 0.0
    warmup_method: str = "linear"  # linear | mlperf_linear | constant (the reference: linear, 1/3)
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
    name: str = "mlperf"
    platform: str = ""  # filled from the detected hardware when empty
    gpus: int = 0  # expected GPUs per node; 0 = CPU run
    precision: str = "amp"  # amp (fp16 on CUDA, bf16 on CPU) | fp32
    seed: int = -1  # -1 = random, logged
    output_dir: str = "runs"
    target_bbox_map: float = 0.377
    target_segm_map: float = 0.339
    eval_every_epochs: int = 1  # and always after the last epoch; 0 = never evaluate
    async_eval: bool = False
    eval_backend: str = "auto"  # auto (faster-coco-eval when importable) | faster | pycocotools
    checkpoint_every_epochs: int = 1
    log_every_iters: int = 20
    division: str = "closed"  # closed | open
    submission_org: str = "Backend.AI MLPerf harness"
    submission_status: str = "onprem"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in the schema")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
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
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{_suggest(key, names)}")
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
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
    node[path[-1]] = value


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `section.key=value`
    overrides. Raises ConfigError naming the offending key."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for text in overrides:
        keys, value = _parse_override(text)
        _merge(data, keys, value)
    cfg = _build(Config, data)
    _check_ranges(cfg)
    return cfg


# (section, key, least valid value): counts the loop divides by or counts down.
_MINIMUMS = (
    ("run", "eval_every_epochs", 0),
    ("run", "checkpoint_every_epochs", 1),
    ("run", "log_every_iters", 1),
    ("solver", "ims_per_batch", 1),
    ("solver", "max_iter", 1),
    ("solver", "max_epochs", 0),
)


def _check_ranges(cfg: Config) -> None:
    for section, key, least in _MINIMUMS:
        value = getattr(getattr(cfg, section), key)
        if value < least:
            raise ConfigError(f"{section}.{key} must be at least {least}, got {value}")


def save(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
