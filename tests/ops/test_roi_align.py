"""ROIAlign: parity with torchvision and the pure-PyTorch reference, golden values, invariances,
gradients, FPN level assignment, and argument checking."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import event, given, settings
from hypothesis import strategies as st

from harness.ops import (
    fpn_levels,
    multilevel_roi_align,
    multilevel_roi_align_reference,
    roi_align,
    roi_align_reference,
)
from tests.conftest import devices

MLPERF_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def random_rois(
    num: int, batch: int, width: float, height: float, max_size: float, dtype=torch.float32
) -> torch.Tensor:
    """[num, 5] boxes, some reaching past the image border, over `batch` images."""
    corner = torch.rand(num, 2, dtype=torch.float64) * torch.tensor([width, height]) * 1.2 - 4
    size = torch.rand(num, 2, dtype=torch.float64) * max_size
    index = torch.randint(0, batch, (num, 1)).double()
    return torch.cat([index, corner, corner + size], dim=1).to(dtype)


def pyramid(batch: int, channels: int, base: int, levels: int, dtype=torch.float32, device="cpu"):
    """Feature maps for an image of 4*base x 6*base pixels at scales 1/4, 1/8, ..."""
    return [
        torch.randn(batch, channels, base >> i, (3 * base // 2) >> i, dtype=dtype, device=device)
        for i in range(levels)
    ]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 kernels sum in another order than the peers: allow a few ulps of the values."""
    tol = 1e-12 if actual.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 13, 17), (1, 4, 32, 24)])
def test_matches_torchvision_forward_and_backward(device, dtype, aligned, sampling_ratio, shape):
    scale = 0.5
    features = torch.randn(*shape, dtype=dtype, device=device)
    rois = random_rois(30, shape[0], shape[3] / scale, shape[2] / scale, 40, dtype).to(device)
    ours_input = features.clone().requires_grad_()
    peer_input = features.clone().requires_grad_()
    ours = roi_align(ours_input, rois, (5, 4), scale, sampling_ratio, aligned)
    peer = torchvision.ops.roi_align(peer_input, rois, (5, 4), scale, sampling_ratio, aligned)
    assert_close(ours, peer)
    grad = torch.randn_like(peer)
    ours.backward(grad)
    peer.backward(grad)
    assert_close(ours_input.grad, peer_input.grad)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 3])
def test_reference_matches_torchvision(aligned, sampling_ratio):
    features = torch.randn(2, 3, 11, 14, dtype=torch.float64, requires_grad=True)
    rois = random_rois(25, 2, 14, 11, 12, torch.float64)
    ours = roi_align_reference(features, rois, (3, 4), 1.0, sampling_ratio, aligned)
    peer = torchvision.ops.roi_align(features, rois, (3, 4), 1.0, sampling_ratio, aligned)
    assert_close(ours, peer)
    grad = torch.randn_like(peer)
    (ours_grad,) = torch.autograd.grad(ours, features, grad)
    (peer_grad,) = torch.autograd.grad(peer, features, grad)
    assert_close(ours_grad, peer_grad)


