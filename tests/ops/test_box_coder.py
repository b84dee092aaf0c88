"""encode_boxes / decode_boxes: the MLPerf reference's BoxCoder, kernels vs the pure-PyTorch path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from harness.ops import decode_boxes, decode_boxes_reference, encode_boxes, encode_boxes_reference
from harness.ops.box_coder import DEFAULT_BBOX_XFORM_CLIP
from tests.conftest import devices

BOX_HEAD = (10.0, 10.0, 5.0, 5.0)
CLIP = math.log(1000.0 / 16)
TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-4},
    torch.float64: {"rtol": 1e-12, "atol": 1e-9},
}


def random_boxes(n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 300 + 10
    return torch.cat([xy, xy + wh], 1).to(dtype)


def maybe_strided(t: torch.Tensor, contiguous: bool) -> torch.Tensor:
    """t itself, or the same values as a non-contiguous view (columns of a wider buffer)."""
    if contiguous:
        return t
    wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    return wide[:, ::2]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_encode_decode_match_reference(device, dtype, contiguous):
    proposals = maybe_strided(random_boxes(500, dtype, 1).to(device), contiguous)
    gt = maybe_strided(random_boxes(500, dtype, 2).to(device), contiguous)
    deltas = encode_boxes(gt, proposals, BOX_HEAD)
    assert deltas.dtype == dtype and deltas.shape == (500, 4)
    torch.testing.assert_close(
        deltas, encode_boxes_reference(gt, proposals, BOX_HEAD), **TOLERANCE[dtype]
    )
    head = maybe_strided(torch.randn(500, 81 * 4, dtype=dtype).to(device) * 3, contiguous)
    torch.testing.assert_close(
        decode_boxes(head, proposals, BOX_HEAD),
        decode_boxes_reference(head, proposals, BOX_HEAD),
        **TOLERANCE[dtype],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(dtype):
    proposals = random_boxes(300, dtype, 3)
    gt = random_boxes(300, dtype, 4)
    for weights in ((1.0, 1.0, 1.0, 1.0), BOX_HEAD):
        decoded = decode_boxes(encode_boxes(gt, proposals, weights), proposals, weights)
        torch.testing.assert_close(
            decoded, gt, rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-9
        )


def test_golden():
    proposal = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # w = h = 10 (inclusive), centre (5, 5)
    gt = torch.tensor([[10.0, 0.0, 19.0, 19.0]])  # w = 10, h = 20, centre (15, 10)
    deltas = encode_boxes(gt, proposal, BOX_HEAD)
    # (10 * (15 - 5) / 10, 10 * (10 - 5) / 10, 5 * log(10 / 10), 5 * log(20 / 10))
    torch.testing.assert_close(deltas, torch.tensor([[10.0, 5.0, 0.0, 5 * math.log(2)]]))
    torch.testing.assert_close(decode_boxes(deltas, proposal, BOX_HEAD), gt)


def test_decode_clamps_scale():
    box = torch.tensor([[0.0, 0.0, 15.0, 15.0]])  # w = h = 16, centre (8, 8)
    deltas = torch.tensor([[0.0, 0.0, 100.0, -2.0]])
    # dw clamps at log(1000 / 16): width 1000, so (8 - 500, ., 8 + 500 - 1, .); dh is not clamped.
    h = 16 * math.exp(-2.0)
    expected = torch.tensor([[-492.0, 8 - 0.5 * h, 507.0, 8 + 0.5 * h - 1]])
    torch.testing.assert_close(decode_boxes(deltas, box, (1, 1, 1, 1)), expected)
    torch.testing.assert_close(
        decode_boxes(deltas, box, (1, 1, 1, 1), bbox_xform_clip=0.0)[0, 2], torch.tensor(15.0)
    )


def test_half_precision_close_to_float():
    proposals = random_boxes(200, seed=5)
    deltas = torch.randn(200, 4)
    ours = decode_boxes(deltas.half(), proposals.half(), BOX_HEAD)
    assert ours.dtype == torch.float16
    torch.testing.assert_close(
        ours.float(), decode_boxes(deltas, proposals.half().float(), BOX_HEAD), rtol=2e-3, atol=0.5
    )


def test_empty():
    assert encode_boxes(torch.zeros(0, 4), torch.zeros(0, 4), BOX_HEAD).shape == (0, 4)
    assert decode_boxes(torch.zeros(0, 8), torch.zeros(0, 4), BOX_HEAD).shape == (0, 8)


def test_gradients_match_reference_autograd():
    proposals = random_boxes(6, torch.float64, 6).requires_grad_()
    gt = random_boxes(6, torch.float64, 7).requires_grad_()
    deltas = (torch.randn(6, 8, dtype=torch.float64) * 0.5).requires_grad_()
    # One delta above the clip: no gradient flows through the clamped dw.
    with torch.no_grad():
        deltas[0, 2] = 9.0
    assert torch.autograd.gradcheck(lambda d, b: decode_boxes(d, b, BOX_HEAD), (deltas, proposals))
    assert torch.autograd.gradcheck(lambda g, p: encode_boxes(g, p, BOX_HEAD), (gt, proposals))
    for ours, ref, inputs in (
        (decode_boxes, decode_boxes_reference, (deltas, proposals)),
        (encode_boxes, encode_boxes_reference, (gt, proposals)),
    ):
        grad = torch.randn_like(ours(*inputs, BOX_HEAD))
        expected = torch.autograd.grad(ref(*inputs, BOX_HEAD), inputs, grad)
        got = torch.autograd.grad(ours(*inputs, BOX_HEAD), inputs, grad)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (
            lambda: encode_boxes(torch.zeros(3, 5), torch.zeros(3, 5), BOX_HEAD),
            ValueError,
            "reference_boxes must have shape",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4), torch.zeros(2, 4), BOX_HEAD),
            ValueError,
            "proposals must have shape",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4), torch.zeros(3, 4).double(), BOX_HEAD),
            ValueError,
            "proposals must have the dtype",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), BOX_HEAD),
            ValueError,
            "reference_boxes must be floating",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), (1, 1, 1)),
            ValueError,
            "weights",
        ),
        (
            lambda: encode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), (1, 1, 0, 1)),
            ValueError,
            r"weights\[2\]",
        ),
        (
            lambda: decode_boxes(torch.zeros(3, 6), torch.zeros(3, 4), BOX_HEAD),
            ValueError,
            "deltas must have shape",
        ),
        (
            lambda: decode_boxes(torch.zeros(3, 8), torch.zeros(3, 3), BOX_HEAD),
            ValueError,
            "boxes must have shape",
        ),
        (
            lambda: decode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), BOX_HEAD, float("nan")),
            ValueError,
            "bbox_xform_clip",
        ),
        (
            lambda: decode_boxes([[0, 0, 1, 1]], torch.zeros(1, 4), BOX_HEAD),
            TypeError,
            "deltas must be a Tensor",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _boxes(draw, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[n, 4] valid boxes: x1 <= x2, y1 <= y2, from 0 to 300 pixels wide (+1 widths: >= 1)."""
    rows = []
    for _ in range(n):
        x1, y1 = draw(st.floats(-50, 1000)), draw(st.floats(-50, 1000))
        rows.append([x1, y1, x1 + draw(st.floats(0, 300)), y1 + draw(st.floats(0, 300))])
    return torch.tensor(rows, dtype=dtype).reshape(n, 4)


