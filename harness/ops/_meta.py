"""Fake (meta) implementations of the `harness` ops: output shapes, dtypes and devices without
data, for fake tensors, torch.compile and torch.library.opcheck. One per schema in csrc/ops.cpp;
csrc/ops.cpp names this module (m.set_python_module), as PyTorch requires of C++ ops extended
from Python. `register()` is called once by harness.ops._library.library().
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float, legacy: bool = False
) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms: boxes must be [N, 4]")
    torch._check(scores.shape == boxes.shape[:1], lambda: "nms: scores must be [N]")
    # How many boxes survive depends on their values.
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def _nms_mask(
    boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float, legacy: bool = False
) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms: boxes must be [N, 4]")
    torch._check(scores.shape == boxes.shape[:1], lambda: "nms: scores must be [N]")
    return boxes.new_empty(boxes.shape[:1], dtype=torch.bool)


def _roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    scales: Sequence[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    first = features[0]
    return first.new_empty((rois.shape[0], first.shape[1], pooled_height, pooled_width))


def _roi_align_backward(
    grad_output: Tensor,
    rois: Tensor,
    levels: Tensor | None,
    scales: Sequence[float],
    batch_size: int,
    heights: Sequence[int],
    widths: Sequence[int],
    sampling_ratio: int,
    aligned: bool,
) -> list[Tensor]:
    channels = grad_output.shape[1]
    return [
        grad_output.new_empty((batch_size, channels, h, w))
        for h, w in zip(heights, widths, strict=True)
    ]


def _encode_boxes(reference_boxes: Tensor, proposals: Tensor, weights: Sequence[float]) -> Tensor:
    return reference_boxes.new_empty(reference_boxes.shape)


def _decode_boxes(
    deltas: Tensor, boxes: Tensor, weights: Sequence[float], bbox_xform_clip: float
) -> Tensor:
    return deltas.new_empty(deltas.shape)


def _mask_targets(
    vertices: Tensor,
    poly_offsets: Tensor,
    obj_offsets: Tensor,
    rois: Tensor,
    roi_objects: Tensor,
    mask_size: int,
) -> Tensor:
    return rois.new_empty((rois.shape[0], mask_size, mask_size), dtype=torch.float32)


def _generate_anchors(
    feature_sizes: Sequence[int],
    strides: Sequence[int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    device: torch.device,
) -> Tensor:
    cells = sum(h * w for h, w in zip(feature_sizes[0::2], feature_sizes[1::2], strict=True))
    return torch.empty((cells * len(aspect_ratios), 4), dtype=torch.float32, device=device)


def _mask_rle(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float, arithmetic: str
) -> tuple[Tensor, Tensor]:
    # The strings' total length depends on the pixels.
    chars = torch.library.get_ctx().new_dynamic_size()
    return (
        masks.new_empty((chars,), dtype=torch.uint8),
        masks.new_empty((masks.shape[0] + 1,), dtype=torch.int64),
    )


def _resize_bilinear(plane: Tensor, height: int, width: int, arithmetic: str) -> Tensor:
    return plane.new_empty((height, width))


def register() -> None:
    for name, fake in (
        ("nms", _nms),
        ("nms_mask", _nms_mask),
        ("roi_align", _roi_align),
        ("roi_align_backward", _roi_align_backward),
        ("encode_boxes", _encode_boxes),
        ("decode_boxes", _decode_boxes),
        ("mask_targets", _mask_targets),
        ("generate_anchors", _generate_anchors),
        ("mask_rle", _mask_rle),
        ("resize_bilinear", _resize_bilinear),
    ):
        torch.library.register_fake(f"harness::{name}", fake)
