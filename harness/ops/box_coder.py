"""The MLPerf reference's BoxCoder (maskrcnn-benchmark): boxes <-> regression deltas.

Boxes are (x1, y1, x2, y2) in pixels with inclusive widths (x2 - x1 + 1); deltas are
(dx, dy, dw, dh) = (wx * dctr_x / w, wy * dctr_y / h, ww * log(w' / w), wh * log(h' / h)).

Gradients: the training step needs none (encode makes targets, decode runs on detached
predictions), but a loss on decoded boxes (e.g. GIoU) would: the ops register analytic backward
formulas (the derivative of the reference's arithmetic, checked against its autograd in the tests).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from harness.ops._library import library, on_load

__all__ = [
    "DEFAULT_BBOX_XFORM_CLIP",
    "decode_boxes",
    "decode_boxes_reference",
    "encode_boxes",
    "encode_boxes_reference",
]

# exp(dw) may scale a box at most 1000 / 16 times: the reference's clamp against overflow.
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    if not isinstance(weights, Sequence) or len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"weights[{i}] must be a positive finite number, got {w!r}")
    return tuple(float(w) for w in weights)


def _check_pair(
    first_name: str, first: Tensor, second_name: str, second: Tensor, width: int
) -> None:
    for name, value in ((first_name, first), (second_name, second)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
        if not value.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got {value.dtype}")
    if first.dim() != 2 or first.shape[1] % 4 != 0 or (width and first.shape[1] != width):
        shape = "[N, 4]" if width else "[N, 4 * k]"
        raise ValueError(f"{first_name} must have shape {shape}, got {tuple(first.shape)}")
    if second.dim() != 2 or second.shape != (first.shape[0], 4):
        raise ValueError(
            f"{second_name} must have shape [{first.shape[0]}, 4], got {tuple(second.shape)}"
        )
    if second.device != first.device:
        raise ValueError(
            f"{second_name} is on {second.device} but {first_name} is on {first.device}"
        )


def encode_boxes(reference_boxes: Tensor, proposals: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas that move each proposal onto its reference box (the regression targets).

    Args:
        reference_boxes: Tensor[N, 4] floating, ground-truth boxes (x1, y1, x2, y2).
        proposals: Tensor[N, 4], dtype and device of reference_boxes: anchors or proposals.
        weights: (wx, wy, ww, wh) > 0, e.g. (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.

    Returns:
        Tensor[N, 4] (dx, dy, dw, dh) in the input dtype.
    """
    _check_pair("reference_boxes", reference_boxes, "proposals", proposals, width=4)
    if proposals.dtype != reference_boxes.dtype:
        raise ValueError(
            f"proposals must have the dtype of reference_boxes ({reference_boxes.dtype}), "
            f"got {proposals.dtype}"
        )
    return library().encode_boxes(reference_boxes, proposals, _check_weights(weights))


def decode_boxes(
    deltas: Tensor,
    boxes: Tensor,
    weights: Sequence[float],
    bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP,
) -> Tensor:
    """Boxes predicted by applying each group of 4 deltas to its box.

    Args:
        deltas: Tensor[N, 4 * k] floating, k groups (dx, dy, dw, dh) per box (k = classes for the
            box head, 1 for the RPN).
        boxes: Tensor[N, 4] (x1, y1, x2, y2) on deltas' device; cast to deltas' dtype, as the
            reference does.
        weights: (wx, wy, ww, wh) > 0, the ones the deltas were encoded with.
        bbox_xform_clip: dw and dh are clamped above at this value before exp.

    Returns:
        Tensor[N, 4 * k] (x1, y1, x2, y2) per group, in deltas' dtype; x2 = ctr + 0.5 * w - 1.
    """
    _check_pair("deltas", deltas, "boxes", boxes, width=0)
    w = _check_weights(weights)
    if isinstance(bbox_xform_clip, bool) or not isinstance(bbox_xform_clip, numbers.Real):
        raise TypeError(
            f"bbox_xform_clip must be a real number, got {type(bbox_xform_clip).__name__}"
        )
    if math.isnan(bbox_xform_clip):
        raise ValueError("bbox_xform_clip must not be NaN")
    return library().decode_boxes(deltas, boxes.to(deltas.dtype), w, float(bbox_xform_clip))


def _widths_centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    return widths, heights, boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights


def _box_grad(g_w: Tensor, g_h: Tensor, g_cx: Tensor, g_cy: Tensor) -> Tensor:
    """Gradient [N, 4] of a box given those of its width, height and centre: w = x2 - x1 + 1,
    cx = x1 + 0.5 * w = 0.5 * (x1 + x2 + 1)."""
    return torch.stack((0.5 * g_cx - g_w, 0.5 * g_cy - g_h, 0.5 * g_cx + g_w, 0.5 * g_cy + g_h), 1)


def _setup_encode(ctx, inputs, output) -> None:
    reference_boxes, proposals, weights = inputs
    ctx.save_for_backward(reference_boxes, proposals)
    ctx.weights = weights


