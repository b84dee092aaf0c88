"""Each operator beside the peer it replaces, on identical MLPerf-sized inputs.

Run: `.venv/bin/python -m pytest benchmarks/test_ops_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine). Groups pair `ours` with `peer`; RESULTS.md records the medians.
"""

import pytest
import torch
import torchvision

from benchmarks.conftest import sync
from harness.ops import fpn_levels, multilevel_roi_align, roi_align

# --- roi_align ---

ROI_ALIGN_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


@pytest.fixture(scope="module")
def roi_align_inputs(bench_device: torch.device):
    """P2..P5 of a batch of 2 images at 800x1344 (256 channels) and 512 proposals per image of
    log-uniform sizes 16-700 pixels and aspect ratios 1/2-2, so every level gets a share (seeded)."""
    gen = torch.Generator().manual_seed(0)
    features = [
        torch.randn(2, 256, 200 >> i, 336 >> i, generator=gen).to(bench_device).requires_grad_()
        for i in range(4)
    ]
    size = torch.exp(torch.empty(1024).uniform_(2.77, 6.55, generator=gen))
    aspect = torch.exp(torch.empty(1024).uniform_(-0.69, 0.69, generator=gen))
    wh = torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], dim=1)
    centre = torch.rand(1024, 2, generator=gen) * torch.tensor([1344.0, 800.0])
    corners = torch.cat([centre - wh / 2, centre + wh / 2], dim=1).clamp(min=0)
    corners = torch.minimum(corners, torch.tensor([1343.0, 799.0, 1343.0, 799.0]))
    index = torch.arange(1024).div(512, rounding_mode="floor").float()[:, None]
    rois = torch.cat([index, corners], dim=1).to(bench_device)
    grads = {
        size: torch.randn(num, 256, size, size, generator=gen).to(bench_device)
        for num, size in ((1024, 7), (256, 14))
    }
    return features, rois, grads


def _torchvision_multilevel(features, rois, output_size, scales, sampling_ratio):
    """torchvision.ops.MultiScaleRoIAlign's scheme with the MLPerf level assignment: one
    torchvision.ops.roi_align per level, scattered back into input order."""
    levels = fpn_levels(rois, scales)
    pooled = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled[index] = torchvision.ops.roi_align(
            feature, rois[index], output_size, scale, sampling_ratio, False
        )
    return pooled


def _pool_forward_backward(op, features, rois, grad, device, *args):
    pooled = op(features, rois, grad.shape[-1], *args)
    grads = torch.autograd.grad(pooled, features, grad)
    sync(device)
    return grads


@pytest.mark.parametrize("size", [7, 14])
@pytest.mark.benchmark(group="roi_align_fpn")
def test_roi_align_fpn_ours(benchmark, roi_align_inputs, bench_device, size):
    features, rois, grads = roi_align_inputs
    rois = rois if size == 7 else rois[::4]
    benchmark(
        _pool_forward_backward,
        multilevel_roi_align,
        features,
        rois,
        grads[size],
        bench_device,
        ROI_ALIGN_SCALES,
        2,
    )


@pytest.mark.parametrize("size", [7, 14])
@pytest.mark.benchmark(group="roi_align_fpn")
def test_roi_align_fpn_peer(benchmark, roi_align_inputs, bench_device, size):
    features, rois, grads = roi_align_inputs
    rois = rois if size == 7 else rois[::4]
    benchmark(
        _pool_forward_backward,
        _torchvision_multilevel,
        features,
        rois,
        grads[size],
        bench_device,
        ROI_ALIGN_SCALES,
        2,
    )


@pytest.mark.benchmark(group="roi_align_p2")
def test_roi_align_p2_ours(benchmark, roi_align_inputs, bench_device):
    features, rois, grads = roi_align_inputs
    benchmark(_pool_forward_backward, roi_align, features[0], rois, grads[7], bench_device, 0.25, 2)


@pytest.mark.benchmark(group="roi_align_p2")
def test_roi_align_p2_peer(benchmark, roi_align_inputs, bench_device):
    features, rois, grads = roi_align_inputs
    benchmark(
        _pool_forward_backward,
        torchvision.ops.roi_align,
        features[0],
        rois,
        grads[7],
        bench_device,
        0.25,
        2,
    )


# --- nms ---

# --- anchors / box coder ---

# --- mask targets ---
