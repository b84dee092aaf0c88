"""Region proposal network on FPN levels P2-P6, batched over images and levels.

Anchors, matching, sampling and losses run on [B, total_anchors] tensors; proposals of all images and
levels go through one batched NMS call. Proposal selection after NMS follows the reference: in training
the top `post_nms_top_n_train` over the whole per-GPU batch (MLPerf's num_image_candidates), at test
the top `post_nms_top_n_test` per image.

The head runs over every position without autograd, since proposals need no gradient; the losses
recompute it with autograd at the sampled anchors only (RPNHead.at). The losses' gradient is zero at
every other position, so the head's backward computes the same gradients from ~1/50 of the positions
instead of running the full 3x3 convolution's backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import ops
from harness.config import RPNConfig
from harness.model import matching
from harness.model.matching import (
    BETWEEN_THRESHOLDS,
    box_iou,
    match,
    rank_within_group,
    sample_balanced,
)

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def conv3x3_neighbours(sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """The 3x3 neighbourhood of every position of every level, as indices into the levels' positions
    concatenated in (level, y, x) order.

    sizes: (H_l, W_l) per level. Returns (index Tensor[P, 9] int64, inside Tensor[P, 9] bool),
    P = sum of H_l * W_l, neighbours in (dy, dx) row-major order from (-1, -1) to (1, 1); a
    neighbour outside its level (the convolution's zero padding) has inside False and an index that
    is valid but meaningless.
    """
    index, inside = [], []
    start = 0
    for h, w in sizes:
        y = torch.arange(h, device=device).repeat_interleave(w)[:, None]
        x = torch.arange(w, device=device).repeat(h)[:, None]
        offsets = torch.tensor([-1, 0, 1], device=device)
        ny = y + offsets.repeat_interleave(3)[None, :]
        nx = x + offsets.repeat(3)[None, :]
        inside.append((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w))
        index.append(start + ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1))
        start += h * w
    return torch.cat(index), torch.cat(inside)


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self._neighbour_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """features: FPN maps [B, C, H_l, W_l] -> (objectness Tensor[B, N], deltas Tensor[B, N, 4])
        concatenated over levels in the anchors' (level, y, x, anchor) order."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            o = self.cls_logits(t)
            b, a, h, w = o.shape
            logits.append(o.permute(0, 2, 3, 1).reshape(b, h * w * a))
            d = self.bbox_pred(t).view(b, a, 4, h, w)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)

    def at(self, features: list[Tensor], anchor_idx: Tensor) -> tuple[Tensor, Tensor]:
        """The head's outputs at chosen anchors only, equal to `forward`'s gathered there.

        features: FPN maps [B, C, H_l, W_l]; anchor_idx: Tensor[B, Q] int64, indices into forward's
        N anchors of each image. Returns (objectness Tensor[B, Q], deltas Tensor[B, Q, 4]).
        The 3x3 conv runs as one matrix product over the gathered 3x3 x C patches, so backward
        reaches the weights and the features only through those Q positions per image.
        """
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        key = (tuple(sizes), str(features[0].device))
        if key not in self._neighbour_cache:
            self._neighbour_cache[key] = conv3x3_neighbours(sizes, features[0].device)
        neighbours, inside = self._neighbour_cache[key]

        num_anchors = self.cls_logits.out_channels
        batch, count = anchor_idx.shape
        position = anchor_idx // num_anchors
        anchor = (anchor_idx % num_anchors).reshape(-1)
        flat = torch.cat([f.flatten(2) for f in features], dim=2)  # [B, C, P]
        image = torch.arange(batch, device=flat.device)[:, None, None]
        # Advanced indices around a slice put their dims first: [B, Q, 9, C].
        patches = flat[image, :, neighbours[position]]
        patches = patches * inside[position][..., None].to(patches.dtype)
        # The conv weight [C_out, C, 3, 3] in the patches' (dy, dx, C) order.
        weight = self.conv.weight.permute(0, 2, 3, 1).reshape(self.conv.out_channels, -1)
        t = F.relu(F.linear(patches.reshape(batch * count, -1), weight, self.conv.bias))

        cls_weight = self.cls_logits.weight.view(num_anchors, -1)[anchor]  # [BQ, C]
        logits = (t * cls_weight).sum(dim=1) + self.cls_logits.bias[anchor]
        box_weight = self.bbox_pred.weight.view(num_anchors, 4, -1)[anchor]  # [BQ, 4, C]
        deltas = (box_weight @ t[:, :, None])[..., 0] + self.bbox_pred.bias.view(-1, 4)[anchor]
        return logits.view(batch, count), deltas.view(batch, count, 4)


