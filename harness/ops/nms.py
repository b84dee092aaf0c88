"""Greedy non-maximum suppression: plain, and per group (classes, or FPN levels x images).

Boxes are (x1, y1, x2, y2) with width x2 - x1 (no +1), as torchvision. Kept indices come back in
decreasing score order; tied scores are ordered as torchvision orders them (a stable sort by
decreasing score on the CPU, so the lower index first), and the kept set is exactly
torchvision.ops.nms / batched_nms's: the IoU is computed in the boxes' dtype in torchvision's
operation order and compared with the threshold in float64.

legacy=True is the MLPerf reference's NMS (maskrcnn-benchmark csrc/cuda/nms.cu, devIoU): widths
and heights x2 - x1 + 1, the IoU compared in float32 with the threshold rounded to float32
(`iou > threshold`, as its CUDA kernel; its CPU kernel uses >=, but the reference trains on GPUs).

`nms` / `batched_nms` return the kept indices, whose count depends on the data: on CUDA that
count is read by the host (a sync). `nms_mask` / `batched_nms_mask` return a fixed-size bool mask
in input order instead and never wait for the device (sync-free training steps).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from harness.ops._library import debug_checks, library
from harness.ops.boxes import box_iou

__all__ = [
    "batched_nms",
    "batched_nms_mask",
    "batched_nms_reference",
    "nms",
    "nms_mask",
    "nms_reference",
]


def _check_threshold(iou_threshold: float) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        raise TypeError(f"iou_threshold must be a real number, got {type(iou_threshold).__name__}")
    if math.isnan(iou_threshold):
        raise ValueError("iou_threshold must not be NaN")
    return float(iou_threshold)


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> None:
    for name, value in (("boxes", boxes), ("scores", scores)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if boxes.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"boxes must be float32 or float64, got {boxes.dtype}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must have shape [{boxes.shape[0]}] to match boxes, got {tuple(scores.shape)}"
        )
    if scores.dtype != boxes.dtype:
        raise ValueError(f"scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"scores is on {scores.device} but boxes is on {boxes.device}")
    # NaN has no order and no overlap, so no kept set is right; finding it reads the data (a sync
    # on CUDA), so only in debug mode. The kernels take NaN without harm (it overlaps nothing).
    if debug_checks() and bool(boxes.isnan().any() | scores.isnan().any()):
        name = "boxes" if bool(boxes.isnan().any()) else "scores"
        raise ValueError(f"{name} contains NaN")


def _check_idxs(idxs: Tensor, boxes: Tensor) -> Tensor:
    if not isinstance(idxs, Tensor):
        raise TypeError(f"idxs must be a Tensor, got {type(idxs).__name__}")
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must have an integer dtype, got {idxs.dtype}")
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"idxs must have shape [{boxes.shape[0]}] to match boxes, got {tuple(idxs.shape)}"
        )
    if idxs.device != boxes.device:
        raise ValueError(f"idxs is on {idxs.device} but boxes is on {boxes.device}")
    return idxs.long()


def _check_legacy(legacy: bool) -> bool:
    if not isinstance(legacy, bool):
        raise TypeError(f"legacy must be a bool, got {legacy!r}")
    return legacy


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, legacy: bool = False) -> Tensor:
    """Greedy NMS, equal to torchvision.ops.nms (legacy=False).

    Args:
        boxes: Tensor[N, 4] float32/float64, (x1, y1, x2, y2) in pixels.
        scores: Tensor[N], dtype and device of boxes.
        iou_threshold: boxes overlapping a higher-scored kept box with IoU > iou_threshold are
            dropped.
        legacy: the MLPerf reference's +1 width/height convention (module docstring).

    Returns:
        Tensor[K] int64 indices into boxes of the kept boxes, by decreasing score.
    """
    _check_boxes_scores(boxes, scores)
    threshold = _check_threshold(iou_threshold)
    return library().nms(boxes, scores, None, threshold, _check_legacy(legacy))


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, legacy: bool = False
) -> Tensor:
    """NMS within each group of boxes sharing an idxs value, equal to torchvision.ops.batched_nms.

    One call covers all groups (on the CPU they run in parallel); boxes of different groups never
    suppress each other.

    Args:
        boxes: Tensor[N, 4] float32/float64, (x1, y1, x2, y2) in pixels.
        scores: Tensor[N], dtype and device of boxes.
        idxs: Tensor[N] integer group of each box (e.g. image * num_levels + level, or class).
        iou_threshold: as in `nms`.
        legacy: as in `nms`.

    Returns:
        Tensor[K] int64 indices into boxes of the kept boxes, by decreasing score.
    """
    _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    threshold = _check_threshold(iou_threshold)
    return library().nms(boxes, scores, idxs, threshold, _check_legacy(legacy))


def nms_mask(boxes: Tensor, scores: Tensor, iou_threshold: float, legacy: bool = False) -> Tensor:
    """`nms` as a fixed-size mask: Tensor[N] bool, True for each kept box, in input order.

    The kept set is `nms`'s: `nms_mask(...).nonzero()` equals `nms(...)` sorted. No device-to-host
    copy on CUDA, so a training step can use it without a sync.
    """
    _check_boxes_scores(boxes, scores)
    threshold = _check_threshold(iou_threshold)
    return library().nms_mask(boxes, scores, None, threshold, _check_legacy(legacy))


def batched_nms_mask(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, legacy: bool = False
) -> Tensor:
    """`batched_nms` as a fixed-size mask: Tensor[N] bool, True for each kept box, in input order.

    Arguments as `batched_nms`; `batched_nms_mask(...).nonzero()` equals `batched_nms(...)` sorted.
    No device-to-host copy on CUDA.
    """
    _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    threshold = _check_threshold(iou_threshold)
    return library().nms_mask(boxes, scores, idxs, threshold, _check_legacy(legacy))


def _overlaps(boxes: Tensor, threshold: float, legacy: bool) -> Tensor:
    """Tensor[N, N] bool on the CPU: IoU(boxes[i], boxes[j]) > threshold, as the kernels compare."""
    iou = box_iou(boxes, boxes, legacy)
    if legacy:
        # The reference's kernel compares in float with the threshold as a float.
        return (iou > torch.tensor(threshold, dtype=torch.float32).item()).cpu()
    # Compared in float64, as torchvision compares its float IoU with the double threshold.
    return (iou.double() > threshold).cpu()


def nms_reference(
    boxes: Tensor, scores: Tensor, iou_threshold: float, legacy: bool = False
) -> Tensor:
    """Pure-PyTorch `nms` (the test oracle): O(N^2) memory, one Python step per box."""
    _check_boxes_scores(boxes, scores)
    threshold = _check_threshold(iou_threshold)
    order = scores.sort(descending=True, stable=True).indices
    overlaps = _overlaps(boxes[order], threshold, _check_legacy(legacy))
    removed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if not removed[i]:
            kept.append(i)
            removed[i + 1 :] |= overlaps[i, i + 1 :]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def batched_nms_reference(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, legacy: bool = False
) -> Tensor:
    """Pure-PyTorch `batched_nms`: `nms_reference` per group, survivors by decreasing score with
    tied scores by increasing index."""
    _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for group in idxs.unique():
        members = torch.nonzero(idxs == group).squeeze(1)
        survivors = nms_reference(boxes[members], scores[members], iou_threshold, legacy)
        kept[members[survivors]] = True
    order = scores.sort(descending=True, stable=True).indices
    return order[kept[order]]
