"""Every harness op in PyTorch's dispatcher: torch.library.opcheck (schema, fake tensors, autograd
registration, AOT dispatch), autocast rules, and the debug switch for the value checks."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from harness.data.batch import Polygons
from harness.ops import (
    decode_boxes,
    generate_anchors,
    generate_anchors_reference,
    library,
    multilevel_roi_align,
    roi_align,
    set_debug,
)
from tests.conftest import devices

BOX_HEAD = [10.0, 10.0, 5.0, 5.0]
# opcheck's AOT-dispatch tests trace every op through torch.compile's stack: tens of seconds each on
# 2 cores. The default tier checks schema, fake tensors and autograd registration; the slow tier
# (test_opcheck_aot_dispatch) adds the AOT-dispatch checks for every op.
FAST = ("test_schema", "test_autograd_registration", "test_faketensor")


def opcheck(op, args, full: bool = False) -> None:
    torch.library.opcheck(
        op, args, test_utils=torch.library._OPCHECK_DEFAULT_UTILS if full else FAST
    )


def boxes_like(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 200
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60 + 2
    return torch.cat([xy, xy + wh], 1).to(dtype)


def roi_case(device: str, dtype=torch.float64, requires_grad: bool = True):
    """Two images, a 3-level pyramid (scales 1/4 .. 1/16), 7 ROIs each on a given level."""
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(2, 3, 24 // 2**lvl, 20 // 2**lvl, generator=g, dtype=dtype).to(device)
        for lvl in range(3)
    ]
    features = [f.requires_grad_(requires_grad) for f in features]
    boxes = boxes_like(7, 1, dtype) * 0.4
    batch = torch.tensor([0, 1, 1, 0, 1, 0, 0], dtype=dtype)[:, None]
    rois = torch.cat([batch, boxes], 1).to(device)
    levels = torch.tensor([0, 1, 2, 0, 1, 2, 0], device=device)
    return features, rois, levels, [0.25, 0.125, 0.0625]


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", devices())
def test_opcheck_roi_align(device, full):
    features, rois, levels, scales = roi_case(device)
    op = library().roi_align.default
    opcheck(op, (features, rois, levels, scales, 3, 2, 2, False), full)
    opcheck(op, (features[:1], rois, None, scales[:1], 2, 2, -1, True), full)
    grad = torch.randn(7, 3, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    opcheck(
        library().roi_align_backward.default,
        (grad, rois, levels, scales, 2, [24, 12, 6], [20, 10, 5], 2, False),
        full,
    )


def test_roi_align_double_backward():
    """The backward is linear in grad_output with the forward as its adjoint, which is the formula
    registered for it: gradcheck compares that formula with finite differences."""
    # Small maps: gradcheck takes one vector-Jacobian product per gradient element.
    features = [torch.randn(1, 2, 6, 5, dtype=torch.float64), torch.randn(1, 2, 3, 3).double()]
    rois = torch.tensor(
        [[0, 1.0, 2, 14, 17], [0, 5, 3, 20, 9], [0, 0, 0, 23, 23]], dtype=torch.float64
    )
    levels, scales = torch.tensor([0, 1, 1]), [0.25, 0.125]
    grad = torch.randn(3, 2, 3, 2, dtype=torch.float64, requires_grad=True)

    def backward(g):
        return library().roi_align_backward(g, rois, levels, scales, 1, [6, 3], [5, 3], 2, False)

    assert torch.autograd.gradcheck(backward, (grad,))
    pooled = library().roi_align(features, rois, levels, scales, 3, 2, 2, False)
    adjoint = sum((f * g).sum() for f, g in zip(features, backward(grad), strict=True))
    torch.testing.assert_close((pooled * grad).sum(), adjoint)


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", devices())
def test_opcheck_box_coder(device, full):
    proposals = boxes_like(9, 2, torch.float64).to(device).requires_grad_()
    gt = boxes_like(9, 3, torch.float64).to(device).requires_grad_()
    deltas = (torch.randn(9, 8, dtype=torch.float64) * 0.5).to(device).requires_grad_()
    opcheck(library().encode_boxes.default, (gt, proposals, BOX_HEAD), full)
    opcheck(library().decode_boxes.default, (deltas, proposals, BOX_HEAD, 4.135), full)


def polygon_case(device: str):
    polygons = Polygons.from_lists([[[0, 0, 9, 0, 9, 9]], [[1, 1, 5, 1, 5, 5], [6, 6, 8, 6, 8, 8]]])
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0], [2.0, 0.0, 7.0, 8.0]])
    args = (polygons.vertices, polygons.poly_offsets, polygons.obj_offsets, rois)
    return [t.to(device) for t in args] + [torch.tensor([0, 1, 1], device=device)]


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", devices())
def test_opcheck_mask_targets(device, full):
    vertices, poly_offsets, obj_offsets, rois, objects = polygon_case(device)
    rois.requires_grad_()
    opcheck(
        library().mask_targets.default,
        (vertices, poly_offsets, obj_offsets, rois, objects, 14),
        full,
    )


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", devices())
def test_opcheck_generate_anchors(device, full):
    args = ([3, 4, 2, 2], [4, 8], [32.0, 64.0], [0.5, 1.0, 2.0], torch.device(device))
    opcheck(library().generate_anchors.default, args, full)


def test_fake_tensors_carry_shapes_without_data():
    with FakeTensorMode():
        features = [torch.empty(2, 8, 32, 40), torch.empty(2, 8, 16, 20)]
        rois = torch.empty(50, 5)
        levels = torch.zeros(50, dtype=torch.long)
        pooled = library().roi_align(features, rois, levels, [0.25, 0.125], 7, 7, 2, False)
        assert pooled.shape == (50, 8, 7, 7)
        boxes, scores = torch.empty(300, 4), torch.empty(300)
        mask = library().nms_mask(boxes, scores, torch.zeros(300, dtype=torch.long), 0.7)
        assert mask.shape == (300,) and mask.dtype == torch.bool
        anchors = library().generate_anchors([4, 5], [8], [32.0], [0.5, 1.0, 2.0], "cpu")
        assert anchors.shape == (60, 4)
    meta = library().generate_anchors([4, 5], [8], [32.0], [1.0], torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (20, 4)


def test_anchors_split_into_level_views():
    sizes, strides, ratios = [(5, 6), (3, 3)], [8, 16], [0.5, 1.0, 2.0]
    ours = generate_anchors(sizes, strides, [32, 64], ratios)
    assert [a.shape[0] for a in ours] == [90, 27]
    for a, b in zip(
        ours, generate_anchors_reference(sizes, strides, [32, 64], ratios), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_roi_align_pools_in_float32(dtype):
    features, rois, levels, scales = roi_case("cpu", torch.float32, requires_grad=False)
    half = [f.to(dtype) for f in features]
    with torch.autocast("cpu", dtype=dtype):
        pooled = library().roi_align(half, rois.to(dtype), levels, scales, 3, 2, 2, False)
    assert pooled.dtype == dtype
    expected = library().roi_align(
        [f.float() for f in half], rois.to(dtype).float(), levels, scales, 3, 2, 2, False
    )
    assert torch.equal(pooled, expected.to(dtype))
    # The Python faces take half inputs outside autocast too, computing in float32.
    single = roi_align(half[0], rois.to(dtype), 3, 0.25, 2)
    assert single.dtype == dtype
    multi = multilevel_roi_align(half, rois.to(dtype), 3, scales, 2)
    assert multi.dtype == dtype


def test_autocast_box_coder_and_mask_targets_compute_in_float32():
    proposals = boxes_like(5, 4) * 5
    deltas = torch.randn(5, 8) * 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = library().decode_boxes(deltas.bfloat16(), proposals.bfloat16(), BOX_HEAD, 4.1)
        encoded = library().encode_boxes(proposals.bfloat16(), proposals.bfloat16(), BOX_HEAD)
        vertices, poly_offsets, obj_offsets, rois, objects = polygon_case("cpu")
        masks = library().mask_targets(
            vertices.bfloat16(), poly_offsets, obj_offsets, rois.bfloat16(), objects, 14
        )
    assert decoded.dtype == encoded.dtype == masks.dtype == torch.float32
    expected = decode_boxes(deltas.bfloat16().float(), proposals.bfloat16().float(), BOX_HEAD, 4.1)
    assert torch.equal(decoded, expected)


def test_debug_checks_off_skip_value_checks_but_stay_in_bounds():
    features, rois, _, _ = roi_case("cpu", torch.float32, requires_grad=False)
    bad = rois.clone()
    bad[0, 0] = 7  # batch index outside [0, 2)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="rois must be finite"):
        roi_align(features[0], bad, 3, 0.25, 2)
    set_debug(False)
    pooled = roi_align(features[0], bad, 3, 0.25, 2)
    assert torch.equal(pooled[0], torch.zeros_like(pooled[0]))
    assert torch.equal(pooled[2:], roi_align(features[0], rois[2:], 3, 0.25, 2))


@pytest.mark.cuda
def test_roi_align_backward_alerts_deterministic_mode():
    features, rois, levels, scales = roi_case("cuda", torch.float32)
    pooled = library().roi_align(features, rois, levels, scales, 3, 2, 2, False)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="roi_align_backward_cuda"):
            pooled.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_cpu_roi_align_backward_is_deterministic():
    features, rois, levels, scales = roi_case("cpu", torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        library().roi_align(features, rois, levels, scales, 3, 2, 2, False).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert features[0].grad is not None