@st.composite
def _coder_call(draw, min_boxes: int = 0):
    """Valid arguments of both ops: (reference_boxes, proposals, deltas [N, 4k], weights, clip)
    with boxes x1 <= x2 and y1 <= y2, weights > 0 and deltas whose dw, dh reach past the clip."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(min_boxes, 6))
    groups = draw(st.integers(1, 3))
    delta = st.floats(-4, 4) | st.floats(-30, 30)
    deltas = torch.tensor(draw(st.lists(delta, min_size=4 * n * groups, max_size=4 * n * groups)))
    weights = draw(st.tuples(*[st.floats(0.1, 20) | st.integers(1, 10)] * 4))
    clip = draw(st.sampled_from([DEFAULT_BBOX_XFORM_CLIP, 0.0, 2.5, math.inf]))
    gt, proposals = _boxes(draw, n, dtype), _boxes(draw, n, dtype)
    return gt, proposals, deltas.to(dtype).reshape(n, 4 * groups), weights, clip


@settings(max_examples=50, deadline=None)
@given(call=_coder_call())
def test_valid_calls_match_the_reference(call):
    """Every draw is a valid call (asserted), so every draw reaches the comparisons: both kernels
    equal the reference's arithmetic, and decoding the encoded deltas (without clip) gives the
    ground truth back."""
    gt, proposals, deltas, weights, clip = call
    for boxes in (gt, proposals):
        assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes.isfinite().all()
    tol = TOLERANCE[gt.dtype]
    encoded = encode_boxes(gt, proposals, weights)
    torch.testing.assert_close(encoded, encode_boxes_reference(gt, proposals, weights), **tol)
    decoded = decode_boxes(deltas, proposals, weights, clip)
    expected = decode_boxes_reference(deltas, proposals, weights, clip)
    torch.testing.assert_close(decoded, expected, **tol)
    round_trip = decode_boxes(encoded, proposals, weights, math.inf)
    torch.testing.assert_close(
        round_trip, gt, rtol=0, atol=2e-2 if gt.dtype == torch.float32 else 1e-8
    )
    event("valid call")
    scales = torch.cat([deltas[:, 2::4] / weights[2], deltas[:, 3::4] / weights[3]], 1)
    event(f"some dw or dh clipped: {bool((scales > clip).any())}")


# Each corruption of one argument: (op, error, message).
_CODER_CORRUPTIONS = {
    "encode: reference_boxes not [N, 4]": (
        "encode",
        ValueError,
        r"reference_boxes must have shape \[N, 4\]",
    ),
    "encode: proposals of another length": (
        "encode",
        ValueError,
        r"proposals must have shape \[\d+, 4\]",
    ),
    "encode: proposals of another dtype": (
        "encode",
        ValueError,
        "proposals must have the dtype of reference_boxes",
    ),
    "encode: integer reference_boxes": (
        "encode",
        ValueError,
        "reference_boxes must be floating point",
    ),
    "encode: proposals not a Tensor": ("encode", TypeError, "proposals must be a Tensor"),
    "encode: not 4 weights": (
        "encode",
        ValueError,
        r"weights must be 4 numbers \(wx, wy, ww, wh\)",
    ),
    "encode: a weight not positive and finite": (
        "encode",
        ValueError,
        r"weights\[\d\] must be a positive finite number",
    ),
    "decode: deltas not [N, 4k]": ("decode", ValueError, r"deltas must have shape \[N, 4 \* k\]"),
    "decode: boxes of another length": ("decode", ValueError, r"boxes must have shape \[\d+, 4\]"),
    "decode: integer deltas": ("decode", ValueError, "deltas must be floating point"),
    "decode: not 4 weights": (
        "decode",
        ValueError,
        r"weights must be 4 numbers \(wx, wy, ww, wh\)",
    ),
    "decode: a weight not positive and finite": (
        "decode",
        ValueError,
        r"weights\[\d\] must be a positive finite number",
    ),
    "decode: NaN clip": ("decode", ValueError, "bbox_xform_clip must not be NaN"),
    "decode: clip not a number": ("decode", TypeError, "bbox_xform_clip must be a real number"),
}


def _corrupt_coder_call(name: str, call: tuple, draw) -> tuple:
    """The valid `call` with the one argument that corruption `name` spoils made invalid."""
    gt, proposals, deltas, weights, clip = call
    if name.endswith("not 4 weights"):
        weights = draw(st.sampled_from([weights[:3], (*weights, 1.0), (), 1.0]))
    elif name.endswith("a weight not positive and finite"):
        spoilt = list(weights)
        spoilt[draw(st.integers(0, 3))] = draw(
            st.sampled_from([0, -1.0, math.nan, math.inf, True, "1"])
        )
        weights = tuple(spoilt)
    elif name == "encode: reference_boxes not [N, 4]":
        gt = draw(st.sampled_from([gt[:, :3], torch.cat([gt, gt[:, :1]], 1), gt[None]]))
    elif name == "encode: proposals of another length":
        proposals = draw(st.sampled_from([proposals[1:], torch.cat([proposals, proposals[:1]])]))
    elif name == "encode: proposals of another dtype":
        other = torch.float64 if gt.dtype == torch.float32 else torch.float32
        proposals = proposals.to(draw(st.sampled_from([other, torch.float16])))
    elif name == "encode: integer reference_boxes":
        gt = gt.to(draw(st.sampled_from([torch.int64, torch.int32])))
    elif name == "encode: proposals not a Tensor":
        proposals = proposals.tolist()
    elif name == "decode: deltas not [N, 4k]":
        deltas = draw(
            st.sampled_from([deltas[:, 1:], torch.cat([deltas, deltas[:, :2]], 1), deltas[None]])
        )
    elif name == "decode: boxes of another length":
        proposals = draw(st.sampled_from([proposals[1:], torch.cat([proposals, proposals[:1]])]))
    elif name == "decode: integer deltas":
        deltas = deltas.to(draw(st.sampled_from([torch.int64, torch.int32])))
    elif name == "decode: NaN clip":
        clip = math.nan
    else:
        clip = draw(st.sampled_from(["4", None, True]))
    return gt, proposals, deltas, weights, clip


@pytest.mark.parametrize("name", sorted(_CODER_CORRUPTIONS))
@settings(max_examples=5, deadline=None)
@given(call=_coder_call(min_boxes=1), data=st.data())
def test_one_corrupted_argument_raises_its_error(name, call, data):
    """A valid call with exactly one argument spoilt is refused with the error naming it."""
    op, error, message = _CODER_CORRUPTIONS[name]
    gt, proposals, deltas, weights, clip = _corrupt_coder_call(name, call, data.draw)
    with pytest.raises(error, match=message):
        if op == "encode":
            encode_boxes(gt, proposals, weights)
        else:
            decode_boxes(deltas, proposals, weights, clip)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    proposals, gt = random_boxes(1000, seed=8), random_boxes(1000, seed=9)
    deltas = torch.randn(1000, 81 * 4)
    torch.testing.assert_close(
        encode_boxes(gt.cuda(), proposals.cuda(), BOX_HEAD).cpu(),
        encode_boxes(gt, proposals, BOX_HEAD),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        decode_boxes(deltas.cuda(), proposals.cuda(), BOX_HEAD).cpu(),
        decode_boxes(deltas, proposals, BOX_HEAD),
        rtol=1e-5,
        atol=1e-3,
    )