class RPN(nn.Module):
    def __init__(self, cfg: RPNConfig, in_channels: int):
        super().__init__()
        if len(cfg.anchor_sizes) != len(cfg.anchor_strides):
            raise ValueError(
                f"rpn.anchor_sizes ({len(cfg.anchor_sizes)}) and rpn.anchor_strides "
                f"({len(cfg.anchor_strides)}) must have one entry per FPN level"
            )
        self.cfg = cfg
        self.head = RPNHead(in_channels, len(cfg.aspect_ratios))
        self._anchor_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def anchors(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """All levels' anchors (Tensor[N, 4]) and each anchor's level (Tensor[N] int64), cached."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        key = (tuple(sizes), str(features[0].device))
        if key not in self._anchor_cache:
            per_level = ops.generate_anchors(
                sizes,
                self.cfg.anchor_strides,
                self.cfg.anchor_sizes,
                self.cfg.aspect_ratios,
                device=features[0].device,
            )
            levels = torch.cat(
                [torch.full((a.shape[0],), i, dtype=torch.int64) for i, a in enumerate(per_level)]
            ).to(features[0].device)
            self._anchor_cache[key] = (torch.cat(per_level), levels)
        return self._anchor_cache[key]

    def forward(
        self,
        features: list[Tensor],
        image_sizes: Tensor,
        gt_boxes: Tensor | None = None,
        gt_valid: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """features: FPN maps P2-P6; image_sizes: Tensor[B, 2] (h, w) of the resized images;
        gt_boxes: Tensor[B, G, 4] padded ground truth with gt_valid: Tensor[B, G] bool (training).

        Returns proposals Tensor[K, 5] (batch index, x1, y1, x2, y2), detached and grouped by image,
        and the losses {"loss_objectness", "loss_rpn_box_reg"} in training (empty dict otherwise).
        """
        # Proposals need no gradient; the losses recompute the head where they need one.
        with torch.no_grad():
            objectness, deltas = self.head(features)
        anchors, levels = self.anchors(features)
        proposals = self.propose(objectness, deltas, anchors, levels, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None or gt_valid is None:
                raise ValueError("RPN in training mode needs gt_boxes and gt_valid")
            losses = self.loss(features, anchors, image_sizes, gt_boxes, gt_valid)
        return proposals, losses

    def visibility(self, anchors: Tensor, image_sizes: Tensor) -> Tensor:
        """Tensor[B, N] bool: the anchor lies inside the image within straddle_thresh."""
        t = self.cfg.straddle_thresh
        if t < 0:
            return torch.ones(
                image_sizes.shape[0], anchors.shape[0], dtype=torch.bool, device=anchors.device
            )
        h = image_sizes[:, 0:1].to(anchors.dtype)
        w = image_sizes[:, 1:2].to(anchors.dtype)
        return (
            (anchors[None, :, 0] >= -t)
            & (anchors[None, :, 1] >= -t)
            & (anchors[None, :, 2] < w + t)
            & (anchors[None, :, 3] < h + t)
        )

    def loss(
        self,
        features: list[Tensor],
        anchors: Tensor,
        image_sizes: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
    ) -> dict[str, Tensor]:
        """Match and sample anchors per image, then the objectness (binary cross-entropy) and box
        (smooth L1) losses of the sampled anchors, both over the number sampled in the batch; the
        head is evaluated at the sampled anchors only (RPNHead.at)."""
        cfg = self.cfg
        iou = box_iou(gt_boxes, anchors[None].expand(gt_boxes.shape[0], -1, -1))
        matches = match(iou, gt_valid, cfg.fg_iou_thresh, cfg.bg_iou_thresh, True)
        labels = (matches >= 0).to(torch.int64)
        labels[matches == BETWEEN_THRESHOLDS] = -1
        labels[~self.visibility(anchors, image_sizes)] = -1
        keys = matching.sampling_keys(anchors[None].expand(labels.shape[0], -1, -1))
        pos_idx, pos_valid, neg_idx, neg_valid = sample_balanced(
            labels, cfg.batch_size_per_image, cfg.positive_fraction, keys
        )
        num_sampled = (pos_valid.sum() + neg_valid.sum()).clamp(min=1)

        sampled_idx = torch.cat([pos_idx, neg_idx], dim=1)
        sampled_valid = torch.cat([pos_valid, neg_valid], dim=1)
        objectness, deltas = self.head.at(features, sampled_idx)
        logits = objectness.float()
        target = torch.cat([pos_valid, torch.zeros_like(neg_valid)], dim=1).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss_obj = (bce * sampled_valid).sum() / num_sampled

        matched = matches.gather(1, pos_idx).clamp(min=0)
        target_boxes = gt_boxes.gather(1, matched[..., None].expand(-1, -1, 4))
        reg_targets = ops.encode_boxes(
            target_boxes.reshape(-1, 4), anchors[pos_idx.reshape(-1)], RPN_BOX_WEIGHTS
        ).view_as(target_boxes)
        pred = deltas[:, : pos_idx.shape[1]].float()
        l1 = F.smooth_l1_loss(pred, reg_targets, beta=cfg.smooth_l1_beta, reduction="none")
        loss_box = (l1.sum(dim=2) * pos_valid).sum() / num_sampled
        return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}

    @torch.no_grad()
    def propose(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        levels: Tensor,
        image_sizes: Tensor,
    ) -> Tensor:
        """Top-k per level and image, decode, clip, one batched NMS over (image, level) groups,
        then the reference's selection. Returns Tensor[K, 5] grouped by image."""
        cfg = self.cfg
        training = self.training
        pre_nms = cfg.pre_nms_top_n_train if training else cfg.pre_nms_top_n_test
        batch = objectness.shape[0]
        num_levels = len(cfg.anchor_strides)
        counts = torch.bincount(levels, minlength=num_levels).tolist()

        scores, index = [], []
        start = 0
        for count in counts:
            k = min(pre_nms, count)
            s, i = objectness[:, start : start + count].topk(k, dim=1)
            scores.append(s)
            index.append(i + start)
            start += count
        scores = torch.cat(scores, dim=1).float()
        index = torch.cat(index, dim=1)

        picked_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        boxes = ops.decode_boxes(picked_deltas.float(), anchors[index.reshape(-1)], RPN_BOX_WEIGHTS)
        boxes = boxes.view(batch, -1, 4)
        hw = image_sizes.to(boxes.dtype)
        upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None, :] - 1
        boxes = torch.minimum(boxes.clamp(min=0), upper)

        image_idx = torch.arange(batch, device=boxes.device)[:, None].expand_as(scores)
        groups = image_idx * num_levels + levels[index]
        flat_boxes = boxes.reshape(-1, 4)
        flat_scores = scores.reshape(-1)
        if cfg.min_size > 0:
            wh = flat_boxes[:, 2:] - flat_boxes[:, :2] + 1
            big = (wh >= cfg.min_size).all(dim=1)
            flat_boxes, flat_scores = flat_boxes[big], flat_scores[big]
            groups, image_idx = groups.reshape(-1)[big], image_idx.reshape(-1)[big]
        keep = ops.batched_nms(flat_boxes, flat_scores, groups.reshape(-1), cfg.nms_thresh)
        kept_images = image_idx.reshape(-1)[keep]

        if training:
            # The reference ranks proposals over the whole per-GPU batch (num_image_candidates).
            keep = keep[: cfg.post_nms_top_n_train]
            kept_images = kept_images[: cfg.post_nms_top_n_train]
        else:
            keep = keep[rank_within_group(kept_images) < cfg.post_nms_top_n_test]
            kept_images = image_idx.reshape(-1)[keep]
        order = torch.argsort(kept_images, stable=True)
        keep, kept_images = keep[order], kept_images[order]
        return torch.cat([kept_images[:, None].to(flat_boxes.dtype), flat_boxes[keep]], dim=1)