def _encode_grad(ctx, grad: Tensor):
    reference_boxes, proposals = ctx.saved_tensors
    wx, wy, ww, wh = ctx.weights
    ex_w, ex_h, ex_cx, ex_cy = _widths_centres(proposals)
    gt_w, gt_h, gt_cx, gt_cy = _widths_centres(reference_boxes)
    gdx, gdy, gdw, gdh = grad.unbind(1)
    # dx = wx * (gt_cx - ex_cx) / ex_w, dw = ww * log(gt_w / ex_w), and likewise in y.
    g_gt_cx, g_gt_cy = wx * gdx / ex_w, wy * gdy / ex_h
    g_gt_w, g_gt_h = ww * gdw / gt_w, wh * gdh / gt_h
    g_ex_w = -wx * gdx * (gt_cx - ex_cx) / (ex_w * ex_w) - ww * gdw / ex_w
    g_ex_h = -wy * gdy * (gt_cy - ex_cy) / (ex_h * ex_h) - wh * gdh / ex_h
    g_reference = _box_grad(g_gt_w, g_gt_h, g_gt_cx, g_gt_cy)
    g_proposals = _box_grad(g_ex_w, g_ex_h, -g_gt_cx, -g_gt_cy)
    return g_reference, g_proposals, None


def _setup_decode(ctx, inputs, output) -> None:
    deltas, boxes, weights, bbox_xform_clip = inputs
    ctx.save_for_backward(deltas, boxes)
    ctx.config = (weights, bbox_xform_clip)


def _decode_grad(ctx, grad: Tensor):
    deltas, boxes = ctx.saved_tensors
    (wx, wy, ww, wh), clip = ctx.config
    widths, heights, _, _ = _widths_centres(boxes)
    w, h = widths[:, None], heights[:, None]
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw_raw, dh_raw = deltas[:, 2::4] / ww, deltas[:, 3::4] / wh
    exp_w, exp_h = torch.exp(dw_raw.clamp(max=clip)), torch.exp(dh_raw.clamp(max=clip))
    g1, g2, g3, g4 = grad[:, 0::4], grad[:, 1::4], grad[:, 2::4], grad[:, 3::4]
    # x1 = cx' - pw / 2, x2 = cx' + pw / 2 - 1 with cx' = dx * w + cx and pw = exp(dw) * w.
    g_pcx, g_pcy = g1 + g3, g2 + g4
    g_pw, g_ph = 0.5 * (g3 - g1), 0.5 * (g4 - g2)
    g_deltas = torch.empty_like(deltas)
    g_deltas[:, 0::4] = g_pcx * w / wx
    g_deltas[:, 1::4] = g_pcy * h / wy
    # clamp(max=clip) passes the gradient where dw <= clip, as torch.clamp's backward does.
    g_deltas[:, 2::4] = torch.where(dw_raw <= clip, g_pw * exp_w * w / ww, 0)
    g_deltas[:, 3::4] = torch.where(dh_raw <= clip, g_ph * exp_h * h / wh, 0)
    g_w = (g_pcx * dx + g_pw * exp_w).sum(1)
    g_h = (g_pcy * dy + g_ph * exp_h).sum(1)
    g_boxes = _box_grad(g_w, g_h, g_pcx.sum(1), g_pcy.sum(1))
    return g_deltas, g_boxes, None, None


@on_load
def _register_autograd() -> None:
    torch.library.register_autograd(
        "harness::encode_boxes", _encode_grad, setup_context=_setup_encode
    )
    torch.library.register_autograd(
        "harness::decode_boxes", _decode_grad, setup_context=_setup_decode
    )


def encode_boxes_reference(
    reference_boxes: Tensor, proposals: Tensor, weights: Sequence[float]
) -> Tensor:
    """Pure-PyTorch `encode_boxes`, written as the reference writes it (differentiable)."""
    wx, wy, ww, wh = _check_weights(weights)
    ex_widths = proposals[:, 2] - proposals[:, 0] + 1
    ex_heights = proposals[:, 3] - proposals[:, 1] + 1
    ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
    ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights
    gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0] + 1
    gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1] + 1
    gt_ctr_x = reference_boxes[:, 0] + 0.5 * gt_widths
    gt_ctr_y = reference_boxes[:, 1] + 0.5 * gt_heights
    dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
    dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
    dw = ww * torch.log(gt_widths / ex_widths)
    dh = wh * torch.log(gt_heights / ex_heights)
    return torch.stack((dx, dy, dw, dh), dim=1)


def decode_boxes_reference(
    deltas: Tensor,
    boxes: Tensor,
    weights: Sequence[float],
    bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP,
) -> Tensor:
    """Pure-PyTorch `decode_boxes`, written as the reference writes it (differentiable)."""
    wx, wy, ww, wh = _check_weights(weights)
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=bbox_xform_clip)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=bbox_xform_clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    # Stacked rather than written into zeros_like slices so autograd sees one out-of-place op.
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w - 1,
            pred_ctr_y + 0.5 * pred_h - 1,
        ),
        dim=2,
    ).reshape(deltas.shape)
