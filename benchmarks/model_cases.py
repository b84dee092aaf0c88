"""Model-level benchmark cases shared by benchmarks/test_model_bench.py and train_throughput.py.

Run as a script, it times ours and torchvision's side by side in interleaved rounds (one step of each
per round), which keeps their ratio meaningful on a machine whose load changes during the run:

    python -m benchmarks.model_cases --case heads --size 800 1333 --rounds 3

Our Mask R-CNN (harness.model.build_model) beside torchvision's, configured with the same
hyperparameters, fed identical seeded synthetic inputs, and trained by one step function that serves
both. Nothing is downloaded: every weight is randomly initialized.

Fairness: torchvision's detector normally passes its inputs through GeneralizedRCNNTransform
(normalize, resize, copy into a padded batch). Our model gets an already normalized, padded batch, so
`PeerMaskRCNN` skips that transform and calls torchvision's backbone, RPN and ROI heads directly on the
same padded tensor with the same unpadded image sizes: both models see exactly the same pixels and
neither pays for preprocessing the other skips.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d

from benchmarks.conftest import sync
from harness.config import ModelConfig
from harness.data.batch import ImageTarget, Polygons
from harness.model import build_model

MODELS = ("ours", "peer")
SIZE_DIVISIBILITY = 32
OBJECTS_PER_IMAGE = (3, 8)
VERTICES_PER_POLYGON = (8, 20)
# Semi-axes of the objects' ellipses, as fractions of the image's shorter side.
OBJECT_RADIUS = (0.04, 0.3)
# Torchvision's FPN names its outputs; ours returns the same maps [P2..P6] as a list.
PEER_FEATURE_NAMES = ("0", "1", "2", "3", "pool")


@dataclass
class StepInputs:
    """One synthetic training batch in both models' formats.

    images: Tensor[B, 3, H_pad, W_pad] float32 ~ N(0, 1) (already "normalized"), zero in the padding,
        H_pad and W_pad multiples of 32.
    targets: ours, one ImageTarget per image (boxes (x1, y1, x2, y2) in pixels, labels 1..80, convex
        polygons).
    peer_targets: torchvision's, one dict per image with the same "boxes" Tensor[N, 4] float32 and
        "labels" Tensor[N] int64, and "masks" Tensor[N, h, w] uint8, the same polygons rasterized by
        pycocotools at the unpadded image size (h, w).
    """

    images: Tensor
    targets: list[ImageTarget]
    peer_targets: list[dict[str, Tensor]]

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(h, w) of every image before padding."""
        return self.targets[0].image_size

    def to(self, device: torch.device | str) -> StepInputs:
        return StepInputs(
            self.images.to(device),
            [t.to(device) for t in self.targets],
            [{k: v.to(device) for k, v in t.items()} for t in self.peer_targets],
        )