def ramp(height: int, width: int) -> torch.Tensor:
    """[1, 1, H, W] with value 4y + x: bilinear interpolation of it is exact."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (4 * y + x).double()[None, None]


def test_golden_values():
    features = ramp(4, 4)
    rois = torch.tensor([[0.0, 0, 0, 2, 2]], dtype=torch.float64)
    # One 2x2-pixel bin, samples at 0.5 and 1.5 on each axis: the ramp at (1, 1).
    assert roi_align(features, rois, 1, 1.0, 2).item() == 5.0
    # Four 1x1 bins, samples at 0.25/0.75 (+1): the ramp at the bin centres.
    expected = torch.tensor([[2.5, 3.5], [6.5, 7.5]], dtype=torch.float64)
    torch.testing.assert_close(roi_align(features, rois, 2, 1.0, 2)[0, 0], expected)
    # aligned=True shifts by half a pixel: y samples -0.25 (clamped to 0) and 0.25, x likewise.
    aligned = roi_align(features, rois, 2, 1.0, 2, aligned=True)[0, 0, 0, 0].item()
    assert aligned == pytest.approx(4 * 0.125 + 0.125)
    # x samples 3.625 (clamped onto column 3) and 4.875 (over a pixel outside: counts as 0, but
    # still in the mean): ((4 * 0.5 + 3) + (4 * 1.5 + 3)) / 4.
    edge = torch.tensor([[0.0, 3, 0, 5.5, 2]], dtype=torch.float64)
    assert roi_align(features, edge, 1, 1.0, 2).item() == pytest.approx(3.5)


def test_golden_gradient():
    features = ramp(4, 4).requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 2, 2]], dtype=torch.float64)
    roi_align(features, rois, 1, 1.0, 2).sum().backward()
    # Samples at (0.5 | 1.5)^2 each spread 1/4 over four pixels with weights 1/4.
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[:3, :3] = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    torch.testing.assert_close(features.grad[0, 0], expected)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned):
    features = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    # Boxes kept off pixel-aligned sample positions, where bilinear weights have kinks.
    rois = torch.tensor([[0, 0.3, 0.7, 4.1, 3.9], [1, 2.2, 1.1, 6.3, 5.6]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, rois, (2, 3), 1.0, -1, aligned), (features,)
    )


def test_gradcheck_multilevel():
    features = [t.requires_grad_() for t in pyramid(2, 1, 8, 3, dtype=torch.float64)]
    rois = torch.tensor(
        [[0, 1.3, 2.1, 6.7, 6.2], [1, 3.1, 4.4, 14.9, 16.6], [0, 0.6, 1.8, 40.3, 30.7]],
        dtype=torch.float64,
    )
    scales = [1 / 4, 1 / 8, 1 / 16]
    assert fpn_levels(rois, scales, 16, 4).tolist() == [0, 1, 2]
    assert torch.autograd.gradcheck(
        lambda *f: multilevel_roi_align(list(f), rois, 2, scales, 2, 16, 4), tuple(features)
    )


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_invariant_to_upsampling_image_and_boxes(aligned, sampling_ratio):
    """A linear ramp upsampled x2 (exact under bilinear) with boxes x2 pools to the same values."""
    height, width, scale = 12, 16, 0.5
    slope = torch.randn(3, 3, dtype=torch.float64)

    def feature_map(factor: int) -> torch.Tensor:
        # Feature pixel j of the finer map sits at coarse coordinate (j + s) / factor - s, with s
        # the half-pixel shift of the aligned convention.
        shift = 0.5 if aligned else 0.0
        y, x = torch.meshgrid(
            (torch.arange(height * factor, dtype=torch.float64) + shift) / factor - shift,
            (torch.arange(width * factor, dtype=torch.float64) + shift) / factor - shift,
            indexing="ij",
        )
        return (
            slope[:, 0, None, None] * x + slope[:, 1, None, None] * y + slope[:, 2, None, None]
        )[None]

    # Boxes at least a feature pixel large and away from the borders, where clamping is not linear.
    corner = 2 + torch.rand(20, 2, dtype=torch.float64) * 10
    size = 2 + torch.rand(20, 2, dtype=torch.float64) * 8
    rois = torch.cat([torch.zeros(20, 1, dtype=torch.float64), corner, corner + size], dim=1)
    coarse = roi_align(feature_map(1), rois, 4, scale, sampling_ratio, aligned)
    doubled = rois * torch.tensor([1.0, 2, 2, 2, 2], dtype=torch.float64)
    fine = roi_align(feature_map(2), doubled, 4, scale, sampling_ratio, aligned)
    torch.testing.assert_close(fine, coarse)


@pytest.mark.parametrize("device", devices())
def test_empty_rois(device):
    features = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    pooled = roi_align(features, torch.zeros(0, 5, device=device), (2, 3), 1.0, 2)
    assert pooled.shape == (0, 3, 2, 3)
    pooled.sum().backward()
    assert torch.count_nonzero(features.grad) == 0
    levels = [f.requires_grad_() for f in pyramid(2, 3, 8, 2, device=device)]
    multi = multilevel_roi_align(levels, torch.zeros(0, 5, device=device), 7, [0.25, 0.125], 2)
    assert multi.shape == (0, 3, 7, 7)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("aligned", [False, True])
def test_degenerate_and_outside_boxes(device, aligned):
    features = torch.randn(1, 2, 8, 8, device=device, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, 3, 3, 3, 3],  # a point
            [0, 5, 2, 1, 6],  # x2 < x1
            [0, 2, 6, 6, 6],  # zero height
            [0, 20, 20, 30, 30],  # entirely outside
            [0, -30, -30, -10, -10],  # entirely outside, negative
            [0, -3, -2, 4, 11],  # straddling two borders
        ],
        dtype=torch.float64,
        device=device,
    )
    for sampling_ratio in (-1, 2):
        ours = roi_align(features, rois, 3, 1.0, sampling_ratio, aligned)
        # torchvision itself fails on x2 < x1 with aligned=True and an adaptive grid (it sizes a
        # buffer from the negative grid); the reference matches it everywhere else.
        assert_close(ours, roi_align_reference(features, rois, 3, 1.0, sampling_ratio, aligned))
        if not aligned or sampling_ratio > 0:
            peer = torchvision.ops.roi_align(features, rois, 3, 1.0, sampling_ratio, aligned)
            assert_close(ours, peer)
        assert torch.all(ours[3:5] == 0)
        assert torch.isfinite(ours).all()


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_input_and_rois(device):
    features = torch.randn(2, 4, 9, 10, device=device)
    rois = random_rois(12, 2, 20, 18, 15).to(device)
    expected = roi_align(features, rois, 3, 0.5, 2)
    channels_last = features.to(memory_format=torch.channels_last)
    strided = torch.randn(2, 8, 9, 10, device=device)
    strided[:, ::2] = features
    wide_rois = torch.zeros(12, 7, device=device)
    wide_rois[:, 1:6] = rois
    for feature in (channels_last, strided[:, ::2]):
        for boxes in (rois, wide_rois[:, 1:6]):
            assert not (feature.is_contiguous() and boxes.is_contiguous())
            torch.testing.assert_close(roi_align(feature, boxes, 3, 0.5, 2), expected)


def test_autocast_bfloat16_on_cpu():
    features = torch.randn(2, 3, 12, 12).to(torch.bfloat16).requires_grad_()
    rois = random_rois(10, 2, 24, 24, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = roi_align(features, rois, 2, 0.5, 2)
        fp32 = roi_align(features.float(), rois, 2, 0.5, 2)
    assert pooled.dtype == torch.bfloat16
    assert fp32.dtype == torch.float32
    expected = roi_align(features.detach().float(), rois, 2, 0.5, 2)
    torch.testing.assert_close(pooled.float(), expected, rtol=1e-2, atol=1e-2)
    pooled.float().sum().backward()
    assert features.grad.dtype == torch.bfloat16
    assert features.grad.abs().sum() > 0


def mlperf_like_rois(num: int, batch: int, image: tuple[int, int], dtype=torch.float32):
    """Boxes from 7 to ~700 pixels, so every FPN level gets some."""
    side = torch.exp(torch.empty(num, 1, dtype=torch.float64).uniform_(2, 6.6))
    aspect = torch.exp(torch.empty(num, 1, dtype=torch.float64).uniform_(-0.3, 0.3))
    size = torch.cat([side * aspect, side / aspect], dim=1)
    centre = torch.rand(num, 2, dtype=torch.float64) * torch.tensor(
        image[::-1], dtype=torch.float64
    )
    index = torch.randint(0, batch, (num, 1)).double()
    return torch.cat([index, centre - size / 2, centre + size / 2], dim=1).to(dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multilevel_matches_reference_and_torchvision(device, dtype):
    features = [f.requires_grad_() for f in pyramid(2, 3, 32, 4, dtype, device)]
    rois = mlperf_like_rois(60, 2, (128, 192), dtype).to(device)
    levels = fpn_levels(rois, MLPERF_SCALES)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    ours = multilevel_roi_align(features, rois, (7, 6), MLPERF_SCALES, 2)
    reference = multilevel_roi_align_reference(features, rois, (7, 6), MLPERF_SCALES, 2)
    assert_close(ours, reference)
    # The peer the model would otherwise use: torchvision per level, scattered back in order.
    for level, (feature, scale) in enumerate(zip(features, MLPERF_SCALES, strict=True)):
        index = levels == level
        peer = torchvision.ops.roi_align(feature, rois[index], (7, 6), scale, 2, False)
        assert_close(ours[index], peer)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, features, grad)
    reference_grads = torch.autograd.grad(reference, features, grad)
    for ours_grad, reference_grad in zip(ours_grads, reference_grads, strict=True):
        assert_close(ours_grad, reference_grad)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    features = pyramid(2, 4, 32, 4)
    rois = mlperf_like_rois(200, 2, (128, 192))
    grad = torch.randn(200, 4, 7, 7)

    def run(device: str):
        inputs = [f.to(device).requires_grad_() for f in features]
        pooled = multilevel_roi_align(inputs, rois.to(device), 7, MLPERF_SCALES, 2)
        pooled.backward(grad.to(device))
        single = roi_align(inputs[0].detach(), rois.to(device), 7, 0.25, -1, True)
        return [pooled.cpu(), single.cpu()] + [f.grad.cpu() for f in inputs]

    for cuda, cpu in zip(run("cuda"), run("cpu"), strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-5)


def test_fpn_levels_follow_the_reference_formula():
    def box(side: float) -> list[float]:
        return [0.0, 10.0, 10.0, 10.0 + side, 10.0 + side]

    # Sizes use maskrcnn-benchmark's +1 convention: side 223 -> sqrt(area) = 224 -> level 4.
    rois = torch.tensor([box(s) for s in (1, 110, 111, 222, 223, 447, 2000)])
    assert fpn_levels(rois, MLPERF_SCALES).tolist() == [0, 0, 1, 1, 2, 3, 3]
    # A box whose corners are swapped has a negative area: smallest level rather than NaN.
    swapped = torch.tensor([[0.0, 50, 10, 10, 50]])
    assert fpn_levels(swapped, MLPERF_SCALES).tolist() == [0]
    assert fpn_levels(rois, MLPERF_SCALES, canonical_scale=112).tolist() == [0, 1, 2, 2, 3, 3, 3]
    assert fpn_levels(rois[:0], MLPERF_SCALES).shape == (0,)


def bad_call(**overrides):
    args = {
        "input": torch.randn(2, 3, 8, 8),
        "rois": torch.tensor([[0.0, 1, 1, 5, 5], [1.0, 0, 0, 3, 3]]),
        "output_size": 2,
        "spatial_scale": 1.0,
        "sampling_ratio": 2,
        "aligned": False,
    }
    args.update(overrides)
    return roi_align(**args)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"input": torch.randn(3, 8, 8)}, ValueError, "input must be"),
        ({"input": torch.zeros(2, 3, 8, 8, dtype=torch.int32)}, TypeError, "input must be"),
        ({"input": torch.randn(2, 3, 0, 8)}, ValueError, "input has an empty"),
        ({"input": torch.randn(2, 3, 8, 8, device="meta")}, ValueError, "input must be on"),
        ({"input": "features"}, TypeError, "input must be a torch.Tensor"),
        ({"rois": torch.zeros(2, 4)}, ValueError, r"rois must be \[K, 5\]"),
        ({"rois": torch.zeros(2, 5, 1)}, ValueError, r"rois must be \[K, 5\]"),
        ({"rois": torch.zeros(2, 5, dtype=torch.int64)}, TypeError, "rois must be a floating"),
        ({"rois": torch.zeros(2, 5, device="meta")}, ValueError, "rois are on meta"),
        ({"rois": torch.tensor([[0.0, 1, math.nan, 5, 5]])}, ValueError, "rois must be finite"),
        ({"rois": torch.tensor([[0.0, 1, 1, math.inf, 5]])}, ValueError, "rois must be finite"),
        ({"rois": torch.tensor([[2.0, 1, 1, 5, 5]])}, ValueError, r"rois\[:, 0\] \(batch index\)"),
        ({"rois": torch.tensor([[-1.0, 1, 1, 5, 5]])}, ValueError, r"rois\[:, 0\] \(batch index\)"),
        ({"rois": torch.tensor([[0.5, 1, 1, 5, 5]])}, ValueError, r"rois\[:, 0\] \(batch index\)"),
        ({"output_size": 0}, ValueError, "output_size must be positive"),
        ({"output_size": (3, -1)}, ValueError, "output_size must be positive"),
        ({"output_size": (3, 2, 1)}, TypeError, "output_size must be"),
        ({"output_size": 2.0}, TypeError, "output_size must be"),
        ({"spatial_scale": 0.0}, ValueError, "spatial_scale must be"),
        ({"spatial_scale": math.nan}, ValueError, "spatial_scale must be"),
        ({"sampling_ratio": 2.0}, TypeError, "sampling_ratio must be an int"),
        ({"aligned": 1}, TypeError, "aligned must be a bool"),
    ],
)
def test_bad_arguments_raise(overrides, error, match):
    with pytest.raises(error, match=match):
        bad_call(**overrides)


@pytest.mark.parametrize(
    ("features", "scales", "match"),
    [
        ([], MLPERF_SCALES[:1], "features must be a non-empty list"),
        (pyramid(2, 3, 16, 2), MLPERF_SCALES, "scales has 4 entries for 2 feature maps"),
        (pyramid(2, 3, 16, 2), [0.25, 0.0625], "consecutive powers of 1/2"),
        (pyramid(2, 3, 16, 2), [0.25, 0.1], "consecutive powers of 1/2"),
        (pyramid(2, 3, 16, 2), [0.25, -0.125], r"scales\[1\] must be a finite positive"),
        ([torch.randn(2, 3, 16, 24), torch.randn(2, 4, 8, 12)], [0.25, 0.125], r"features\[1\]"),
        ([torch.randn(2, 3, 16, 24), torch.randn(2, 3, 8)], [0.25, 0.125], r"features\[1\] must"),
    ],
)
def test_bad_multilevel_arguments_raise(features, scales, match):
    rois = torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises((TypeError, ValueError), match=match):
        multilevel_roi_align(features, rois, 7, scales, 2)


@pytest.mark.parametrize("aligned", [False, True])
def test_huge_coordinates_stay_in_bounds(aligned):
    """Finite but huge ROIs (1e30) are valid: they pool in bounds without raising, and to finite
    values with a fixed sampling grid (an adaptive grid that large has no meaningful value)."""
    features = torch.randn(2, 3, 5, 6)
    rois = torch.tensor([[0, 1e30, 2, 1e30, 4], [1, -1e30, -1e30, 1e30, 1e30], [0, 1, 1, 1e30, 3]])
    for sampling_ratio in (2, -1):
        pooled = roi_align(features, rois, 3, 1.0, sampling_ratio, aligned)
        assert pooled.shape == (3, 3, 3, 3)
        assert sampling_ratio <= 0 or torch.isfinite(pooled).all()


@st.composite
def _roi_align_call(draw, min_rois: int = 0):
    """A valid roi_align call: (input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    with integer batch indices in range and x1 <= x2, y1 <= y2, the boxes reaching a few pixels
    past the map on each side (where the samples are clamped or dropped)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    features = torch.randn(
        batch, channels, height, width, dtype=dtype, generator=torch.Generator().manual_seed(seed)
    )
    scale = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    rows = []
    for _ in range(draw(st.integers(min_rois, 5))):
        x1, y1 = (draw(st.floats(-3 / scale, side / scale)) for side in (width, height))
        x2, y2 = x1 + draw(st.floats(0, width / scale)), y1 + draw(st.floats(0, height / scale))
        rows.append([draw(st.integers(0, batch - 1)), x1, y1, x2, y2])
    rois = torch.tensor(rows, dtype=dtype).reshape(-1, 5)
    output_size = draw(
        st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))
    )
    return features, rois, output_size, scale, draw(st.integers(-1, 3)), draw(st.booleans())


