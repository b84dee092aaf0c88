"""Box geometry shared by the model, the data and the NMS reference: one IoU for every caller.

Boxes are (x1, y1, x2, y2) in pixels. legacy=False is torchvision's convention (width x2 - x1);
legacy=True the MLPerf reference's inclusive pixels (maskrcnn-benchmark's boxlist_iou and NMS:
width x2 - x1 + 1). The operations run in the order of torchvision's NMS kernel (and of
maskrcnn-benchmark's boxlist_iou), so csrc/common/box_iou.h computes bit-identical IoUs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou"]


def _check_boxes(name: str, boxes: object) -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(boxes).__name__}")
    if boxes.dim() < 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., N, 4], got {tuple(boxes.shape)}")
    return boxes


def box_area(boxes: Tensor, legacy: bool = False) -> Tensor:
    """Areas Tensor[...] of boxes Tensor[..., 4]."""
    offset = 1 if legacy else 0
    return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)


def box_iou(a: Tensor, b: Tensor, legacy: bool = False) -> Tensor:
    """Pairwise IoU, batched over leading dimensions.

    a: Tensor[..., N, 4], b: Tensor[..., M, 4] (same dtype and device; leading dimensions
    broadcast). Returns Tensor[..., N, M]; two empty boxes give NaN (0 / 0), which compares false
    against any threshold.
    """
    a, b = _check_boxes("a", a), _check_boxes("b", b)
    if not isinstance(legacy, bool):
        raise TypeError(f"legacy must be a bool, got {legacy!r}")
    offset = 1 if legacy else 0
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a, legacy)[..., :, None] + box_area(b, legacy)[..., None, :] - inter)
