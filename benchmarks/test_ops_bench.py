"""Each operator beside the peer it replaces, on identical MLPerf-sized inputs.

Run: `.venv/bin/python -m pytest benchmarks/test_ops_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU machine). Groups pair `ours` with `peer`; RESULTS.md records the medians.
"""

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from benchmarks.conftest import sync
from harness.ops import (
    batched_nms,
    batched_nms_mask,
    decode_boxes,
    encode_boxes,
    fpn_levels,
    generate_anchors,
    mask_targets,
    mask_targets_reference,
    multilevel_roi_align,
    nms,
    roi_align,
)
from tests.ops.test_mask_targets import coco_like_case
from tests.ops.test_nms import rpn_like

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


@pytest.fixture(scope="module")
def nms_inputs(bench_device: torch.device):
    """One RPN level's 2000 pre-NMS boxes, and 5 levels x 2 images of 2000 (idxs = image * 5 +
    level), clustered so NMS at 0.7 removes about half (seeded)."""
    boxes, scores = rpn_like(2000, 0)
    per_group = [rpn_like(2000, 1 + group) for group in range(10)]
    all_boxes = torch.cat([b for b, _ in per_group])
    all_scores = torch.cat([s for _, s in per_group])
    idxs = torch.arange(10).repeat_interleave(2000)
    return tuple(t.to(bench_device) for t in (boxes, scores, all_boxes, all_scores, idxs))


def _synced(op, device, *args):
    out = op(*args)
    sync(device)
    return out


@pytest.mark.benchmark(group="nms_rpn_2000")
def test_nms_rpn_2000_ours(benchmark, nms_inputs, bench_device):
    benchmark(_synced, nms, bench_device, nms_inputs[0], nms_inputs[1], 0.7)


@pytest.mark.benchmark(group="nms_rpn_2000")
def test_nms_rpn_2000_peer(benchmark, nms_inputs, bench_device):
    benchmark(_synced, torchvision.ops.nms, bench_device, nms_inputs[0], nms_inputs[1], 0.7)


@pytest.mark.benchmark(group="batched_nms_5x2x2000")
def test_batched_nms_5x2x2000_ours(benchmark, nms_inputs, bench_device):
    benchmark(_synced, batched_nms, bench_device, *nms_inputs[2:], 0.7)


@pytest.mark.benchmark(group="batched_nms_5x2x2000")
def test_batched_nms_5x2x2000_ours_mask(benchmark, nms_inputs, bench_device):
    # The fixed-size, sync-free variant a training step uses.
    benchmark(_synced, batched_nms_mask, bench_device, *nms_inputs[2:], 0.7)


@pytest.mark.benchmark(group="batched_nms_5x2x2000")
def test_batched_nms_5x2x2000_peer(benchmark, nms_inputs, bench_device):
    benchmark(_synced, torchvision.ops.batched_nms, bench_device, *nms_inputs[2:], 0.7)


# --- anchors / box coder ---

