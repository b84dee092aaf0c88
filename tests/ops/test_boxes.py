"""box_iou and box_area against a pure-Python oracle: plain widths (x2 - x1) and the reference's
inclusive +1 widths (legacy=True), on hand-worked edge cases and on random boxes."""

from __future__ import annotations

import math

import pytest
import torch

from harness.ops import box_area, box_iou


def iou_oracle(a: list[float], b: list[float], legacy: bool) -> float:
    """IoU of two (x1, y1, x2, y2) boxes in Python floats; 0 / 0 (two empty boxes) is NaN."""
    one = 1.0 if legacy else 0.0
    overlap_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + one)
    overlap_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + one)
    inter = overlap_w * overlap_h
    area_a = (a[2] - a[0] + one) * (a[3] - a[1] + one)
    area_b = (b[2] - b[0] + one) * (b[3] - b[1] + one)
    union = area_a + area_b - inter
    return inter / union if union != 0 else math.nan


def _same(got: float, want: float, rel: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == pytest.approx(want, rel=rel, abs=rel)


# (a, b, IoU with plain widths, IoU with +1 widths), worked by hand.
EDGE_CASES = {
    "identical": ([2, 3, 12, 9], [2, 3, 12, 9], 1.0, 1.0),
    # Sharing the edge x = 10: no overlap, but with +1 widths the column x = 10 is shared.
    "touching": ([0, 0, 10, 10], [10, 0, 20, 10], 0.0, 11 / 231),
    "disjoint": ([0, 0, 4, 4], [6, 6, 9, 9], 0.0, 0.0),
    "contained": ([0, 0, 10, 10], [0, 0, 20, 20], 100 / 400, 121 / 441),
    "crossing": ([0, 0, 10, 4], [3, -2, 5, 8], 8 / 52, 15 / 73),
    # The reference's widths: 10 x 10 boxes overlapping 9 x 9; plain: 9 x 9 overlapping 8 x 8.
    "legacy widths": ([0, 0, 9, 9], [1, 1, 10, 10], 64 / 98, 81 / 119),
    # A point: no area without +1 (0 / 0 with itself), one pixel with it.
    "zero-area with itself": ([5, 5, 5, 5], [5, 5, 5, 5], math.nan, 1.0),
    "zero-area inside a box": ([5, 5, 5, 5], [0, 0, 10, 10], 0.0, 1 / 121),
    "zero-width line in a box": ([2, 1, 2, 7], [0, 0, 10, 10], 0.0, 7 / 121),
    "two disjoint points": ([1, 1, 1, 1], [3, 3, 3, 3], math.nan, 0.0),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_cases_match_hand_worked_values(name, dtype):
    a, b, plain, legacy = EDGE_CASES[name]
    for flag, want in ((False, plain), (True, legacy)):
        assert _same(iou_oracle(a, b, flag), want, 1e-15), (name, flag)
        got = box_iou(torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype), flag)
        assert got.shape == (1, 1) and got.dtype == dtype
        assert _same(float(got), want, 1e-6), (name, flag, float(got), want)
        # IoU is symmetric.
        swapped = box_iou(torch.tensor([b], dtype=dtype), torch.tensor([a], dtype=dtype), flag)
        assert _same(float(swapped), want, 1e-6)


def _random_boxes(gen: torch.Generator, n: int, integer: bool) -> torch.Tensor:
    """[n, 4] boxes with x1 <= x2, y1 <= y2 in a 60-pixel square (so many overlap), a tenth of
    them zero-width or zero-height; integer corners make the +1 widths' exact overlaps common."""
    corner = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 50
    size = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 25
    size[torch.rand(n, 2, generator=gen) < 0.1] = 0
    boxes = torch.cat([corner, corner + size], 1)
    return boxes.round() if integer else boxes


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_pairs_match_the_oracle(legacy, dtype):
    gen = torch.Generator().manual_seed(int(legacy) + 2 * (dtype == torch.float64))
    for integer in (False, True):
        a = _random_boxes(gen, 40, integer).to(dtype)
        b = _random_boxes(gen, 30, integer).to(dtype)
        got = box_iou(a, b, legacy)
        assert got.shape == (40, 30)
        rel = 1e-6 if dtype == torch.float32 else 1e-12
        rows, cols = a.tolist(), b.tolist()
        for i, box_a in enumerate(rows):
            for j, box_b in enumerate(cols):
                want = iou_oracle(box_a, box_b, legacy)
                assert _same(float(got[i, j]), want, rel), (box_a, box_b, float(got[i, j]), want)
        overlapping = (got > 0).sum().item()
        assert 100 < overlapping < 40 * 30, "the boxes must overlap often, but not always"


def test_leading_dimensions_broadcast():
    gen = torch.Generator().manual_seed(5)
    a = _random_boxes(gen, 6, True).reshape(2, 3, 4)
    b = _random_boxes(gen, 4, True)
    got = box_iou(a, b, legacy=True)
    assert got.shape == (2, 3, 4)
    for image in range(2):
        for i, box_a in enumerate(a[image].tolist()):
            for j, box_b in enumerate(b.tolist()):
                assert _same(float(got[image, i, j]), iou_oracle(box_a, box_b, True), 1e-12)


def test_area_golden():
    boxes = torch.tensor([[0, 0, 9, 4], [3, 3, 3, 3], [1.5, 2, 4, 2.5]], dtype=torch.float64)
    assert box_area(boxes).tolist() == [36, 0, 1.25]
    assert box_area(boxes, legacy=True).tolist() == [50, 1, 3.5 * 1.5]


def test_bad_arguments():
    with pytest.raises(TypeError, match="a must be a Tensor"):
        box_iou([[0, 0, 1, 1]], torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"b must have shape \[\.\.\., N, 4\]"):
        box_iou(torch.zeros(1, 4), torch.zeros(1, 5))
    with pytest.raises(TypeError, match="legacy must be a bool"):
        box_iou(torch.zeros(1, 4), torch.zeros(1, 4), legacy=1)