def _convex_polygon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Vertices [V, 2] (x, y) of a convex polygon inside the image: points at sorted random angles on
    a randomly rotated ellipse (any such set is convex)."""
    short = min(height, width)
    a, b = rng.uniform(*OBJECT_RADIUS, size=2) * short
    rot = rng.uniform(0, math.pi)
    # Half extents of the rotated ellipse's bounding box, so the centre keeps it inside the image.
    ex = math.hypot(a * math.cos(rot), b * math.sin(rot))
    ey = math.hypot(a * math.sin(rot), b * math.cos(rot))
    cx = rng.uniform(ex, width - 1 - ex)
    cy = rng.uniform(ey, height - 1 - ey)
    num_vertices = int(rng.integers(VERTICES_PER_POLYGON[0], VERTICES_PER_POLYGON[1] + 1))
    t = np.sort(rng.uniform(0, 2 * math.pi, num_vertices))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack(
        [
            cx + x * math.cos(rot) - y * math.sin(rot),
            cy + x * math.sin(rot) + y * math.cos(rot),
        ],
        axis=1,
    )


def make_inputs(
    batch_size: int, height: int, width: int, num_classes: int = 81, seed: int = 0
) -> StepInputs:
    """A seeded batch of `batch_size` images of (height, width) pixels, padded to a multiple of 32,
    with 3-8 convex objects of 8-20 vertices each and labels in 1..num_classes-1. On the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if min(height, width) < SIZE_DIVISIBILITY:
        raise ValueError(f"image size ({height}, {width}) must be at least 32 pixels on each side")
    if num_classes < 2:
        raise ValueError(
            f"num_classes must count background and at least one class, got {num_classes}"
        )
    rng = np.random.default_rng(seed)
    pad_h = math.ceil(height / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    pad_w = math.ceil(width / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    images = torch.zeros(batch_size, 3, pad_h, pad_w)
    images[:, :, :height, :width] = torch.from_numpy(
        rng.standard_normal((batch_size, 3, height, width), dtype=np.float32)
    )
    targets, peer_targets = [], []
    for index in range(batch_size):
        num_objects = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
        polygons = [_convex_polygon(rng, height, width) for _ in range(num_objects)]
        boxes = torch.tensor(
            np.array([np.concatenate([p.min(axis=0), p.max(axis=0)]) for p in polygons]),
            dtype=torch.float32,
        )
        labels = torch.from_numpy(rng.integers(1, num_classes, num_objects))
        flat = [[p.reshape(-1).tolist()] for p in polygons]
        masks = np.stack(
            [
                coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(f, height, width)))
                for f in flat
            ]
        )
        targets.append(
            ImageTarget(
                boxes, labels, Polygons.from_lists(flat), index, (height, width), (height, width)
            )
        )
        peer_targets.append({"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks)})
    return StepInputs(images, targets, peer_targets)


class PeerMaskRCNN(nn.Module):
    """torchvision's Mask R-CNN called the way ours is: `model(images, targets)` -> loss dict.

    Skips GeneralizedRCNNTransform (see the module docstring); the unpadded image sizes are read from
    the targets' masks, Tensor[N, h, w], which torchvision rasterizes at exactly that size.
    """

    def __init__(self, detector: TorchvisionMaskRCNN):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """images: Tensor[B, 3, H_pad, W_pad] normalized and padded; targets: one dict per image with
        "boxes", "labels" and "masks" (see StepInputs.peer_targets). Returns torchvision's 5 losses."""
        if len(targets) != images.shape[0]:
            raise ValueError(
                f"targets has {len(targets)} entries for a batch of {images.shape[0]} images"
            )
        sizes = [(int(t["masks"].shape[-2]), int(t["masks"].shape[-1])) for t in targets]
        image_list = ImageList(images, sizes)
        features = self.detector.backbone(images)
        proposals, rpn_losses = self.detector.rpn(image_list, features, targets)
        _, head_losses = self.detector.roi_heads(features, proposals, sizes, targets)
        return {**rpn_losses, **head_losses}


def build_ours(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """Our Mask R-CNN in training mode, randomly initialized from `seed`."""
    torch.manual_seed(seed)
    return build_model(cfg).train()


def build_peer(
    cfg: ModelConfig, batch_size: int, image_size: tuple[int, int], seed: int = 0
) -> PeerMaskRCNN:
    """torchvision's Mask R-CNN with our hyperparameters, in training mode, random init from `seed`.

    R-N FPN with FrozenBatchNorm2d and the same frozen stages (trainable_layers = 5 - freeze_at); the
    anchors, poolers, box head (2 x FC 1024) and mask head (4 x conv 256) are torchvision's defaults,
    which match the reference. image_size (h, w) fixes min_size/max_size and mean 0 / std 1 make the
    transform the identity, although PeerMaskRCNN bypasses it anyway.
    """
    backbone_cfg = cfg.backbone
    if backbone_cfg.norm != "frozen_bn" or backbone_cfg.depth not in (18, 34, 50):
        raise ValueError(
            "build_peer: torchvision's peer is built only for a frozen_bn ResNet-18/34/50 backbone, "
            f"got norm={backbone_cfg.norm!r} depth={backbone_cfg.depth}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{backbone_cfg.depth}",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=5 - backbone_cfg.freeze_at,
    )
    rpn, heads = cfg.rpn, cfg.roi_heads
    detector = TorchvisionMaskRCNN(
        backbone,
        num_classes=cfg.num_classes,
        min_size=min(image_size),
        max_size=max(image_size),
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        # Ours keeps post_nms_top_n_train (num_image_candidates) proposals over the whole batch;
        # torchvision keeps its count per image, so the per-image share gives the same total.
        rpn_post_nms_top_n_train=max(rpn.post_nms_top_n_train // batch_size, 1),
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        box_fg_iou_thresh=heads.fg_iou_thresh,
        box_bg_iou_thresh=heads.bg_iou_thresh,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
        box_detections_per_img=heads.detections_per_img,
        bbox_reg_weights=heads.bbox_reg_weights,
    )
    return PeerMaskRCNN(detector).train()


class FixedFeatures(nn.Module):
    """Stands in for a backbone: returns the same precomputed FPN maps whatever the images."""

    def __init__(self, features: list[Tensor] | OrderedDict[str, Tensor]):
        super().__init__()
        self.features = features

    def forward(self, images: Tensor) -> list[Tensor] | OrderedDict[str, Tensor]:
        return self.features


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of mixed precision: fp16 on CUDA (with a GradScaler), bf16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@dataclass
class TrainCase:
    """A model, its optimizer (None: forward and backward only) and its inputs, on one device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    images: Tensor
    targets: list

    def step(
        self, autocast: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None
    ) -> Tensor:
        """One training step: forward under autocast(`autocast`) when given, the summed losses'
        backward (scaled when `scaler` is given), and the optimizer step. Returns the loss, detached
        and not synced (reading it would wait for the device)."""
        self.model.zero_grad(set_to_none=True)
        with torch.autocast(self.images.device.type, dtype=autocast, enabled=autocast is not None):
            losses = self.model(self.images, self.targets)
            loss = sum(losses.values())
        if scaler is None:
            loss.backward()
            if self.optimizer is not None:
                self.optimizer.step()
        else:
            scaler.scale(loss).backward()
            if self.optimizer is not None:
                scaler.step(self.optimizer)
            scaler.update()
        return loss.detach()


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The reference's SGD (momentum 0.9, weight decay 1e-4) over the trainable parameters, at LR 0.

    LR 0 still runs every part of the step (weight decay, momentum, the update) but leaves the
    weights as they are: randomly initialized detectors diverge within a few steps at any useful LR
    (the losses reach 1e5 by the third step at the reference's 0.0025 for batch 2), and a diverging
    model changes the proposals, hence the work, from one timed round to the next.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)


def build_case(
    which: str, inputs: StepInputs, device: torch.device, cfg: ModelConfig | None = None
) -> TrainCase:
    """A full training step (backbone, RPN, ROI heads, SGD) of "ours" or "peer" on `inputs`."""
    cfg = cfg or ModelConfig()
    inputs = inputs.to(device)
    if which == "ours":
        model, targets = build_ours(cfg), inputs.targets
    elif which == "peer":
        model = build_peer(cfg, inputs.batch_size, inputs.image_size)
        targets = inputs.peer_targets
    else:
        raise ValueError(f"which must be one of {MODELS}, got {which!r}")
    model = model.to(device)
    return TrainCase(model, _optimizer(model), inputs.images, targets)


def build_heads_case(
    which: str, inputs: StepInputs, features: list[Tensor], cfg: ModelConfig | None = None
) -> TrainCase:
    """RPN + ROI heads forward and backward (no optimizer) of "ours" or "peer" on fixed FPN maps.

    features: [P2, P3, P4, P5, P6], Tensor[B, 256, H_pad / s, W_pad / s], leaves with requires_grad
    so that backward runs into them as it would into the backbone; they replace the model's backbone.
    """
    case = build_case(which, inputs, features[0].device, cfg)
    if which == "ours":
        case.model.backbone = FixedFeatures(features)
    else:
        case.model.detector.backbone = FixedFeatures(
            OrderedDict(zip(PEER_FEATURE_NAMES, features, strict=True))
        )
    case.optimizer = None
    return case


def fpn_features(
    inputs: StepInputs, device: torch.device, cfg: ModelConfig | None = None
) -> list[Tensor]:
    """Our randomly initialized backbone's [P2..P6] on `inputs`, computed once and detached, as
    leaves with requires_grad for build_heads_case."""
    backbone = build_ours(cfg or ModelConfig()).backbone.to(device)
    with torch.no_grad():
        features = backbone(inputs.images.to(device))
    return [f.requires_grad_() for f in features]


def time_interleaved(
    cases: dict[str, TrainCase], rounds: int, clock=time.perf_counter
) -> dict[str, list[float]]:
    """One untimed warm-up step of each case, then `rounds` rounds stepping every case once in turn.
    Returns each case's seconds of `clock` per round (the device is synced after every step)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for timed in [False] + [True] * rounds:
        for name, case in cases.items():
            start = clock()
            case.step()
            sync(case.images.device)
            if timed:
                times[name].append(clock() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Time ours and torchvision's Mask R-CNN in interleaved rounds (fp32)."
    )
    parser.add_argument("--case", choices=("step", "heads"), default="step")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 480), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the process's CPU seconds instead of wall-clock ones: with one thread on a "
        "shared machine, the work done regardless of how often other processes preempt it",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    inputs = make_inputs(args.batch, *args.size)
    if args.case == "step":
        cases = {which: build_case(which, inputs, device) for which in MODELS}
    else:
        features = fpn_features(inputs, device)
        cases = {which: build_heads_case(which, inputs, features) for which in MODELS}
    clock = time.process_time if args.cpu_time else time.perf_counter
    times = time_interleaved(cases, args.rounds, clock)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.case}, batch {args.batch}, {args.size[0]} x {args.size[1]}, fp32, {device}, "
        f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds after one warm-up, "
        + ("CPU" if args.cpu_time else "wall-clock")
        + " seconds"
    )
    for name, t in times.items():
        print(f"{name:>5}: median {medians[name]:.3f} s  rounds " + " ".join(f"{x:.3f}" for x in t))
    print(f"ratio (peer / ours, medians): {medians['peer'] / medians['ours']:.2f}x")


if __name__ == "__main__":
    main()
