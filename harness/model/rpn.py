"""Region proposal network on FPN levels P2-P6, batched over images and levels.

Anchors, matching, sampling and losses run on [B, total_anchors] tensors; proposals of all images and
levels go through one batched NMS call. Proposal selection after NMS follows the reference: in training
the top `post_nms_top_n_train` over the whole per-GPU batch (MLPerf's num_image_candidates), at test
the top `post_nms_top_n_test` per image. Every shape is fixed by the config (proposals come back
padded, with a validity mask), so training never reads a count from the device.

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
    match,
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
        image_sizes: list[tuple[int, int]],
        gt_boxes: Tensor | None = None,
        gt_valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """features: FPN maps P2-P6; image_sizes: (h, w) of each resized image, host ints;
        gt_boxes: Tensor[B, G, 4] padded ground truth with gt_valid: Tensor[B, G] bool (training).

        Returns (proposals Tensor[B, P, 4] (x1, y1, x2, y2), valid Tensor[B, P] bool, losses):
        each image's proposals by decreasing score in its first slots, detached (see `propose`),
        and {"loss_objectness", "loss_rpn_box_reg"} in training (an empty dict otherwise).
        """
        # Proposals need no gradient; the losses recompute the head where they need one.
        with torch.no_grad():
            objectness, deltas = self.head(features)
        anchors, levels = self.anchors(features)
        per_level = [f.shape[-2] * f.shape[-1] * len(self.cfg.aspect_ratios) for f in features]
        sizes = sizes_tensor(image_sizes, anchors.device)
        proposals, valid = self.propose(objectness, deltas, anchors, levels, per_level, sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None or gt_valid is None:
                raise ValueError("RPN in training mode needs gt_boxes and gt_valid")
            losses = self.loss(features, anchors, image_sizes, gt_boxes, gt_valid)
        return proposals, valid, losses

    def loss(
        self,
        features: list[Tensor],
        anchors: Tensor,
        image_sizes: list[tuple[int, int]],
        gt_boxes: Tensor,
        gt_valid: Tensor,
    ) -> dict[str, Tensor]:
        """Match and sample anchors per image, then the objectness (binary cross-entropy) and box
        (smooth L1) losses of the sampled anchors, both over the number sampled in the batch; the
        head is evaluated at the sampled anchors only (RPNHead.at). image_sizes: (h, w) host ints."""
        cfg = self.cfg
        # +1 widths: maskrcnn-benchmark's boxlist_iou
        iou = ops.box_iou(gt_boxes, anchors[None].expand(gt_boxes.shape[0], -1, -1), legacy=True)
        matches = match(iou, gt_valid, cfg.fg_iou_thresh, cfg.bg_iou_thresh, True)
        visible = torch.stack(
            [ops.anchor_visibility(anchors, size, cfg.straddle_thresh) for size in image_sizes]
        )
        trainable = visible & (matches != BETWEEN_THRESHOLDS)
        labels = torch.where(trainable, (matches >= 0).to(torch.int64), -1)
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
        per_level: list[int],
        image_sizes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Top-k per level and image, decode, clip, one batched NMS over (image, level) groups,
        then the reference's selection, with shapes fixed by the config (no host reads).

        per_level: the anchor count of each level (host ints); image_sizes: Tensor[B, 2] (h, w).
        Returns (boxes Tensor[B, P, 4], valid Tensor[B, P] bool), each image's proposals by
        decreasing score (ties: lower anchor index first) in its first slots. In training the
        top post_nms_top_n_train over the whole batch (the reference's num_image_candidates), any
        number of them from one image, so P = post_nms_top_n_train; at test the top
        post_nms_top_n_test of each image, P = post_nms_top_n_test (both capped by the candidates).
        """
        cfg = self.cfg
        pre_nms = cfg.pre_nms_top_n_train if self.training else cfg.pre_nms_top_n_test
        batch = objectness.shape[0]
        num_levels = len(cfg.anchor_strides)

        scores, index = [], []
        start = 0
        for count in per_level:
            s, i = objectness[:, start : start + count].topk(min(pre_nms, count), dim=1)
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
        if cfg.min_size > 0:
            big = (boxes[..., 2:] - boxes[..., :2] + 1 >= cfg.min_size).all(dim=2)
        else:
            big = torch.ones_like(scores, dtype=torch.bool)
        # Boxes below min_size get a group of their own: they suppress nothing and are dropped.
        groups = torch.where(big, groups, batch * num_levels)
        keep = ops.batched_nms_mask(
            boxes.reshape(-1, 4),
            scores.reshape(-1),
            groups.reshape(-1),
            cfg.nms_thresh,
            legacy=cfg.nms_legacy,
        )
        keep = keep.view(batch, -1) & big
        ranked = torch.where(keep, scores, float("-inf"))

        if not self.training:
            count = min(cfg.post_nms_top_n_test, ranked.shape[1])
            order = ranked.sort(dim=1, descending=True, stable=True).indices[:, :count]
            picked = boxes.gather(1, order[..., None].expand(-1, -1, 4))
            return picked, keep.gather(1, order)

        # The reference ranks proposals over the whole per-GPU batch (num_image_candidates).
        count = min(cfg.post_nms_top_n_train, ranked.numel())
        order = ranked.reshape(-1).sort(descending=True, stable=True).indices[:count]
        valid = keep.reshape(-1)[order]
        # Each pick's slot in its image: its rank among that image's valid picks. Invalid picks go
        # to a spare row `batch`, dropped at the end.
        image = torch.where(valid, image_idx.reshape(-1)[order], batch)
        # (F.one_hot would read its input's min and max on the host to check them.)
        onehot = (image[:, None] == torch.arange(batch + 1, device=image.device)).to(torch.int64)
        slot = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
        out_boxes = boxes.new_zeros(batch + 1, count, 4)
        out_valid = torch.zeros(batch + 1, count, dtype=torch.bool, device=boxes.device)
        out_boxes[image, slot] = boxes.reshape(-1, 4)[order]
        out_valid[image, slot] = valid
        return out_boxes[:batch], out_valid[:batch]


def sizes_tensor(image_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """(h, w) host ints -> Tensor[B, 2] int64 on device. non_blocking: a blocking host-to-device
    copy waits for the GPU's queue (a sync); this one is staged from pageable memory at once."""
    return torch.tensor(image_sizes, dtype=torch.int64).reshape(-1, 2).to(device, non_blocking=True)
