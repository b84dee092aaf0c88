"""harness.ops.mask_rle: ATen's bilinear resize reproduced bit for bit, and COCO RLE strings equal
to pycocotools' encoding of the fully pasted masks, adversarial values near the threshold included."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from harness.model.roi_heads import paste_masks
from harness.ops import aten_arithmetic, library, mask_rle, resize_bilinear
from harness.ops import resize_bilinear_reference as reference
from harness.postprocess import box_corners
from tests.ops.test_library import opcheck

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALF_ULP = float(np.spacing(np.float32(0.5)))  # the float32 step just above 0.5


def near_half(shape, generator: torch.Generator) -> torch.Tensor:
    """Values at and within a few float32 steps of 0.5 (the threshold), mixed with 0 and 1: the
    pixels a resize that rounds differently from ATen's would flip."""
    steps = torch.randint(-3, 4, shape, generator=generator).float() * HALF_ULP
    values = 0.5 + steps
    pick = torch.randint(0, 4, shape, generator=generator)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, values))


def random_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    small = [tuple(int(v) for v in rng.integers(1, 64, size=2)) for _ in range(count)]
    large = [tuple(int(v) for v in rng.integers(1, 700, size=2)) for _ in range(count)]
    return small + large


def test_this_cpu_has_an_exact_arithmetic():
    # On x86 builds of torch one of the two applies (AVX2: fused, DEFAULT: plain); "aten" would
    # still be exact, but slow: a new torch build whose kernel rounds otherwise.
    assert aten_arithmetic() in ("fused", "plain")


@pytest.mark.parametrize("values", ["uniform", "near_half"])
def test_resize_matches_aten_bit_for_bit(values):
    generator = torch.Generator().manual_seed(1)
    arithmetic = aten_arithmetic()
    for index, (h, w) in enumerate([*random_sizes(60, seed=2), (64, 64), (64, 65), (30, 30)]):
        side = (30, 30) if index % 3 else tuple(int(v) for v in torch.randint(1, 40, (2,)))
        plane = torch.rand(side, generator=generator)
        if values == "near_half":
            plane = near_half(side, generator)
        ours = resize_bilinear(plane, h, w, arithmetic)
        expected = reference(plane, h, w)
        assert torch.equal(ours.view(torch.int32), expected.view(torch.int32)), (side, h, w)


def test_the_other_arithmetic_differs():
    # The check in aten_arithmetic() can tell the two apart: they round differently somewhere.
    plane = torch.rand(30, 30, generator=torch.Generator().manual_seed(3))
    for h, w in [(40, 50), (300, 200)]:
        assert not torch.equal(
            resize_bilinear(plane, h, w, "fused"), resize_bilinear(plane, h, w, "plain")
        )
        assert torch.equal(resize_bilinear(plane, h, w, "aten"), reference(plane, h, w))


def test_default_cpu_capability_selects_plain():
    # ATen's DEFAULT kernels (no FMA), as on a CPU without AVX2: the check must pick "plain", and
    # the strings must still equal the full paste's.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": ROOT}
    code = (
        "from harness.ops import aten_arithmetic\n"
        "from tests.ops.test_mask_rle import test_strings_equal_pycocotools_of_the_full_paste as t\n"
        "t('auto', 'uniform', (480, 640)); t('auto', 'near_half', (37, 23))\n"
        "print(aten_arithmetic())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "plain"


def encode_full_paste(
    planes: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float
) -> list[str]:
    """The path mask_rle replaces: paste at full size (F.interpolate per box), pycocotools.encode."""
    masks = planes[:, 1:-1, 1:-1]  # paste_masks adds the border itself
    pasted = paste_masks(masks, boxes, height, width, threshold).numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(pasted.transpose(1, 2, 0)))
    return [rle["counts"].decode("ascii") for rle in rles]


