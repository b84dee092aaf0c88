"""Batched box matching and balanced sampling, as the MLPerf reference defines them.

Everything works on padded per-image tensors ([B, ...] plus validity masks), so a whole batch is matched
and sampled without a Python loop over images and without host syncs.
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    iou: Tensor,
    gt_valid: Tensor,
    high: float,
    low: float,
    allow_low_quality: bool,
) -> Tensor:
    """Match each prediction to its best ground truth (maskrcnn-benchmark's Matcher).

    iou: Tensor[B, G, N] (ground truth x predictions); gt_valid: Tensor[B, G] bool (padding is False).
    Returns Tensor[B, N] int64: the matched gt index, BELOW_LOW_THRESHOLD (-1) or BETWEEN_THRESHOLDS (-2).
    With allow_low_quality, every prediction whose IoU with some gt equals that gt's best IoU keeps its
    match even below `high` (so every gt gets at least one prediction).
    """
    iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
    vals, matches = iou.max(dim=1)
    # torch.where, not boolean-mask assignment: that is an index_put whose CUDA kernel syncs.
    result = torch.where(vals < high, BETWEEN_THRESHOLDS, matches)
    result = torch.where(vals < low, BELOW_LOW_THRESHOLD, result)
    if allow_low_quality:
        best_per_gt = iou.max(dim=2, keepdim=True).values
        # A gt with no overlap at all (best 0) must not claim every zero-IoU prediction.
        is_best = (iou == best_per_gt) & (best_per_gt > 0) & gt_valid[:, :, None]
        restore = is_best.any(dim=1)
        result = torch.where(restore, matches, result)
    no_gt = ~gt_valid.any(dim=1, keepdim=True)
    return torch.where(no_gt, BELOW_LOW_THRESHOLD, result)


def sample_balanced(
    labels: Tensor, batch_size_per_image: int, positive_fraction: float, keys: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Balanced positive/negative sampling per image, without host syncs.

    labels: Tensor[B, N] int, 1 = positive, 0 = negative, -1 = ignore.
    keys: Tensor[B, N] float in [0, 1): the random draw, passed in so that a per-image computation can
    reproduce the batch's choice. The num_pos positives with the smallest keys are kept,
    num_pos = min(#positives, int(batch_size_per_image * positive_fraction)), then the
    batch_size_per_image - num_pos negatives with the smallest keys.
    Returns (pos_idx, pos_valid, neg_idx, neg_valid): indices into N, Tensor[B, Qp] / Tensor[B, Qn]
    int64 in increasing key order, with bool masks marking which slots hold a sampled element.
    """
    n = labels.shape[1]
    pos_quota = min(int(batch_size_per_image * positive_fraction), n)
    neg_quota = min(batch_size_per_image, n)
    never = torch.full_like(keys, 2.0)
    pos_vals, pos_idx = torch.where(labels == 1, keys, never).topk(pos_quota, dim=1, largest=False)
    pos_valid = pos_vals < 2
    neg_vals, neg_idx = torch.where(labels == 0, keys, never).topk(neg_quota, dim=1, largest=False)
    rank = torch.arange(neg_quota, device=labels.device)[None, :]
    neg_valid = (neg_vals < 2) & (rank < batch_size_per_image - pos_valid.sum(dim=1, keepdim=True))
    return pos_idx, pos_valid, neg_idx, neg_valid


def sampling_keys(boxes: Tensor) -> Tensor:
    """The random draw behind sampling: Tensor[B, N, 4] candidate boxes -> Tensor[B, N] uniform keys.

    One function serves the RPN and the ROI heads so that a test can replace it with a draw derived
    from the boxes themselves, making batched and per-image sampling pick the same elements.
    """
    return torch.rand(boxes.shape[:2], device=boxes.device)


def pad_targets(boxes: list[Tensor], labels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image ground truth into padded tensors.

    Returns boxes Tensor[B, G, 4], labels Tensor[B, G] int64 (0 where padded), valid Tensor[B, G] bool,
    G = max(1, largest count) so that images without objects still give well-formed shapes.
    """
    count = max([b.shape[0] for b in boxes] + [1])
    device = boxes[0].device
    out_boxes = torch.zeros(len(boxes), count, 4, device=device, dtype=boxes[0].dtype)
    out_labels = torch.zeros(len(boxes), count, device=device, dtype=torch.int64)
    valid = torch.zeros(len(boxes), count, device=device, dtype=torch.bool)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        out_boxes[i, : b.shape[0]] = b
        out_labels[i, : b.shape[0]] = lab
        valid[i, : b.shape[0]] = True
    return out_boxes, out_labels, valid


def rank_within_group(groups: Tensor) -> Tensor:
    """For elements already ordered by decreasing score: each one's rank inside its group.

    groups: Tensor[N] int64 -> Tensor[N] int64 (0 for the best of each group).
    """
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(groups.numel(), device=groups.device) - first
    return rank