@settings(max_examples=50, deadline=None)
@given(call=_roi_align_call(min_rois=1))
def test_valid_calls_match_the_reference_and_torchvision(call):
    """Every draw is a valid call (asserted), so every draw reaches the comparisons: pooled values
    and input gradients equal the pure-PyTorch reference's and torchvision's."""
    features, rois, output_size, scale, sampling_ratio, aligned = call
    assert (rois[:, 3:] >= rois[:, 1:3]).all() and (
        (rois[:, 0] >= 0) & (rois[:, 0] < len(features))
    ).all()
    ours_input = features.clone().requires_grad_()
    peer_input = features.clone().requires_grad_()
    args = (output_size, scale, sampling_ratio, aligned)
    ours = roi_align(ours_input, rois, *args)
    peer = torchvision.ops.roi_align(peer_input, rois, *args)
    assert_close(ours, roi_align_reference(features, rois, *args))
    assert_close(ours, peer)
    grad = torch.randn_like(peer)
    ours.backward(grad)
    peer.backward(grad)
    assert_close(ours_input.grad, peer_input.grad)
    event("valid call")
    event(f"some pooled value nonzero: {bool((ours != 0).any())}")


# Each corruption of one argument and the error naming it.
_ROI_ALIGN_CORRUPTIONS = {
    "non-finite roi": (ValueError, "rois must be finite; found NaN or inf"),
    "batch index out of range": (
        ValueError,
        r"rois\[:, 0\] \(batch index\) must hold integers in \[0, ",
    ),
    "fractional batch index": (ValueError, r"rois\[:, 0\] \(batch index\) must hold integers"),
    "rois not [K, 5]": (ValueError, r"rois must be \[K, 5\]"),
    "rois not floating point": (TypeError, "rois must be a floating point tensor"),
    "rois not a Tensor": (TypeError, "rois must be a torch.Tensor"),
    "input not [B, C, H, W]": (ValueError, r"input must be \[B, C, H, W\]"),
    "input of an integer dtype": (TypeError, "input must be float16, bfloat16, float32 or float64"),
    "input without pixels": (ValueError, "input has an empty spatial size"),
    "output_size not positive": (ValueError, "output_size must be positive"),
    "output_size not ints": (TypeError, "output_size must be an int or a pair of ints"),
    "spatial_scale not finite and positive": (
        ValueError,
        "spatial_scale must be a finite positive number",
    ),
    "sampling_ratio not an int": (TypeError, "sampling_ratio must be an int"),
    "aligned not a bool": (TypeError, "aligned must be a bool"),
}


