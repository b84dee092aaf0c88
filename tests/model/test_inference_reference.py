"""The box head's inference post-processing (ROIHeads.forward_test) against a per-image, per-class
reference written out plainly: decode each proposal's class box with the (+1 widths) box coder,
clip it to its image, keep (proposal, class) pairs scoring above score_thresh, NMS per class
(torchvision's, with the reference's +1 widths when nms_legacy), then the detections_per_img
best of the image by decreasing score.

The reference (maskrcnn-benchmark's box_head/inference.py PostProcessor) does the same per image
and class; it then keeps every detection scoring at least the detections_per_img-th best (so a tie
there may keep more) in class order. The harness keeps exactly detections_per_img, ordered by
score, and COCO evaluation sorts by score itself: on the tie-free scores drawn here the two agree.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from harness.config import ROIHeadsConfig
from harness.model.roi_heads import ROIHeads

NUM_CLASSES = 6
CHANNELS = 8
# Non-square images of different sizes in one batch padded to 128 x 128, so a swapped height and
# width or another image's size would clip differently.
IMAGE_SIZES = [(96, 128), (128, 72), (64, 100)]
PADDED = 128
SLOTS = 90  # proposal slots per image; some are invalid
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _inputs(seed: int) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """FPN features P2-P5, proposals Tensor[B, SLOTS, 4] clustered around a few objects per image
    (so NMS has work), clipped to their image as the RPN leaves them, a validity mask with a few
    invalid slots per image, and image_sizes Tensor[B, 2] (h, w)."""
    gen = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(len(IMAGE_SIZES), CHANNELS, PADDED // s, PADDED // s, generator=gen)
        for s in (4, 8, 16, 32)
    ]
    proposals, valid = [], []
    for height, width in IMAGE_SIZES:
        limit = torch.tensor([width, height], dtype=torch.float32)
        centres = torch.rand(5, 2, generator=gen) * limit
        sizes = 12 + torch.rand(5, 2, generator=gen) * 40
        pick = torch.randint(0, 5, (SLOTS,), generator=gen)
        wh = sizes[pick] * torch.exp(torch.randn(SLOTS, 2, generator=gen) * 0.2)
        ctr = centres[pick] + torch.randn(SLOTS, 2, generator=gen) * 0.15 * wh
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
        proposals.append(torch.minimum(boxes.clamp(min=0), (limit - 1).repeat(2)))
        valid.append(torch.rand(SLOTS, generator=gen) > 0.15)
    image_sizes = torch.tensor(IMAGE_SIZES)
    return features, torch.stack(proposals), torch.stack(valid), image_sizes


def _heads(legacy: bool, detections_per_img: int, seed: int) -> ROIHeads:
    cfg = dataclasses.replace(
        ROIHeadsConfig(),
        mlp_head_dim=32,
        mask_conv_dims=(8,),
        nms_legacy=legacy,
        detections_per_img=detections_per_img,
    )
    torch.manual_seed(seed)
    heads = ROIHeads(cfg, CHANNELS, NUM_CLASSES).eval()
    # A fresh head predicts near-uniform classes and near-zero deltas; spread both as a trained
    # head's are, so scores straddle the threshold and decoded boxes move and leave the image.
    with torch.no_grad():
        heads.box_head.cls_score.weight.normal_(0, 2.0)
        heads.box_head.bbox_pred.weight.normal_(0, 0.6)
    return heads


def _decode(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...]) -> Tensor:
    """The box coder written out: Tensor[N, 4] deltas (dx, dy, dw, dh) applied to Tensor[N, 4]
    boxes with +1 widths; dw and dh are clipped at log(1000 / 16)."""
    wx, wy, ww, wh = weights
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    pred_ctr_x = deltas[:, 0] / wx * widths + ctr_x
    pred_ctr_y = deltas[:, 1] / wy * heights + ctr_y
    pred_w = torch.exp((deltas[:, 2] / ww).clamp(max=BBOX_XFORM_CLIP)) * widths
    pred_h = torch.exp((deltas[:, 3] / wh).clamp(max=BBOX_XFORM_CLIP)) * heights
    return torch.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w - 1,
            pred_ctr_y + 0.5 * pred_h - 1,
        ],
        1,
    )


def reference_detections(
    cfg: ROIHeadsConfig,
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    image_sizes: Tensor,
) -> tuple[list[dict[str, Tensor]], dict[str, int]]:
    """Per image: {"boxes", "scores", "labels"}; class_logits/box_deltas are the box head's
    outputs for the valid proposals, image by image. Also counts of what each step removed."""
    probs = F.softmax(class_logits.float(), dim=1)
    deltas = box_deltas.float().view(len(probs), NUM_CLASSES, 4)
    counts = {"clipped": 0, "under threshold": 0, "suppressed": 0, "over the limit": 0}
    results, first = [], 0
    for image, (height, width) in enumerate(image_sizes.tolist()):
        boxes = proposals[image][proposal_valid[image]]
        rows = range(first, first + len(boxes))
        first += len(boxes)
        detections = []  # (score, proposal, class, box)
        for cls in range(1, NUM_CLASSES):
            decoded = _decode(deltas[rows.start : rows.stop, cls], boxes, cfg.bbox_reg_weights)
            upper = torch.tensor([width - 1, height - 1, width - 1, height - 1.0])
            clipped = torch.minimum(decoded.clamp(min=0), upper)
            counts["clipped"] += int((clipped != decoded).any(1).sum())
            scores = probs[rows.start : rows.stop, cls]
            above = [r for r in range(len(boxes)) if scores[r] > cfg.score_thresh]
            counts["under threshold"] += len(boxes) - len(above)
            if not above:
                continue
            cand_boxes, cand_scores = clipped[above], scores[above]
            # torchvision's NMS counts widths as x2 - x1; moving x2, y2 by one pixel gives the
            # reference's x2 - x1 + 1.
            nms_boxes = cand_boxes + torch.tensor([0, 0, 1, 1.0]) if cfg.nms_legacy else cand_boxes
            keep = torchvision.ops.nms(nms_boxes, cand_scores, cfg.nms_thresh).tolist()
            counts["suppressed"] += len(above) - len(keep)
            detections += [(float(cand_scores[k]), above[k], cls, cand_boxes[k]) for k in keep]
        detections.sort(key=lambda d: (-d[0], d[1], d[2]))
        counts["over the limit"] += max(len(detections) - cfg.detections_per_img, 0)
        detections = detections[: cfg.detections_per_img]
        results.append(
            {
                "boxes": torch.stack([d[3] for d in detections]).reshape(-1, 4),
                "scores": torch.tensor([d[0] for d in detections], dtype=torch.float32),
                "labels": torch.tensor([d[2] for d in detections], dtype=torch.int64),
            }
        )
    return results, counts


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("detections_per_img", [100, 12])
def test_forward_test_matches_the_per_image_per_class_reference(legacy, detections_per_img):
    heads = _heads(legacy, detections_per_img, seed=3)
    features, proposals, proposal_valid, image_sizes = _inputs(seed=4)
    got = heads.forward_test(features, proposals, proposal_valid, image_sizes)

    # The box head's outputs for the valid proposals, pooled as forward_test pools them.
    image_of = torch.arange(len(IMAGE_SIZES), dtype=torch.float32)[:, None, None]
    rois = torch.cat([image_of.expand(-1, SLOTS, 1), proposals], 2)[proposal_valid]
    with torch.no_grad():
        pooled = heads._pool(features, rois, heads.cfg.box_pooler_resolution)
        class_logits, box_deltas = heads.box_head(pooled)
    expected, counts = reference_detections(
        heads.cfg, class_logits, box_deltas, proposals, proposal_valid, image_sizes
    )

    # Every step of the post-processing had something to do on these inputs.
    assert min(counts["clipped"], counts["under threshold"], counts["suppressed"]) > 20, counts
    assert (counts["over the limit"] > 0) == (detections_per_img == 12), counts
    assert len(got) == len(expected) == len(IMAGE_SIZES)
    for image, (det, want) in enumerate(zip(got, expected, strict=True)):
        assert len(want["labels"]) > 5, image
        assert torch.equal(det.labels, want["labels"]), image
        assert torch.equal(det.scores, want["scores"]), image
        # Decoding here and in the kernel may round differently in the last bit.
        torch.testing.assert_close(det.boxes, want["boxes"], rtol=1e-6, atol=1e-4)
        assert det.masks.shape == (len(want["labels"]), 28, 28)


def test_legacy_switch_changes_the_detections():
    """On these inputs the +1 widths keep other boxes than plain widths, so the test above checks
    that forward_test passes the switch to NMS (and not only that both settings run)."""
    features, proposals, proposal_valid, image_sizes = _inputs(seed=4)
    plain, legacy = (
        _heads(flag, 100, seed=3).forward_test(features, proposals, proposal_valid, image_sizes)
        for flag in (False, True)
    )
    assert any(len(a.labels) != len(b.labels) for a, b in zip(plain, legacy, strict=True))
