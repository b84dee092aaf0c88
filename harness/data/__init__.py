"""Data loading: from a COCO-layout directory to `harness.data.batch.Batch`es.

The trainer calls check_inputs before it creates anything, then build_train_loader,
build_val_loader, val_annotation_file and category_ids. The loader is DALI (dali_pipeline) or the
plain PyTorch one (harness.data.loader), picked by cfg.data.loader; both apply the same transforms
(harness.data.transforms) and the same annotation filtering (harness.data.coco) and differ only in
how pixels are decoded and resized.

Imports go one way: dali_pipeline imports harness.data, and harness.data imports dali_pipeline only
in `_loader_classes`, when a DALI loader is built. torch, torchvision and DALI are imported when a
loader is built, not with the package, so that `python -m harness.data.synthetic` starts in a
fraction of the time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import Config, ConfigError, DataConfig
from harness.data.coco import (
    CocoDataError,
    CorruptImageError,
    category_ids,
    check_num_classes,
    load_coco,
)

if TYPE_CHECKING:
    from harness.data.batch import Batch, Normalization
    from harness.data.sampler import GroupedEpochs

__all__ = [
    "CocoDataError",
    "CorruptImageError",
    "build_train_loader",
    "build_val_loader",
    "category_ids",
    "check_inputs",
    "resolve_loader",
    "val_annotation_file",
]


def resolve_loader(data: DataConfig) -> str:
    """The loader to use for cfg.data.loader: "dali" or "pytorch" ("auto": DALI when importable)."""
    if data.loader == "auto":
        return "dali" if importlib.util.find_spec("nvidia.dali") is not None else "pytorch"
    return data.loader


def _loader_classes(data: DataConfig) -> tuple[type, type]:
    """The (train, val) loader classes cfg.data.loader picks, all four built from
    (coco, data, normalization, ...)."""
    if resolve_loader(data) == "dali":
        from dali_pipeline.loader import DaliTrainLoader, DaliValLoader

        return DaliTrainLoader, DaliValLoader
    from harness.data.loader import TorchTrainLoader, TorchValLoader

    return TorchTrainLoader, TorchValLoader


def check_inputs(cfg: Config) -> None:
    """What the run will read, checked before anything is created: the COCO layout under
    cfg.data.root (directories and annotation files exist) and the backbone weights file. Nothing
    is read from the dataset: the MLPerf clock must start before any part of the system touches it
    (training_rules.adoc, "Timing"), so the categories are compared with model.num_classes when the
    loaders are built. Raises ConfigError naming the key and the path."""
    data = cfg.data
    root = Path(data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: dataset directory not found: {root}")
    for split in (data.train_split, data.val_split):
        if not (root / split).is_dir():
            raise ConfigError(f"data.root: image directory not found: {root / split}")
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            raise ConfigError(f"data.root: annotation file not found: {ann}")
    weights = cfg.model.backbone.weights
    if weights and not Path(weights).is_file():
        raise ConfigError(f"model.backbone.weights: file not found: {weights}")


def build_train_loader(
    cfg: Config, normalization: Normalization, rank: int, world_size: int, seed: int
) -> GroupedEpochs:
    """Training batches of `rank`, its share of cfg.solver.ims_per_batch (the global batch) each,
    resized, flipped with probability cfg.data.flip_prob, aspect-ratio grouped. A pass yields one
    epoch of `len()` Batches (CPU tensors; the images are on the GPU when DALI decodes there);
    set_epoch(e, start=k) makes the next pass epoch e without its first k images, reshuffled from
    (seed, e) (harness.data.sampler.GroupedEpochs)."""
    data = cfg.data
    coco = load_coco(data.root, data.train_split, keep_empty_images=False)
    check_num_classes(coco, cfg.model.num_classes)
    train_loader, _ = _loader_classes(data)
    loader = train_loader(
        coco, data, normalization, cfg.solver.ims_per_batch, rank, world_size, seed
    )
    if len(loader) < 1:
        raise CocoDataError(
            f"{coco.annotation_file}: {len(coco.records)} usable images do not fill one batch of "
            f"{loader.images_per_rank} per rank and epoch on {world_size} ranks"
            + (" with aspect-ratio grouping" if data.aspect_ratio_grouping else "")
        )
    return loader


def build_val_loader(
    cfg: Config, normalization: Normalization, rank: int, world_size: int
) -> Iterable[Batch]:
    """Evaluation batches of `rank` (cfg.data.val_ims_per_batch images, unflipped): the ranks' shards
    partition the val images, in image id order, so each image is read exactly once."""
    data = cfg.data
    coco = load_coco(data.root, data.val_split, keep_empty_images=True)
    check_num_classes(coco, cfg.model.num_classes)
    _, val_loader = _loader_classes(data)
    return val_loader(coco, data, normalization, rank, world_size)


def val_annotation_file(cfg: Config) -> Path:
    """The val split's original annotation file (what COCO evaluation scores against)."""
    path = Path(cfg.data.root) / "annotations" / f"instances_{cfg.data.val_split}.json"
    if not path.is_file():
        raise CocoDataError(f"annotation file not found: {path}")
    return path
