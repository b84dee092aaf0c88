"""The assembled Mask R-CNN: loss keys, inference outputs, parameter count, and a tiny overfit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, box_iou

from harness.config import BackboneConfig, ModelConfig, ROIHeadsConfig, RPNConfig
from harness.data.batch import ImageTarget, Polygons
from harness.model import build_model
from harness.model.roi_heads import paste_masks

LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def small_config(num_classes: int = 3, **backbone) -> ModelConfig:
    return ModelConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(depth=18, norm="gn", freeze_at=0, **backbone),
        rpn=RPNConfig(
            pre_nms_top_n_train=300,
            post_nms_top_n_train=200,
            pre_nms_top_n_test=200,
            post_nms_top_n_test=100,
            batch_size_per_image=64,
        ),
        roi_heads=ROIHeadsConfig(batch_size_per_image=32, mlp_head_dim=64, mask_conv_dims=(32, 32)),
    )


def scene(size: int = 96):
    """Two images: a bright square (class 1) and a dark disc-like octagon (class 2) each."""
    images = torch.zeros(2, 3, size, size)
    targets = []
    for i, (sq, oc) in enumerate(
        [((10, 12, 50, 52), (56, 50, 90, 84)), ((40, 8, 86, 50), (8, 48, 44, 88))]
    ):
        x1, y1, x2, y2 = sq
        images[i, 0, y1:y2, x1:x2] = 2.0
        cx, cy, r = (oc[0] + oc[2]) / 2, (oc[1] + oc[3]) / 2, (oc[2] - oc[0]) / 2
        octagon = []
        for k in range(8):
            a = 2 * math.pi * k / 8
            octagon += [cx + r * math.cos(a), cy + r * math.sin(a)]
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        images[i, 2][((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = 2.0
        square = [x1, y1, x2, y1, x2, y2, x1, y2]
        polys = Polygons.from_lists([[square], [octagon]])
        boxes = torch.tensor([[x1, y1, x2, y2], [cx - r, cy - r, cx + r, cy + r]])
        targets.append(
            ImageTarget(boxes, torch.tensor([1, 2]), polys, i, (size, size), (size, size))
        )
    return images, targets


def test_training_forward_gives_finite_losses_and_gradients():
    model = build_model(small_config()).train()
    images, targets = scene()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name in (
        "rpn.head.cls_logits.weight",
        "roi_heads.box_head.cls_score.weight",
        "roi_heads.mask_head.predictor.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_image_without_objects_trains():
    model = build_model(small_config()).train()
    images, targets = scene()
    empty = ImageTarget(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        Polygons.from_lists([]),
        7,
        (96, 96),
        (96, 96),
    )
    losses = model(images, [targets[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_inference_outputs():
    model = build_model(small_config()).eval()
    images, targets = scene()
    detections = model(images, targets)
    assert len(detections) == 2
    for det in detections:
        d = det.boxes.shape[0]
        assert d <= 100
        assert det.scores.shape == (d,) and det.labels.shape == (d,)
        assert det.masks.shape == (d, 28, 28)
        if d:
            assert det.labels.min() >= 1 and det.labels.max() <= 2
            assert (det.scores > 0.05).all()
            assert ((det.masks >= 0) & (det.masks <= 1)).all()


def test_targets_must_match_batch():
    model = build_model(small_config()).train()
    images, targets = scene()
    with pytest.raises(ValueError, match="targets has 1 entries"):
        model(images, targets[:1])


@pytest.mark.slow
def test_parameter_count_equals_reference_architecture():
    """The reference R50-FPN Mask R-CNN, as torchvision builds the same architecture (frozen BN as
    buffers in both), has exactly as many parameters as ours."""
    ours = build_model(ModelConfig())
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    reference = TorchvisionMaskRCNN(backbone, num_classes=81)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(reference)
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert trainable(ours) == trainable(reference)


def test_paste_masks_full_box_and_clipping():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 29.0, 39.0], [-10.0, -10.0, 5.0, 5.0]])
    pasted = paste_masks(masks, boxes, 50, 60)
    assert pasted.shape == (2, 50, 60)
    # The one-pixel zero border the reference pads with blurs the box edge; the inside is solid.
    assert pasted[0, 21:39, 11:29].all()
    assert not pasted[0, :19].any() and not pasted[0, 41:].any() and not pasted[0, :, :9].any()
    assert pasted[1, :5, :5].all() and not pasted[1, 7:].any()


@pytest.mark.slow
def test_overfits_two_images():
    torch.manual_seed(0)
    cfg = small_config()
    model = build_model(cfg).train()
    images, targets = scene()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first = None
    for it in range(120):
        for group in opt.param_groups:
            group["lr"] = 0.01 * min(1.0, (it + 1) / 20)
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        detections = model(images, targets)
    for det, target in zip(detections, targets, strict=True):
        for box, label in zip(target.boxes, target.labels, strict=True):
            same = det.labels == label
            assert same.any(), f"class {label} not detected"
            assert box_iou(box[None], det.boxes[same]).max() > 0.5


def test_channels_last_model_runs():
    cfg = dataclasses.replace(small_config(), channels_last=True)
    model = build_model(cfg).train()
    images, targets = scene()
    losses = model(images.contiguous(memory_format=torch.channels_last), targets)
    assert all(torch.isfinite(v) for v in losses.values())