def _corrupt_roi_align_call(name: str, call: tuple, draw) -> tuple:
    """The valid `call` with the one argument that corruption `name` spoils made invalid."""
    features, rois, output_size, scale, sampling_ratio, aligned = call
    row = draw(st.integers(0, len(rois) - 1))
    if name == "non-finite roi":
        rois = rois.clone()
        rois[row, draw(st.integers(0, 4))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif name == "batch index out of range":
        rois = rois.clone()
        rois[row, 0] = draw(st.sampled_from([-1, len(features), len(features) + 7]))
    elif name == "fractional batch index":
        rois = rois.clone()
        rois[row, 0] += draw(st.sampled_from([0.5, 1e-3, -0.25]))
    elif name == "rois not [K, 5]":
        rois = draw(st.sampled_from([rois[:, 1:], torch.cat([rois, rois[:, :1]], 1), rois[None]]))
    elif name == "rois not floating point":
        rois = rois.to(draw(st.sampled_from([torch.int64, torch.int32])))
    elif name == "rois not a Tensor":
        rois = rois.tolist()
    elif name == "input not [B, C, H, W]":
        features = draw(st.sampled_from([features[0], features[None], features.flatten(2)]))
    elif name == "input of an integer dtype":
        features = features.to(draw(st.sampled_from([torch.int64, torch.uint8, torch.bool])))
    elif name == "input without pixels":
        features = draw(st.sampled_from([features[:, :, :0], features[..., :0]]))
    elif name == "output_size not positive":
        output_size = draw(st.sampled_from([0, -2, (0, 3), (2, -1)]))
    elif name == "output_size not ints":
        output_size = draw(st.sampled_from([2.0, (2, 2, 2), (2.0, 2), "7", True]))
    elif name == "spatial_scale not finite and positive":
        scale = draw(st.sampled_from([0.0, -0.5, math.nan, math.inf, True, "1"]))
    elif name == "sampling_ratio not an int":
        sampling_ratio = draw(st.sampled_from([2.0, None, True]))
    else:
        aligned = draw(st.sampled_from([0, 1, None, "no"]))
    return features, rois, output_size, scale, sampling_ratio, aligned


@pytest.mark.parametrize("name", sorted(_ROI_ALIGN_CORRUPTIONS))
@settings(max_examples=5, deadline=None)
@given(call=_roi_align_call(min_rois=1), data=st.data())
def test_one_corrupted_argument_raises_its_error(name, call, data):
    """A valid call with exactly one argument spoilt is refused with the error naming it (none
    reaches the kernels)."""
    error, message = _ROI_ALIGN_CORRUPTIONS[name]
    with pytest.raises(error, match=message):
        roi_align(*_corrupt_roi_align_call(name, call, data.draw))
