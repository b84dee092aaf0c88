"""FPN anchors as the MLPerf reference makes them, and its straddle (visibility) test.

The reference (maskrcnn-benchmark, Detectron's "legacy" generate_anchors) builds each level's cell
anchors from the base box [0, 0, stride - 1, stride - 1]: reshaped to every aspect ratio with
widths and heights rounded half to even (np.round), then scaled to the level's size, in float64;
they are cast to float32 and shifted by (x * stride, y * stride) over the feature grid in
(y, x, aspect ratio) order. Boxes are (x1, y1, x2, y2) in input-image pixels with the inclusive
(+1) width convention, so a 32-pixel anchor spans x2 - x1 = 31.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from harness.ops._checks import is_int as _is_int
from harness.ops._checks import is_real as _is_real
from harness.ops._library import library

__all__ = ["anchor_visibility", "generate_anchors", "generate_anchors_reference"]

MAX_LEVELS = 8


def _check_args(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
) -> tuple[list[list[int]], list[int], list[float], list[float]]:
    for name, value in (
        ("feature_sizes", feature_sizes),
        ("strides", strides),
        ("sizes", sizes),
        ("aspect_ratios", aspect_ratios),
    ):
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
    if not 1 <= len(feature_sizes) <= MAX_LEVELS:
        raise ValueError(
            f"feature_sizes must hold 1 to {MAX_LEVELS} levels, got {len(feature_sizes)}"
        )
    for name, value in (("strides", strides), ("sizes", sizes)):
        if len(value) != len(feature_sizes):
            raise ValueError(
                f"{name} must hold one value per level ({len(feature_sizes)}), got {len(value)}"
            )
    levels = []
    for i, hw in enumerate(feature_sizes):
        if (
            not isinstance(hw, Sequence)
            or len(hw) != 2
            or not all(_is_int(v) and v >= 0 for v in hw)
        ):
            raise ValueError(f"feature_sizes[{i}] must be (height, width) ints >= 0, got {hw!r}")
        levels.append([int(hw[0]), int(hw[1])])
    for i, stride in enumerate(strides):
        if not _is_int(stride) or stride <= 0:
            raise ValueError(f"strides[{i}] must be a positive int, got {stride!r}")
    for name, values in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        for i, v in enumerate(values):
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}[{i}] must be a positive finite number, got {v!r}")
    if len(aspect_ratios) == 0:
        raise ValueError("aspect_ratios must not be empty")
    return (
        levels,
        [int(s) for s in strides],
        [float(s) for s in sizes],
        [float(r) for r in aspect_ratios],
    )


def generate_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Anchors of every FPN level, written by one kernel call into one buffer.

    Args:
        feature_sizes: (height, width) of each level's feature map.
        strides: one positive int per level (pixels of the input image per feature cell).
        sizes: one anchor size per level (pixels; the square anchor's side).
        aspect_ratios: height / width ratios, shared by all levels.
        device: where to build them (default CPU).

    Returns:
        One Tensor[H_l * W_l * A, 4] float32 per level (A = len(aspect_ratios)), (x1, y1, x2, y2)
        in input-image pixels, rows in (y, x, aspect ratio) order; views into one contiguous
        buffer, so `torch.cat` of them is that buffer's copy.
    """
    levels, strides_, sizes_, ratios = _check_args(feature_sizes, strides, sizes, aspect_ratios)
    target = torch.device("cpu" if device is None else device)
    flat_sizes = [v for hw in levels for v in hw]
    anchors = library().generate_anchors(flat_sizes, strides_, sizes_, ratios, target)
    return list(anchors.split([h * w * len(ratios) for h, w in levels]))


def _legacy_cell_anchors(stride: int, size: float, aspect_ratios: list[float]) -> np.ndarray:
    """np.ndarray[A, 4] float64: the reference's _generate_anchors for one stride and one size."""

    def whctrs(anchor: np.ndarray) -> tuple[float, float, float, float]:
        w = anchor[2] - anchor[0] + 1
        h = anchor[3] - anchor[1] + 1
        return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)

    def mkanchors(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack(
            (
                x_ctr - 0.5 * (ws - 1),
                y_ctr - 0.5 * (hs - 1),
                x_ctr + 0.5 * (ws - 1),
                y_ctr + 0.5 * (hs - 1),
            )
        )

    ratios = np.array(aspect_ratios, dtype=np.float64)
    scales = np.array([size], dtype=np.float64) / stride
    w, h, x_ctr, y_ctr = whctrs(np.array([1, 1, stride, stride], dtype=np.float64) - 1)
    ws = np.round(np.sqrt(w * h / ratios))
    ratio_anchors = mkanchors(ws, np.round(ws * ratios), x_ctr, y_ctr)
    scaled = []
    for anchor in ratio_anchors:
        w, h, x_ctr, y_ctr = whctrs(anchor)
        scaled.append(mkanchors(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(scaled)


def generate_anchors_reference(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """numpy/PyTorch `generate_anchors` written as the reference writes it (the test oracle)."""
    levels, strides_, sizes_, ratios = _check_args(feature_sizes, strides, sizes, aspect_ratios)
    target = torch.device("cpu" if device is None else device)
    out = []
    for (height, width), stride, size in zip(levels, strides_, sizes_, strict=True):
        cells = torch.from_numpy(_legacy_cell_anchors(stride, size, ratios)).float().to(target)
        shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=target)
        shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=target)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4))
    return out


def anchor_visibility(
    anchors: Tensor, image_size: tuple[int, int], straddle_thresh: float
) -> Tensor:
    """Which anchors the RPN may train on: those inside the image up to `straddle_thresh` pixels.

    Args:
        anchors: Tensor[A, 4] (x1, y1, x2, y2) in pixels of the resized image.
        image_size: (height, width) of the resized image (before batch padding).
        straddle_thresh: allowed overhang in pixels; negative keeps every anchor (the reference's
            switch-off).

    Returns:
        Tensor[A] bool on anchors' device: x1 >= -t, y1 >= -t, x2 < width + t, y2 < height + t.
    """
    if not isinstance(anchors, Tensor):
        raise TypeError(f"anchors must be a Tensor, got {type(anchors).__name__}")
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must have shape [A, 4], got {tuple(anchors.shape)}")
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(_is_real(v) and v >= 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be (height, width) >= 0, got {image_size!r}")
    if not _is_real(straddle_thresh) or math.isnan(straddle_thresh):
        raise ValueError(f"straddle_thresh must be a real number, got {straddle_thresh!r}")
    if straddle_thresh < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    height, width = image_size
    t = straddle_thresh
    return (
        (anchors[:, 0] >= -t)
        & (anchors[:, 1] >= -t)
        & (anchors[:, 2] < width + t)
        & (anchors[:, 3] < height + t)
    )
