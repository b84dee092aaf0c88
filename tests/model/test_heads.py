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
from harness.model.matching import pad_targets, sample_balanced
from harness.model.roi_heads import MaskHead, ROIHeads
from harness.model.rpn import RPN, RPN_BOX_WEIGHTS, RPNHead, conv3x3_neighbours
from harness.ops import box_iou


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
    features = [f.requires_grad_() for f in features]
    anchors, _ = rpn.anchors(features)
    objectness, deltas = rpn.head(features)
    image_sizes = [(128, 160), (120, 150)]
    gts = [random_gt(5, 120, g), random_gt(2, 120, g)]
    gt_boxes, _, gt_valid = pad_targets(gts, [torch.ones(len(b), dtype=torch.int64) for b in gts])
    losses = rpn.loss(features, anchors, image_sizes, gt_boxes, gt_valid)

    obj_sum, box_sum, sampled = 0.0, 0.0, 0
    for i, gt in enumerate(gts):
        m = plain_match(
            box_iou(gt, anchors, legacy=True), cfg.fg_iou_thresh, cfg.bg_iou_thresh, True
        )
        labels = (m >= 0).long()
        labels[m == -2] = -1
        h, w = image_sizes[i]
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
    # The loss evaluates the head at the sampled anchors only; the gradients must still be those of
    # the dense head's.
    inputs = [*features, *rpn.head.parameters()]
    batched = torch.autograd.grad(losses["loss_objectness"] + losses["loss_rpn_box_reg"], inputs)
    plain = torch.autograd.grad((obj_sum + box_sum) / sampled, inputs)
    for got, want in zip(batched, plain, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("channels_last", [False, True])
def test_rpn_head_at_equals_dense_head_gathered(channels_last):
    g = torch.Generator().manual_seed(5)
    head = RPNHead(6, 3).double()
    for p in head.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
    # Levels of 1 x 1 and 1 x N put every anchor next to the zero padding.
    shapes = [(9, 7), (5, 4), (1, 3), (1, 1)]
    features = [torch.randn(2, 6, h, w, generator=g, dtype=torch.float64) for h, w in shapes]
    if channels_last:
        features = [f.to(memory_format=torch.channels_last) for f in features]
    features = [f.requires_grad_() for f in features]
    objectness, deltas = head(features)
    idx = torch.randint(0, objectness.shape[1], (2, 40), generator=g)
    idx[0, :3] = torch.tensor([0, objectness.shape[1] - 1, objectness.shape[1] - 3])
    got_obj, got_deltas = head.at(features, idx)
    want_obj = objectness.gather(1, idx)
    want_deltas = deltas.gather(1, idx[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(got_obj, want_obj)
    torch.testing.assert_close(got_deltas, want_deltas)

    w_obj = torch.randn(want_obj.shape, generator=g, dtype=torch.float64)
    w_deltas = torch.randn(want_deltas.shape, generator=g, dtype=torch.float64)
    inputs = [*features, *head.parameters()]
    got = torch.autograd.grad((got_obj * w_obj).sum() + (got_deltas * w_deltas).sum(), inputs)
    want = torch.autograd.grad((want_obj * w_obj).sum() + (want_deltas * w_deltas).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_conv3x3_neighbours_golden():
    index, inside = conv3x3_neighbours([(2, 3), (1, 1)], torch.device("cpu"))
    assert index.shape == inside.shape == (7, 9)
    # Position (y=0, x=1) of the 2 x 3 level: the row above is padding.
    assert inside[1].tolist() == [False, False, False, True, True, True, True, True, True]
    assert index[1, 3:].tolist() == [0, 1, 2, 3, 4, 5]
    # The 1 x 1 level starts after the first level's 6 positions and has only its centre.
    assert index[6, 4] == 6 and inside[6].tolist() == [False] * 4 + [True] + [False] * 4


def test_mask_head_computes_only_the_chosen_class_channel():
    g = torch.Generator().manual_seed(6)
    head = MaskHead(8, (8, 8), num_classes=5, norm="").double()
    pooled = torch.randn(6, 8, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 4, 4, 0, 2, 1])
    got = head(pooled, labels)
    full = head.predictor(F.relu(head.deconv(head.convs(pooled))))
    want = full[torch.arange(6), labels]
    assert got.shape == (6, 14, 14)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    inputs = [pooled, *head.parameters()]
    for a, b in zip(
        torch.autograd.grad((got * weights).sum(), inputs),
        torch.autograd.grad((want * weights).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    assert head(pooled[:0], labels[:0]).shape == (0, 14, 14)


def test_roi_heads_losses_match_per_image():
    g = torch.Generator().manual_seed(3)
    cfg = dataclasses.replace(
        ROIHeadsConfig(), batch_size_per_image=64, mlp_head_dim=32, mask_conv_dims=(8,)
    )
    heads = ROIHeads(cfg, 8, num_classes=5)
    features = [
        torch.randn(2, 8, 128 // s, 128 // s, generator=g).requires_grad_() for s in (4, 8, 16, 32)
    ]
    gts = [random_gt(4, 128, g), random_gt(3, 128, g)]
    labels = [torch.randint(1, 5, (len(b),), generator=g) for b in gts]
    props = [
        torch.cat([gt + torch.randn(gt.shape, generator=g) * 6, random_gt(40, 128, g)])
        for gt in gts
    ]
    # Image 1 gets fewer proposals, so its padding slots must stay out of the losses.
    props[1] = props[1][:30]
    proposals, _, proposal_valid = pad_targets(props, [torch.zeros(len(p)) for p in props])
    gt_boxes, gt_labels, gt_valid = pad_targets(gts, labels)
    polys = [square_polygons(b) for b in gts]
    offsets = torch.tensor([0, polys[0].num_objects])
    losses = heads.forward_train(
        features,
        proposals,
        proposal_valid,
        gt_boxes,
        gt_labels,
        gt_valid,
        Polygons.cat(polys),
        offsets,
    )

    cls_sum, box_sum, mask_sum, sampled, mask_px = 0.0, 0.0, 0.0, 0, 0
    for i, (gt, lab) in enumerate(zip(gts, labels, strict=True)):
        boxes = torch.cat([props[i], gt])
        m = plain_match(box_iou(gt, boxes, legacy=True), 0.5, 0.5, False)
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
        mask_head = heads.mask_head
        pooled = ops.multilevel_roi_align(
            features, rois[: pos.numel()], 14, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2
        )
        mask_logits = mask_head.predictor(F.relu(mask_head.deconv(mask_head.convs(pooled))))
        targets = ops.mask_targets(polys[i], boxes[pos], m[pos], 28)
        chosen = mask_logits[torch.arange(pos.numel()), lab[m[pos]]]
        mask_sum += F.binary_cross_entropy_with_logits(chosen, targets, reduction="sum")
        sampled += rois.shape[0]
        mask_px += targets.numel()
    torch.testing.assert_close(losses["loss_classifier"], cls_sum / sampled)
    torch.testing.assert_close(losses["loss_box_reg"], box_sum / sampled)
    torch.testing.assert_close(losses["loss_mask"], mask_sum / mask_px)
    assert losses["loss_box_reg"] > 0
    inputs = [*features, *heads.parameters()]
    batched = torch.autograd.grad(sum(losses.values()), inputs)
    plain = torch.autograd.grad(cls_sum / sampled + box_sum / sampled + mask_sum / mask_px, inputs)
    for got, want in zip(batched, plain, strict=True):
        torch.testing.assert_close(got, want)


def reference_proposals(rpn, features, image_sizes):
    """The proposals as the index-list code computed them: drop small boxes, ops.batched_nms,
    then the first post_nms_top_n_train kept over the batch (training) or per image (test).
    Returns one Tensor[K_b, 4] per image, by decreasing score."""
    cfg = rpn.cfg
    objectness, deltas = rpn.head(features)
    anchors, levels = rpn.anchors(features)
    pre_nms = cfg.pre_nms_top_n_train if rpn.training else cfg.pre_nms_top_n_test
    batch, start, candidates = objectness.shape[0], 0, []
    for count in torch.bincount(levels).tolist():
        s, i = objectness[:, start : start + count].topk(min(pre_nms, count), dim=1)
        candidates.append((s, i + start))
        start += count
    scores = torch.cat([s for s, _ in candidates], dim=1)
    index = torch.cat([i for _, i in candidates], dim=1)
    boxes = ops.decode_boxes(
        deltas.gather(1, index[..., None].expand(-1, -1, 4)).reshape(-1, 4),
        anchors[index.reshape(-1)],
        RPN_BOX_WEIGHTS,
    ).view(batch, -1, 4)
    for b, (h, w) in enumerate(image_sizes):
        boxes[b, :, 0::2] = boxes[b, :, 0::2].clamp(0, w - 1)
        boxes[b, :, 1::2] = boxes[b, :, 1::2].clamp(0, h - 1)
    image = torch.arange(batch)[:, None].expand_as(scores).reshape(-1)
    groups = (image.view(batch, -1) * 5 + levels[index]).reshape(-1)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    big = ((boxes[:, 2:] - boxes[:, :2] + 1) >= cfg.min_size).all(dim=1)
    members = torch.nonzero(big).flatten()
    keep = members[ops.batched_nms(boxes[big], scores[big], groups[big], cfg.nms_thresh)]
    if rpn.training:
        keep = keep[: cfg.post_nms_top_n_train]
        return [boxes[keep[image[keep] == b]] for b in range(batch)]
    return [boxes[keep[image[keep] == b]][: cfg.post_nms_top_n_test] for b in range(batch)]


@pytest.mark.parametrize("training", [True, False])
def test_fixed_size_proposals_equal_the_index_list_ones(training):
    g = torch.Generator().manual_seed(6)
    cfg = dataclasses.replace(
        RPNConfig(),
        pre_nms_top_n_train=150,
        post_nms_top_n_train=50,
        pre_nms_top_n_test=120,
        post_nms_top_n_test=20,
        min_size=3,
    )
    rpn = RPN(cfg, 8).train(training)
    for p in rpn.head.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=g)
    features = [torch.randn(2, 8, 64 // s, 96 // s, generator=g) for s in (4, 8, 16, 32, 64)]
    image_sizes = [(64, 96), (50, 70)]
    gts = [random_gt(3, 50, g) for _ in range(2)]
    gt_boxes, _, gt_valid = pad_targets(gts, [torch.ones(3, dtype=torch.int64)] * 2)
    with torch.no_grad():
        boxes, valid, _ = rpn(features, image_sizes, gt_boxes, gt_valid)
        want = reference_proposals(rpn, features, image_sizes)
    assert boxes.shape == (2, 50 if training else 20, 4)
    for b in range(2):
        count = int(valid[b].sum())
        assert valid[b, :count].all(), "each image's proposals fill its first slots"
        torch.testing.assert_close(boxes[b, :count], want[b], rtol=0, atol=0)
    if training:
        assert int(valid.sum()) == 50, "more than 50 survive NMS: the batch-wide cut matters"
    else:
        assert int(valid[0].sum()) == 20, "the test's image 0 keeps its full quota"


def test_pool_keeps_rois_in_float32_under_autocast():
    """Under bf16 autocast the ROIs must not be rounded to the features' dtype: bf16 keeps 8 bits
    of mantissa, so a box edge at 300.7 px would move by up to 1 px and pool other pixels."""
    g = torch.Generator().manual_seed(7)
    heads = ROIHeads(ROIHeadsConfig(), 4, num_classes=3)
    features = [torch.randn(1, 4, 640 // s, 640 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = torch.rand(20, 2, generator=g) * 400 + 100.3
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(20, 2, generator=g) * 120], dim=1)
    rois = torch.cat([torch.zeros(20, 1), boxes], dim=1)
    assert not torch.equal(rois.bfloat16().float(), rois), "the ROIs must not be bf16-exact"
    half = [f.bfloat16() for f in features]
    want = ops.multilevel_roi_align(half, rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = heads._pool(half, rois, 7)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_rpn_training_keeps_top_candidates_over_the_batch():
    g = torch.Generator().manual_seed(4)
    cfg = dataclasses.replace(RPNConfig(), post_nms_top_n_train=300, pre_nms_top_n_train=200)
    rpn = RPN(cfg, 8).train()
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    features.append(torch.randn(2, 8, 1, 1, generator=g))
    gts = [random_gt(3, 64, g) for _ in range(2)]
    gt_boxes, _, gt_valid = pad_targets(gts, [torch.ones(3, dtype=torch.int64)] * 2)
    proposals, valid, _ = rpn(features, [(64, 64), (64, 64)], gt_boxes, gt_valid)
    # One image may hold all of the batch's 300, so each image has 300 slots.
    assert proposals.shape == (2, 300, 4) and valid.shape == (2, 300)
    assert 0 < int(valid.sum()) <= 300
    kept = proposals[valid]
    assert (kept[:, :2] >= 0).all() and (kept[:, 2:] <= 63).all()
