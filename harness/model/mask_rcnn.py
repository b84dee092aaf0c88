"""Mask R-CNN: ResNet-FPN backbone, RPN, box and mask heads, built explicitly from the config."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.data.batch import ImageTarget, Polygons
from harness.model.backbone import build_backbone
from harness.model.matching import pad_targets
from harness.model.roi_heads import Detections, ROIHeads
from harness.model.rpn import RPN, sizes_tensor


class MaskRCNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        channels = self.backbone.out_channels
        self.rpn = RPN(cfg.rpn, channels)
        self.roi_heads = ROIHeads(cfg.roi_heads, channels, cfg.num_classes)

    def forward(
        self, images: Tensor, targets: list[ImageTarget]
    ) -> dict[str, Tensor] | list[Detections]:
        """images: Tensor[B, 3, H, W] normalized and padded; targets: one ImageTarget per image
        (only image_size is read at evaluation).

        Training returns the losses {loss_objectness, loss_rpn_box_reg, loss_classifier,
        loss_box_reg, loss_mask}; evaluation returns per-image Detections in resized-image pixels.
        """
        if len(targets) != images.shape[0]:
            raise ValueError(
                f"targets has {len(targets)} entries for a batch of {images.shape[0]} images"
            )
        image_sizes = [tuple(t.image_size) for t in targets]
        features = self.backbone(images)
        if not self.training:
            proposals, valid, _ = self.rpn(features, image_sizes)
            return self.roi_heads.forward_test(
                features, proposals, valid, sizes_tensor(image_sizes, images.device)
            )

        gt_boxes, gt_labels, gt_valid = pad_targets(
            [t.boxes for t in targets], [t.labels for t in targets]
        )
        proposals, valid, losses = self.rpn(features, image_sizes, gt_boxes, gt_valid)
        counts = torch.tensor([t.polygons.num_objects for t in targets])
        object_offsets = (torch.cumsum(counts, 0) - counts).to(images.device, non_blocking=True)
        polygons = Polygons.cat([t.polygons for t in targets])
        losses.update(
            self.roi_heads.forward_train(
                features, proposals, valid, gt_boxes, gt_labels, gt_valid, polygons, object_offsets
            )
        )
        return losses


def build_model(cfg: ModelConfig) -> MaskRCNN:
    model = MaskRCNN(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        # The fixed-shape core: one graph each, no break (tests/model/test_compile.py). In place,
        # so that state_dict keys (checkpoints, weights files) stay those of the plain modules.
        model.backbone.compile(fullgraph=True)
        model.rpn.head.compile(fullgraph=True)
    return model