FPN_FEATURES = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # 800 x 1344 input
FPN_STRIDES = [4, 8, 16, 32, 64]
FPN_SIZES = [32, 64, 128, 256, 512]
FPN_RATIOS = [0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def anchor_peer(bench_device: torch.device):
    """torchvision's AnchorGenerator with the same sizes and ratios, and its inputs."""
    generator = AnchorGenerator(tuple((s,) for s in FPN_SIZES), (tuple(FPN_RATIOS),) * 5)
    images = ImageList(torch.zeros(1, 3, 800, 1344, device=bench_device), [(800, 1344)])
    features = [torch.zeros(1, 1, h, w, device=bench_device) for h, w in FPN_FEATURES]
    return generator, images, features


@pytest.mark.benchmark(group="anchors_fpn_800x1344")
def test_anchors_fpn_800x1344_ours(benchmark, bench_device):
    benchmark(
        _synced,
        generate_anchors,
        bench_device,
        FPN_FEATURES,
        FPN_STRIDES,
        FPN_SIZES,
        FPN_RATIOS,
        bench_device,
    )


@pytest.mark.benchmark(group="anchors_fpn_800x1344")
def test_anchors_fpn_800x1344_peer(benchmark, anchor_peer, bench_device):
    generator, images, features = anchor_peer
    benchmark(_synced, generator, bench_device, images, features)


@pytest.fixture(scope="module")
def box_coder_inputs(bench_device: torch.device):
    """2 images' worth of anchors (all levels at 800x1344) with jittered targets and RPN deltas,
    and 1000 ROIs with 81-class box-head deltas (seeded)."""
    gen = torch.Generator().manual_seed(0)
    levels = generate_anchors(FPN_FEATURES, FPN_STRIDES, FPN_SIZES, FPN_RATIOS)
    anchors = torch.cat(levels).repeat(2, 1)
    targets = anchors + torch.randn(anchors.shape, generator=gen) * 8
    rpn_deltas = torch.randn(anchors.shape, generator=gen) * 0.5
    rois = anchors[torch.randint(0, anchors.shape[0], (1000,), generator=gen)]
    head_deltas = torch.randn(1000, 81 * 4, generator=gen)
    return tuple(t.to(bench_device) for t in (anchors, targets, rpn_deltas, rois, head_deltas))


@pytest.mark.benchmark(group="encode_2x_anchors")
def test_encode_2x_anchors_ours(benchmark, box_coder_inputs, bench_device):
    anchors, targets = box_coder_inputs[:2]
    benchmark(_synced, encode_boxes, bench_device, targets, anchors, (1.0, 1.0, 1.0, 1.0))


@pytest.mark.benchmark(group="encode_2x_anchors")
def test_encode_2x_anchors_peer(benchmark, box_coder_inputs, bench_device):
    anchors, targets = box_coder_inputs[:2]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    benchmark(_synced, coder.encode_single, bench_device, targets, anchors)


@pytest.mark.benchmark(group="decode_2x_anchors")
def test_decode_2x_anchors_ours(benchmark, box_coder_inputs, bench_device):
    anchors, _, deltas = box_coder_inputs[:3]
    benchmark(_synced, decode_boxes, bench_device, deltas, anchors, (1.0, 1.0, 1.0, 1.0))


@pytest.mark.benchmark(group="decode_2x_anchors")
def test_decode_2x_anchors_peer(benchmark, box_coder_inputs, bench_device):
    anchors, _, deltas = box_coder_inputs[:3]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    benchmark(_synced, coder.decode_single, bench_device, deltas, anchors)


@pytest.mark.benchmark(group="decode_box_head_1000x81")
def test_decode_box_head_1000x81_ours(benchmark, box_coder_inputs, bench_device):
    rois, deltas = box_coder_inputs[3:]
    benchmark(_synced, decode_boxes, bench_device, deltas, rois, (10.0, 10.0, 5.0, 5.0))


@pytest.mark.benchmark(group="decode_box_head_1000x81")
def test_decode_box_head_1000x81_peer(benchmark, box_coder_inputs, bench_device):
    rois, deltas = box_coder_inputs[3:]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    benchmark(_synced, coder.decode_single, bench_device, deltas, rois)


# --- mask targets ---


@pytest.fixture(scope="module")
def mask_targets_inputs(bench_device: torch.device):
    """256 positive ROIs jittered around the objects of 2 images at 800x1344, COCO-like objects of
    1-3 polygons with 10-60 vertices (seeded); M = 28 as in the reference."""
    polygons, rois, roi_objects = coco_like_case(torch.Generator().manual_seed(0), 2, 128)
    return polygons.to(bench_device), rois.to(bench_device), roi_objects.to(bench_device)


def _run_mask_targets(op, inputs, device: torch.device):
    out = op(*inputs, 28)
    sync(device)
    return out


@pytest.mark.benchmark(group="mask_targets")
def test_mask_targets_ours(benchmark, mask_targets_inputs, bench_device):
    benchmark(_run_mask_targets, mask_targets, mask_targets_inputs, bench_device)


@pytest.mark.benchmark(group="mask_targets")
def test_mask_targets_peer(benchmark, mask_targets_inputs, bench_device):
    benchmark(_run_mask_targets, mask_targets_reference, mask_targets_inputs, bench_device)
