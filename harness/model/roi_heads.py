"""Box and mask heads on FPN levels P2-P5: matching, sampling, targets, losses and inference.

Training runs on padded [B, P] proposal tensors (matching and sampling for the whole batch at once), then
on a fixed batch_size_per_image sampled ROIs per image, pooled from all levels in a single multilevel
ROIAlign call, with validity masks instead of data-dependent shapes: the step reads nothing from the
device on the host except the mask head's number of positives (ROIHeads._mask_loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import ops
from harness.config import ROIHeadsConfig
from harness.data.batch import Polygons
from harness.model import matching
from harness.model.matching import match, rank_within_group, sample_balanced


def _conv_norm(cin: int, cout: int, norm: str) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if norm == "gn":
        layers.append(nn.GroupNorm(32, cout))
    elif norm:
        raise ValueError(f"roi_heads.mask_norm must be '' or 'gn', got {norm!r}")
    layers.append(nn.ReLU(inplace=True))
    return layers


class BoxHead(nn.Module):
    """Two FC layers of mlp_head_dim, then class logits and per-class box deltas."""

    def __init__(self, in_channels: int, resolution: int, dim: int, num_classes: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, dim)
        self.fc7 = nn.Linear(dim, dim)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        self.cls_score = nn.Linear(dim, num_classes)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc6(pooled.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """4 conv 3x3 + ReLU, a 2x deconvolution + ReLU, and a 1x1 conv to one mask per class, of which
    each ROI needs one: its ground-truth class in training, its predicted class at inference."""

    def __init__(self, in_channels: int, dims: tuple[int, ...], num_classes: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        for dim in dims:
            layers += _conv_norm(in_channels, dim, norm)
            in_channels = dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.predictor = nn.Conv2d(in_channels, num_classes, 1)
        for layer in (self.deconv, self.predictor):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: Tensor, labels: Tensor) -> Tensor:
        """pooled: Tensor[R, C, M/2, M/2]; labels: Tensor[R] int64, one class per ROI.

        Returns Tensor[R, M, M]: the predictor's channel labels[r] for ROI r, computed alone (the
        other classes' channels are never used, so computing them would be wasted work).
        """
        x = F.relu(self.deconv(self.convs(pooled)))
        weight = self.predictor.weight.view(self.predictor.out_channels, -1)[labels]  # [R, C]
        logits = weight[:, None, :] @ x.flatten(2)  # [R, 1, M*M]
        return (logits[:, 0] + self.predictor.bias[labels][:, None]).view(x.shape[0], *x.shape[-2:])


@dataclass
class Detections:
    """Per-image detections in resized-image pixels.

    boxes: Tensor[D, 4] (x1, y1, x2, y2); scores: Tensor[D]; labels: Tensor[D] int64 (1..C-1);
    masks: Tensor[D, M, M] float probabilities in the box's frame (paste with `paste_masks`).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor


class ROIHeads(nn.Module):
    def __init__(self, cfg: ROIHeadsConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.box_head = BoxHead(
            in_channels, cfg.box_pooler_resolution, cfg.mlp_head_dim, num_classes
        )
        self.mask_head = MaskHead(in_channels, cfg.mask_conv_dims, num_classes, cfg.mask_norm)

    def _pool(self, features: list[Tensor], rois: Tensor, resolution: int) -> Tensor:
        """rois: Tensor[K, 5] float32, kept in float32 under autocast: a half-precision copy would
        snap coordinates in [512, 1024) to a 0.5 px grid (bf16: 4 px) and move FPN levels."""
        cfg = self.cfg
        return ops.multilevel_roi_align(
            features[: len(cfg.pooler_scales)],
            rois,
            resolution,
            list(cfg.pooler_scales),
            cfg.pooler_sampling_ratio,
        )

    def forward_train(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_valid: Tensor,
        polygons: Polygons,
        object_offsets: Tensor,
    ) -> dict[str, Tensor]:
        """proposals: Tensor[B, P, 4] with proposal_valid: Tensor[B, P] bool (RPN.propose);
        gt_*: padded [B, G, ...] ground truth; polygons: all images' objects concatenated, image
        b's objects starting at object_offsets[b].

        The box head runs on a fixed batch_size_per_image ROIs per image (positives first, padding
        slots masked out of the losses), so no step reads a count on the host; the mask head runs
        on exactly the positives (see `_mask_loss`).
        """
        cfg = self.cfg
        batch = gt_boxes.shape[0]
        # The reference adds the ground truth to the proposals of each image.
        boxes = torch.cat([proposals, gt_boxes.to(proposals.dtype)], dim=1)
        valid = torch.cat([proposal_valid, gt_valid], dim=1)

        iou = ops.box_iou(gt_boxes, boxes, legacy=True)  # +1 widths, as the reference matches
        matches = match(iou, gt_valid, cfg.fg_iou_thresh, cfg.bg_iou_thresh, False)
        labels = torch.where(valid, (matches >= 0).to(torch.int64), -1)
        keys = matching.sampling_keys(boxes)
        pos_idx, pos_valid, neg_idx, neg_valid = sample_balanced(
            labels, cfg.batch_size_per_image, cfg.positive_fraction, keys
        )

        # At most batch_size_per_image sampled per image: move them to the front slots.
        sampled_valid = torch.cat([pos_valid, neg_valid], dim=1)
        width = min(cfg.batch_size_per_image, sampled_valid.shape[1])
        front = torch.argsort((~sampled_valid).to(torch.uint8), dim=1, stable=True)[:, :width]
        slot_valid = sampled_valid.gather(1, front)
        slot_pos = (front < pos_idx.shape[1]) & slot_valid
        slot = torch.cat([pos_idx, neg_idx], dim=1).gather(1, front)
        roi_boxes = boxes.gather(1, slot[..., None].expand(-1, -1, 4))
        roi_gt = matches.gather(1, slot).clamp(min=0)
        roi_labels = torch.where(slot_pos, gt_labels.gather(1, roi_gt), 0)
        image_idx = torch.arange(batch, device=boxes.device)[:, None].expand_as(slot)
        rois = torch.cat([image_idx[..., None].to(roi_boxes.dtype), roi_boxes], dim=2)
        num_sampled = slot_valid.sum().clamp(min=1)

        class_logits, box_deltas = self.box_head(
            self._pool(features, rois.reshape(-1, 5), cfg.box_pooler_resolution)
        )
        flat_valid, flat_pos = slot_valid.reshape(-1), slot_pos.reshape(-1)
        flat_labels = roi_labels.reshape(-1)
        ce = F.cross_entropy(class_logits.float(), flat_labels, reduction="none")
        loss_cls = (ce * flat_valid).sum() / num_sampled

        target_boxes = gt_boxes.gather(1, roi_gt[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        reg_targets = ops.encode_boxes(target_boxes, roi_boxes.reshape(-1, 4), cfg.bbox_reg_weights)
        # Negatives and padding may hold degenerate boxes (NaN targets); zero them, since a NaN
        # times a zero mask would still be NaN, in the loss and in its gradient.
        reg_targets = torch.where(flat_pos[:, None], reg_targets, 0)
        rows = torch.arange(flat_labels.shape[0], device=boxes.device)
        pred = box_deltas.view(flat_labels.shape[0], -1, 4)[rows, flat_labels].float()
        l1 = F.smooth_l1_loss(pred, reg_targets, beta=cfg.box_smooth_l1_beta, reduction="none")
        loss_box = (l1.sum(dim=1) * flat_pos).sum() / num_sampled

        loss_mask = self._mask_loss(
            features, boxes, matches, gt_labels, pos_idx, pos_valid, polygons, object_offsets
        )
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}

    def _mask_loss(
        self,
        features: list[Tensor],
        boxes: Tensor,
        matches: Tensor,
        gt_labels: Tensor,
        pos_idx: Tensor,
        pos_valid: Tensor,
        polygons: Polygons,
        object_offsets: Tensor,
    ) -> Tensor:
        """Mask loss of the positives: boxes Tensor[B, N, 4] with matches Tensor[B, N] into the
        ground truth; pos_idx/pos_valid Tensor[B, Qp] from sample_balanced.

        The step's one host sync: the number of positives. Padding the mask head to every
        possible positive (Qp per image) would instead run its convolutions on all Qp slots,
        most of them empty (benchmarks/RESULTS.md, "Host syncs", has the FLOPs).
        """
        cfg = self.cfg
        num_pos = int(pos_valid.sum())
        # The positives' flat slots, image by image in sampling order, without a nonzero.
        flat = torch.argsort((~pos_valid.reshape(-1)).to(torch.uint8), stable=True)[:num_pos]
        pos_b = flat // pos_idx.shape[1]
        pos_slot = pos_idx.reshape(-1)[flat]
        pos_gt = matches[pos_b, pos_slot]
        pos_boxes = boxes[pos_b, pos_slot]
        rois = torch.cat([pos_b[:, None].to(pos_boxes.dtype), pos_boxes], dim=1)
        mask_logits = self.mask_head(
            self._pool(features, rois, cfg.mask_pooler_resolution), gt_labels[pos_b, pos_gt]
        )
        if num_pos == 0:
            return mask_logits.sum() * 0
        targets = ops.mask_targets(
            polygons, pos_boxes.float(), object_offsets[pos_b] + pos_gt, cfg.mask_resolution
        )
        return F.binary_cross_entropy_with_logits(mask_logits.float(), targets)

    @torch.no_grad()
    def forward_test(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
    ) -> list[Detections]:
        """proposals: Tensor[B, P, 4] with proposal_valid: Tensor[B, P] bool (RPN.propose);
        image_sizes: Tensor[B, 2] (h, w). Evaluation may read counts on the host."""
        cfg = self.cfg
        batch = image_sizes.shape[0]
        num_classes = self.num_classes
        image_of = torch.arange(batch, device=proposals.device)[:, None, None]
        image_of = image_of.expand(-1, proposals.shape[1], 1).to(proposals.dtype)
        proposals = torch.cat([image_of, proposals], dim=2)[proposal_valid]
        class_logits, box_deltas = self.box_head(
            self._pool(features, proposals, cfg.box_pooler_resolution)
        )
        probs = F.softmax(class_logits.float(), dim=1)
        boxes = ops.decode_boxes(box_deltas.float(), proposals[:, 1:].float(), cfg.bbox_reg_weights)
        boxes = boxes.view(-1, num_classes, 4)
        image_idx = proposals[:, 0].long()
        hw = image_sizes.to(boxes.dtype)[image_idx]
        upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None, :] - 1
        boxes = torch.minimum(boxes.clamp(min=0), upper)

        # Class 0 is background; keep (roi, class) pairs above the score threshold.
        cand_roi, cand_cls = torch.nonzero(probs[:, 1:] > cfg.score_thresh, as_tuple=True)
        cand_cls = cand_cls + 1
        cand_boxes = boxes[cand_roi, cand_cls]
        cand_scores = probs[cand_roi, cand_cls]
        cand_image = image_idx[cand_roi]
        keep = ops.batched_nms(
            cand_boxes,
            cand_scores,
            cand_image * num_classes + cand_cls,
            cfg.nms_thresh,
            legacy=cfg.nms_legacy,
        )
        keep = keep[rank_within_group(cand_image[keep]) < cfg.detections_per_img]
        keep = keep[torch.argsort(cand_image[keep], stable=True)]
        det_boxes, det_scores = cand_boxes[keep], cand_scores[keep]
        det_labels, det_image = cand_cls[keep], cand_image[keep]

        rois = torch.cat([det_image[:, None].to(det_boxes.dtype), det_boxes], dim=1)
        mask_logits = self.mask_head(
            self._pool(features, rois, cfg.mask_pooler_resolution), det_labels
        )
        masks = mask_logits.float().sigmoid()

        counts = torch.bincount(det_image, minlength=batch).tolist()
        return [
            Detections(*parts)
            for parts in zip(
                det_boxes.split(counts),
                det_scores.split(counts),
                det_labels.split(counts),
                masks.split(counts),
                strict=True,
            )
        ]


def paste_masks(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> Tensor:
    """Paste M x M mask probabilities into a (height, width) image, as the reference does: pad the
    mask by one pixel, enlarge the box to match, resize bilinearly to the integer box, threshold.

    masks: Tensor[D, M, M] float; boxes: Tensor[D, 4] in the target image's pixels.
    Returns Tensor[D, height, width] bool.
    """
    out = torch.zeros(masks.shape[0], height, width, dtype=torch.bool, device=masks.device)
    if masks.shape[0] == 0:
        return out
    m = masks.shape[-1]
    scale = (m + 2.0) / m
    padded = F.pad(masks, (1, 1, 1, 1))
    center = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    # Truncation toward zero, as the reference's int32 cast.
    boxes_int = torch.cat([center - half, center + half], dim=1).long().tolist()
    for i, (x1, y1, x2, y2) in enumerate(boxes_int):
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear")[0, 0]
        sx1, sy1 = max(x1, 0), max(y1, 0)
        sx2, sy2 = min(x2 + 1, width), min(y2 + 1, height)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        out[i, sy1:sy2, sx1:sx2] = resized[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] > threshold
    return out
