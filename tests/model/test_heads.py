"""The batched RPN and ROI heads equal a straightforward per-image computation.

Sampling draws its keys from `matching.sampling_keys`; the tests replace it with a hash of each
candidate box so that the batched and the per-image paths sample exactly the same elements.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from harness import ops
from harness.config import ROIHeadsConfig, RPNConfig
from harness.data.batch import Polygons
from harness.model import matching
from harness.model.matching import box_iou, pad_targets, sample_balanced
from harness.model.roi_heads import ROIHeads
from harness.model.rpn import RPN, RPN_BOX_WEIGHTS


def box_hash_keys(boxes: torch.Tensor) -> torch.Tensor:
    b = boxes.double()
    x = b[..., 0] * 12.9898 + b[..., 1] * 78.233 + b[..., 2] * 37.719 + b[..., 3] * 4.581
    return torch.frac(torch.sin(x).abs() * 43758.5453).to(boxes.dtype)


@pytest.fixture(autouse=True)
def _deterministic_keys(monkeypatch):
    monkeypatch.setattr(matching, "sampling_keys", box_hash_keys)


def random_gt(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.7
    wh = 8 + torch.rand(n, 2, generator=generator) * size * 0.3
    return torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)


def square_polygons(boxes: torch.Tensor) -> Polygons:
    return Polygons.from_lists(
        [[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]] for b in boxes.tolist()]
    )


def plain_match(iou, high, low, low_quality):
    """The reference Matcher for one image: iou Tensor[G, N]."""
    vals, idx = iou.max(dim=0)
    out = idx.clone()
    out[vals < low] = -1
    out[(vals >= low) & (vals < high)] = -2
    if low_quality:
        for g in range(iou.shape[0]):
            best = iou[g].max()
            if best > 0:
                hit = iou[g] == best
                out[hit] = idx[hit]
    return out


def plain_sample(labels, keys, per_image, fraction):
    pos = torch.nonzero(labels == 1).flatten()
    pos = pos[torch.argsort(keys[pos], stable=True)][: int(per_image * fraction)]
    neg = torch.nonzero(labels == 0).flatten()
    neg = neg[torch.argsort(keys[neg], stable=True)][: per_image - pos.numel()]
    return pos, neg


def test_sample_balanced_matches_per_image():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(-1, 2, (3, 500), generator=g)
    labels[1, :] = torch.where(labels[1] == 1, 0, labels[1])  # an image without positives
    keys = torch.rand(3, 500, generator=g)
    pos_idx, pos_valid, neg_idx, neg_valid = sample_balanced(labels, 64, 0.25, keys)
    for i in range(3):
        pos, neg = plain_sample(labels[i], keys[i], 64, 0.25)
        assert torch.equal(pos_idx[i][pos_valid[i]], pos)
        assert torch.equal(neg_idx[i][neg_valid[i]], neg)
        assert pos.numel() + neg.numel() == min(64, int((labels[i] >= 0).sum()))


def test_rpn_loss_matches_per_image():
    g = torch.Generator().manual_seed(2)
    cfg = RPNConfig()
    rpn = RPN(cfg, 8)
    features = [torch.randn(2, 8, 128 // s, 160 // s, generator=g) for s in cfg.anchor_strides]
    features[-1] = torch.randn(2, 8, 2, 3, generator=g)
    anchors, _ = rpn.anchors(features)
    objectness, deltas = rpn.head(features)
    image_sizes = torch.tensor([[128, 160], [120, 150]])
    gts = [random_gt(5, 120, g), random_gt(2, 120, g)]
    gt_boxes, _, gt_valid = pad_targets(gts, [torch.ones(len(b), dtype=torch.int64) for b in gts])
    losses = rpn.loss(objectness, deltas, anchors, image_sizes, gt_boxes, gt_valid)

    obj_sum, box_sum, sampled = 0.0, 0.0, 0
    for i, gt in enumerate(gts):
        m = plain_match(box_iou(gt, anchors), cfg.fg_iou_thresh, cfg.bg_iou_thresh, True)
        labels = (m >= 0).long()
        labels[m == -2] = -1
        h, w = image_sizes[i].tolist()
        inside = (
            (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < w) & (anchors[:, 3] < h)
        )
        labels[~inside] = -1
        pos, neg = plain_sample(labels, box_hash_keys(anchors[None])[0], 256, 0.5)
        logits = objectness[i, torch.cat([pos, neg])]
        target = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())])
        obj_sum += F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        reg = ops.encode_boxes(gt[m[pos]], anchors[pos], RPN_BOX_WEIGHTS)
        box_sum += F.smooth_l1_loss(deltas[i, pos], reg, beta=1 / 9, reduction="sum")
        sampled += pos.numel() + neg.numel()
    torch.testing.assert_close(losses["loss_objectness"], obj_sum / sampled)
    torch.testing.assert_close(losses["loss_rpn_box_reg"], box_sum / sampled)
    assert losses["loss_rpn_box_reg"] > 0  # positives were found: the comparison is not vacuous


def test_roi_heads_losses_match_per_image():
    g = torch.Generator().manual_seed(3)
    cfg = dataclasses.replace(
        ROIHeadsConfig(), batch_size_per_image=64, mlp_head_dim=32, mask_conv_dims=(8,)
    )
    heads = ROIHeads(cfg, 8, num_classes=5)
    features = [torch.randn(2, 8, 128 // s, 128 // s, generator=g) for s in (4, 8, 16, 32)]
    gts = [random_gt(4, 128, g), random_gt(3, 128, g)]
    labels = [torch.randint(1, 5, (len(b),), generator=g) for b in gts]
    props = [
        torch.cat([gt + torch.randn(gt.shape, generator=g) * 6, random_gt(40, 128, g)])
        for gt in gts
    ]
    proposals = torch.cat(
        [torch.cat([torch.full((len(p), 1), float(i)), p], dim=1) for i, p in enumerate(props)]
    )
    gt_boxes, gt_labels, gt_valid = pad_targets(gts, labels)
    polys = [square_polygons(b) for b in gts]
    offsets = torch.tensor([0, polys[0].num_objects])
    losses = heads.forward_train(
        features, proposals, gt_boxes, gt_labels, gt_valid, Polygons.cat(polys), offsets
    )

    cls_sum, box_sum, mask_sum, sampled, mask_px = 0.0, 0.0, 0.0, 0, 0
    for i, (gt, lab) in enumerate(zip(gts, labels, strict=True)):
        boxes = torch.cat([props[i], gt])
        m = plain_match(box_iou(gt, boxes), 0.5, 0.5, False)
        pos, neg = plain_sample((m >= 0).long(), box_hash_keys(boxes[None])[0], 64, 0.25)
        rois_xyxy = boxes[torch.cat([pos, neg])]
        rois = torch.cat([torch.full((len(rois_xyxy), 1), float(i)), rois_xyxy], dim=1)
        target_cls = torch.cat([lab[m[pos]], torch.zeros(neg.numel(), dtype=torch.int64)])
        pooled = ops.multilevel_roi_align(features, rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2)
        logits, deltas = heads.box_head(pooled)
        cls_sum += F.cross_entropy(logits, target_cls, reduction="sum")
        reg = ops.encode_boxes(gt[m[pos]], boxes[pos], cfg.bbox_reg_weights)
        picked = deltas[: pos.numel()].view(pos.numel(), -1, 4)[
            torch.arange(pos.numel()), lab[m[pos]]
        ]
        box_sum += F.smooth_l1_loss(picked, reg, beta=1.0, reduction="sum")
        mask_logits = heads.mask_head(
            ops.multilevel_roi_align(
                features, rois[: pos.numel()], 14, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2
            )
        )
        targets = ops.mask_targets(polys[i], boxes[pos], m[pos], 28)
        chosen = mask_logits[torch.arange(pos.numel()), lab[m[pos]]]
        mask_sum += F.binary_cross_entropy_with_logits(chosen, targets, reduction="sum")
        sampled += rois.shape[0]
        mask_px += targets.numel()
    torch.testing.assert_close(losses["loss_classifier"], cls_sum / sampled)
    torch.testing.assert_close(losses["loss_box_reg"], box_sum / sampled)
    torch.testing.assert_close(losses["loss_mask"], mask_sum / mask_px)
    assert losses["loss_box_reg"] > 0


def test_rpn_training_keeps_top_candidates_over_the_batch():
    g = torch.Generator().manual_seed(4)
    cfg = dataclasses.replace(RPNConfig(), post_nms_top_n_train=300, pre_nms_top_n_train=200)
    rpn = RPN(cfg, 8).train()
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    features.append(torch.randn(2, 8, 1, 1, generator=g))
    gts = [random_gt(3, 64, g) for _ in range(2)]
    gt_boxes, _, gt_valid = pad_targets(gts, [torch.ones(3, dtype=torch.int64)] * 2)
    proposals, _ = rpn(features, torch.tensor([[64, 64], [64, 64]]), gt_boxes, gt_valid)
    assert proposals.shape[1] == 5 and proposals.shape[0] <= 300
    image = proposals[:, 0]
    assert torch.all(image[1:] >= image[:-1]), "proposals must be grouped by image"
    assert (proposals[:, 1:3] >= 0).all() and (proposals[:, 3:] <= 63).all()