def random_boxes(num: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Float boxes of every size from sub-pixel to beyond the image, many touching its borders."""
    centre = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) * 1.2 - 0.1
    size = torch.exp(torch.rand(num, 2, generator=generator) * np.log(2.0 * max(height, width)))
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    return torch.where(torch.rand(num, 4, generator=generator) < 0.2, boxes.round(), boxes)


@pytest.mark.parametrize("arithmetic", ["auto", "aten"])
@pytest.mark.parametrize("values", ["uniform", "near_half", "object"])
@pytest.mark.parametrize("size", [(480, 640), (37, 23), (1, 9)])
def test_strings_equal_pycocotools_of_the_full_paste(arithmetic, values, size):
    height, width = size
    generator = torch.Generator().manual_seed(height)
    num = 40
    masks = torch.rand(num, 28, 28, generator=generator)
    if values == "near_half":
        masks = near_half((num, 28, 28), generator)
    elif values == "object":  # a smooth blob: long runs, columns that join across the box
        grid = torch.linspace(-1, 1, 28)
        masks = (
            (1.5 - grid[None, :, None] ** 2 - grid[None, None, :] ** 2).sigmoid().repeat(num, 1, 1)
        )
        masks[::3] = 1.0
    boxes = random_boxes(num, height, width, generator)
    planes = torch.nn.functional.pad(masks, (1, 1, 1, 1))
    corners = box_corners(boxes, 28)
    strings = mask_rle(
        planes, corners, height, width, 0.5, None if arithmetic == "auto" else arithmetic
    )
    assert strings == encode_full_paste(planes, boxes, height, width, 0.5)


def margin_values(threshold: float) -> torch.Tensor:
    """The threshold, the kernel's margins around it (csrc/mask_rle/mask_rle_cpu.cpp, Margins:
    threshold * (1 -+ 2^-20) in float32) and the floats next to each: where a stretch of a column
    is just decided, or just not, without computing its pixels."""
    t = np.float32(threshold)
    centres = [t, t * np.float32(1 - 2**-20), t * np.float32(1 + 2**-20)]
    values = {float(np.nextafter(c, np.float32(d))) for c in centres for d in (-1, 2)}
    return torch.tensor(sorted(values | {float(c) for c in centres} | {0.0, 1.0}))


@pytest.mark.parametrize("threshold", [0.5, 0.3, 1e-40, 0.0, -0.25])
def test_stretches_decided_at_the_margins_equal_the_full_paste(threshold):
    # Planes of values at and around the margins, in 2 x 2 blocks and alone: large boxes (the
    # kernel that decides whole stretches) and small ones. 1e-40 (subnormal), 0 and a negative
    # threshold turn the shortcut off.
    height, width = 300, 400
    generator = torch.Generator().manual_seed(7)
    values = margin_values(threshold)
    blocks = torch.randint(0, len(values), (30, 14, 14), generator=generator)
    pixels = torch.randint(0, len(values), (30, 28, 28), generator=generator)
    masks = torch.cat(
        [values[blocks].repeat_interleave(2, 1).repeat_interleave(2, 2), values[pixels]]
    )
    planes = torch.nn.functional.pad(masks, (1, 1, 1, 1))  # the zero border paste_masks adds
    boxes = random_boxes(len(planes), height, width, generator)
    boxes[::2] = torch.tensor([-20.0, -10.0, 390.0, 280.0])
    expected = encode_full_paste(planes, boxes, height, width, threshold)
    for arithmetic in (None, "aten"):
        strings = mask_rle(planes, box_corners(boxes, 28), height, width, threshold, arithmetic)
        assert strings == expected


def test_threshold_is_compared_in_float32():
    # 0.7 is not a float32; torch compares the float32 pixels with float32(0.7).
    height, width = 20, 20
    value = float(np.float32(0.7))
    masks = torch.full((2, 28, 28), value)
    masks[1] = float(np.nextafter(np.float32(0.7), np.float32(1)))
    boxes = torch.tensor([[2.0, 3.0, 15.0, 16.0]] * 2)
    planes = torch.nn.functional.pad(masks, (1, 1, 1, 1))
    strings = mask_rle(planes, box_corners(boxes, 28), height, width, 0.7)
    assert strings == encode_full_paste(planes, boxes, height, width, 0.7)
    assert mask_utils.area({"size": [20, 20], "counts": strings[0].encode()}) == 0
    assert mask_utils.area({"size": [20, 20], "counts": strings[1].encode()}) > 0


def test_long_and_negative_count_differences_encode_as_pycocotools():
    # A 1 x 1 box at the end of a large image: counts above 2**25 and differences below 0.
    height, width = 4000, 9000
    planes = torch.ones(3, 30, 30)
    corners = torch.tensor([[8999, 3999, 8999, 3999], [0, 0, 0, 0], [10, 5, 4000, 3000]])
    expected = []
    for x1, y1, x2, y2 in corners.tolist():
        full = np.zeros((height, width, 1), dtype=np.uint8, order="F")
        full[y1 : y2 + 1, x1 : x2 + 1] = 1
        expected.append(mask_utils.encode(full)[0]["counts"].decode())
    assert mask_rle(planes, corners, height, width) == expected


def test_empty_input_and_bad_arguments():
    chars, offsets = library().mask_rle(
        torch.zeros(0, 30, 30), torch.zeros(0, 4, dtype=torch.int64), 5, 5, 0.5, "plain"
    )
    assert chars.numel() == 0 and offsets.tolist() == [0]
    planes = torch.rand(2, 30, 30)
    corners = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="arithmetic"):
        mask_rle(planes, corners, 5, 5, arithmetic="fast")
    with pytest.raises(TypeError, match="masks must be float32"):
        mask_rle(planes.double(), corners, 5, 5)
    with pytest.raises(TypeError, match="boxes must be an int64"):
        mask_rle(planes, corners.float(), 5, 5)
    with pytest.raises(ValueError, match=r"boxes must be \[D=2, 4\]"):
        mask_rle(planes, corners[:1], 5, 5)
    with pytest.raises(ValueError, match="height and width"):
        mask_rle(planes, corners, 0, 5)
    with pytest.raises(ValueError, match="plane must be"):
        resize_bilinear(planes, 4, 4, "plain")
    with pytest.raises(RuntimeError, match="mask_rle: arithmetic must be"):
        library().mask_rle(planes, corners, 5, 5, 0.5, "fast")


def test_opcheck():
    planes = torch.rand(3, 30, 30)
    corners = torch.tensor([[0, 0, 9, 9], [-3, 2, 40, 7], [5, 5, 5, 5]])
    opcheck(library().mask_rle.default, (planes, corners, 12, 14, 0.5, "plain"))
    opcheck(library().resize_bilinear.default, (planes[0], 7, 5, "fused"))
