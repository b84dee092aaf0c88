"""COCO RLEs of mask probabilities pasted into an image, without the image (evaluation, CPU).

The reference pastes each M x M mask into a full-size image (pad by one pixel, resize bilinearly to
the integer box with F.interpolate, threshold; `harness.model.roi_heads.paste_masks`) and encodes
the image with pycocotools. `mask_rle` (harness._C) writes the same COCO strings from each box's
pixels alone, column by column, with no image and no box-sized buffer.

Exactness: a pixel whose value lies within rounding of the threshold flips if the resize rounds
differently, so the kernel reproduces the arithmetic of ATen's CPU upsample_bilinear2d bit for bit.
That arithmetic depends on the ATen build the CPU selects: its AVX2 kernels fuse multiply-adds
("fused"), its DEFAULT ones do not ("plain"). `aten_arithmetic()` finds out which this process runs
by comparing `resize_bilinear` with F.interpolate once; if neither matches (another ATen build), it
answers "aten", for which the kernel calls ATen's own resize per box: exact everywhere, slower.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.ops._library import library

ARITHMETICS = ("aten", "fused", "plain")

# Output sizes for the arithmetic check: both of ATen's kernels (height + width <= 128 and above,
# 64 + 64 and 64 + 65 at the switch), its copy (equal sizes), shrinking, 1-pixel and thin outputs.
_CHECK_SIZES = ((1, 1), (3, 5), (30, 30), (29, 31), (64, 64), (64, 65), (100, 9), (45, 83))
_CHECK_SIZES += ((1, 400), (400, 2), (257, 311), (640, 37))


def _check_plane(name: str, value: object, dims: int, shape: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != torch.float32 or value.device.type != "cpu":
        raise TypeError(f"{name} must be float32 on the CPU, got {value.dtype} on {value.device}")
    if value.dim() != dims:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(value.shape)}")


def _check_arithmetic(arithmetic: str) -> None:
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")


def mask_rle(
    masks: Tensor,
    boxes: Tensor,
    height: int,
    width: int,
    threshold: float = 0.5,
    arithmetic: str | None = None,
) -> list[str]:
    """COCO compressed RLE strings (`counts`) of D planes pasted into a (height, width) image.

    masks: Tensor[D, Hs, Ws] float32 on the CPU: what is resized (for Mask R-CNN the M x M
        probabilities with their one-pixel zero border, as paste_masks pads them).
    boxes: Tensor[D, 4] int64 (x1, y1, x2, y2), both ends inclusive, pixels of the image: the
        integer box each plane is resized to (`postprocess.box_corners`); what lies beyond the
        image is dropped.
    threshold: a pixel is in the mask when its resized value > threshold (compared in float32).
    arithmetic: how the resize rounds; default `aten_arithmetic()`, i.e. as this process's ATen.
    Returns D strings, column-major runs as pycocotools.mask.encode writes them.
    """
    _check_plane("masks", masks, 3, "[D, Hs, Ws]")
    if not isinstance(boxes, Tensor) or boxes.dtype != torch.int64:
        raise TypeError(
            f"boxes must be an int64 torch.Tensor, got {getattr(boxes, 'dtype', boxes)}"
        )
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be [D={masks.shape[0]}, 4], got {tuple(boxes.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    arithmetic = arithmetic or aten_arithmetic()
    _check_arithmetic(arithmetic)
    chars, offsets = library().mask_rle(
        masks, boxes, int(height), int(width), float(threshold), arithmetic
    )
    text = chars.numpy().tobytes().decode("ascii")
    ends = offsets.tolist()
    return [text[start:end] for start, end in itertools.pairwise(ends)]


def resize_bilinear(plane: Tensor, height: int, width: int, arithmetic: str) -> Tensor:
    """The resize `mask_rle` thresholds: plane Tensor[Hs, Ws] float32 (CPU) → Tensor[height, width],
    bilinear with align_corners=False, rounded as `arithmetic` says."""
    _check_plane("plane", plane, 2, "[Hs, Ws]")
    _check_arithmetic(arithmetic)
    return library().resize_bilinear(plane, int(height), int(width), arithmetic)


def resize_bilinear_reference(plane: Tensor, height: int, width: int) -> Tensor:
    """ATen's own resize, as paste_masks calls it: the oracle `resize_bilinear` must equal."""
    return F.interpolate(plane[None, None], size=(height, width), mode="bilinear")[0, 0]


@functools.cache
def aten_arithmetic() -> str:
    """Which arithmetic reproduces this process's F.interpolate (bilinear, float32, CPU) bit for
    bit: "fused" or "plain", tried on random planes at `_CHECK_SIZES`; "aten" (with a warning) if
    neither does. Checked once per process (a few milliseconds)."""
    generator = torch.Generator().manual_seed(0)
    planes = [torch.rand(30, 30, generator=generator), torch.rand(9, 14, generator=generator)]
    for arithmetic in ("fused", "plain"):
        if all(
            torch.equal(
                resize_bilinear(plane, h, w, arithmetic), resize_bilinear_reference(plane, h, w)
            )
            for plane in planes
            for h, w in _CHECK_SIZES
        ):
            return arithmetic
    warnings.warn(
        "harness.ops.mask_rle: ATen's bilinear resize on this CPU matches neither the 'fused' nor "
        "the 'plain' arithmetic; pasting calls ATen per box ('aten': exact, slower)",
        stacklevel=2,
    )
    return "aten"
