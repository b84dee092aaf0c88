"""ROIAlign, Mask R-CNN's pooler: on one feature map, or on a whole FPN pyramid in one C++/CUDA call.

`roi_align` has the semantics of `torchvision.ops.roi_align` (Detectron's ROIAlign): each ROI is
split into output_size bins; each bin is the mean of a grid of bilinearly interpolated sampling
points (sampling_ratio per axis, or ceil(bin size) when sampling_ratio <= 0); points more than one
pixel outside the map count as 0, nearer ones are clamped onto the border. aligned=False (MLPerf)
keeps Detectron's legacy geometry: no half-pixel shift, and ROIs smaller than one pixel inflated to
one pixel.

`multilevel_roi_align` is maskrcnn-benchmark's FPN `Pooler` (the MLPerf reference): each ROI is
pooled from the level `fpn_levels` assigns it, all levels in one kernel call, rows in input order.

ROI coordinates: `rois` Tensor[K, 5] = (batch index, x1, y1, x2, y2), pixels of the (resized, padded)
input image; `spatial_scale` (or `scales[l]`) maps them onto the feature map (1/4 for P2).
Gradients flow to the feature maps, not to the ROIs (as in the peers).

`roi_align_reference` and `multilevel_roi_align_reference` are pure PyTorch: the test oracle and a
fallback. They gather every sampling point's four taps, so their memory grows with
K x C x output bins x sampling points; keep them to modest sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from harness.ops._checks import is_int as _is_int
from harness.ops._checks import is_real as _is_real
from harness.ops._library import debug_checks, library, on_load

# maskrcnn-benchmark's LevelMapper adds this inside the log2 so boxes exactly at a level boundary
# land on the upper level despite float rounding.
LEVEL_EPS = 1e-6

_KERNEL_DTYPES = (torch.float32, torch.float64)
_FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    if _is_int(output_size):
        size = (output_size, output_size)
    elif (
        isinstance(output_size, Sequence)
        and len(output_size) == 2
        and all(_is_int(s) for s in output_size)
    ):
        size = (output_size[0], output_size[1])
    else:
        raise TypeError(f"output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return size


def _check_feature(name: str, feature: object) -> Tensor:
    if not isinstance(feature, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feature).__name__}")
    if feature.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(feature.shape)}")
    if feature.dtype not in _FEATURE_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {feature.dtype}"
        )
    if feature.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {feature.device}")
    if feature.shape[2] == 0 or feature.shape[3] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(feature.shape[2:])}")
    return feature


def _check_features(features: object) -> list[Tensor]:
    if not isinstance(features, Sequence) or len(features) == 0:
        raise TypeError("features must be a non-empty list of [B, C, H, W] tensors")
    checked = [_check_feature(f"features[{i}]", f) for i, f in enumerate(features)]
    first = checked[0]
    for i, f in enumerate(checked[1:], start=1):
        if f.shape[:2] != first.shape[:2] or f.dtype != first.dtype or f.device != first.device:
            raise ValueError(
                f"features[{i}] ({tuple(f.shape)}, {f.dtype}, {f.device}) must share batch size, "
                f"channels, dtype and device with features[0] "
                f"({tuple(first.shape)}, {first.dtype}, {first.device})"
            )
    return checked


def _check_rois_shape(rois: object) -> Tensor:
    if not isinstance(rois, Tensor):
        raise TypeError(f"rois must be a torch.Tensor, got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be [K, 5] (batch index, x1, y1, x2, y2), got shape {tuple(rois.shape)}"
        )
    if not rois.is_floating_point():
        raise TypeError(f"rois must be a floating point tensor, got {rois.dtype}")
    return rois


def _check_rois(rois: object, feature: Tensor) -> Tensor:
    """Shape and device always; values (which read the data, a sync on CUDA) in debug mode only.
    The kernels stay in bounds on bad values: such a ROI pools zeros and gets no gradient."""
    rois = _check_rois_shape(rois)
    if rois.device != feature.device:
        raise ValueError(f"rois are on {rois.device} but the features on {feature.device}")
    if rois.shape[0] == 0 or not debug_checks():
        return rois
    batch_index = rois[:, 0]
    finite = torch.isfinite(rois).all()
    in_range = ((batch_index >= 0) & (batch_index < feature.shape[0])).all()
    integral = (batch_index == batch_index.floor()).all()
    # One host sync for all three checks (on CUDA each .item() would wait for the GPU).
    ok = torch.stack([finite, in_range, integral]).cpu()
    if not ok[0]:
        raise ValueError("rois must be finite; found NaN or inf")
    if not (ok[1] and ok[2]):
        raise ValueError(
            f"rois[:, 0] (batch index) must hold integers in [0, {feature.shape[0]}) for a batch "
            f"of {feature.shape[0]} images"
        )
    return rois


def _check_sampling_ratio(sampling_ratio: object) -> int:
    if not _is_int(sampling_ratio):
        raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    return sampling_ratio


def _check_scale(name: str, scale: object) -> float:
    if not _is_real(scale) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {scale!r}")
    return float(scale)


def _level_range(scales: object, num_levels: int | None = None) -> tuple[int, int]:
    """(k_min, k_max): the pyramid levels of scales[0] and scales[-1] (scale 1/4 is level 2)."""
    if not isinstance(scales, Sequence) or len(scales) == 0:
        raise TypeError(f"scales must be a non-empty list of floats, got {scales!r}")
    if num_levels is not None and len(scales) != num_levels:
        raise ValueError(f"scales has {len(scales)} entries for {num_levels} feature maps")
    levels = [-math.log2(_check_scale(f"scales[{i}]", s)) for i, s in enumerate(scales)]
    k_min = round(levels[0])
    for i, level in enumerate(levels):
        # Level indices are computed as lvl - k_min, so the maps must be consecutive octaves.
        if abs(level - (k_min + i)) > 1e-6:
            raise ValueError(
                f"scales must be consecutive powers of 1/2 (e.g. 1/4, 1/8, 1/16, 1/32), got {scales!r}"
            )
    return k_min, k_min + len(scales) - 1


def fpn_levels(
    rois: Tensor, scales: Sequence[float], canonical_scale: float = 224, canonical_level: int = 4
) -> Tensor:
    """FPN level index (0 .. len(scales) - 1) of each ROI, as maskrcnn-benchmark's LevelMapper.

    rois: Tensor[K, 5] (batch index, x1, y1, x2, y2) in input-image pixels. The box size is
    s = sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) (BoxList.area()'s +1 convention) and the level
    floor(canonical_level + log2(s / canonical_scale + 1e-6)), clamped to the levels of scales[0]
    (k_min = -log2(scales[0])) .. scales[-1], minus k_min. A negative area counts as 0 (the
    smallest level) where the reference would produce NaN. Returns Tensor[K] int64 on rois' device.
    """
    rois = _check_rois_shape(rois)
    k_min, k_max = _level_range(scales)
    canonical_scale = _check_scale("canonical_scale", canonical_scale)
    if not _is_int(canonical_level):
        raise TypeError(f"canonical_level must be an int, got {canonical_level!r}")
    # The reference evaluates this in the boxes' float32; half precision would move boundaries.
    boxes = rois[:, 1:] if rois.dtype == torch.float64 else rois[:, 1:].float()
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    size = area.clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_scale + LEVEL_EPS))
    return level.clamp(k_min, k_max).to(torch.int64) - k_min


def _setup_roi_align(ctx, inputs, output) -> None:
    features, rois, levels, scales, _, _, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.config = (scales, sampling_ratio, aligned, features[0].shape[0])
    ctx.sizes = ([f.shape[2] for f in features], [f.shape[3] for f in features])


def _roi_align_grad(ctx, grad_output):
    """Gradients of the feature maps only (none for the ROIs, as in the peers)."""
    rois, levels = ctx.saved_tensors
    scales, sampling_ratio, aligned, batch_size = ctx.config
    heights, widths = ctx.sizes
    grads = library().roi_align_backward(
        grad_output.contiguous(),
        rois,
        levels,
        scales,
        batch_size,
        heights,
        widths,
        sampling_ratio,
        aligned,
    )
    return list(grads), None, None, None, None, None, None, None


def _setup_roi_align_backward(ctx, inputs, output) -> None:
    grad_output, rois, levels, scales, _, _, _, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.config = (scales, sampling_ratio, aligned, grad_output.shape[2], grad_output.shape[3])


def _roi_align_backward_grad(ctx, grad_grads):
    """The backward is linear in grad_output, and its adjoint is the forward: pooling the incoming
    gradients of the feature maps gives the gradient of grad_output (double backward)."""
    rois, levels = ctx.saved_tensors
    scales, sampling_ratio, aligned, pooled_h, pooled_w = ctx.config
    pooled = library().roi_align(
        [g.contiguous() for g in grad_grads],
        rois,
        levels,
        scales,
        pooled_h,
        pooled_w,
        sampling_ratio,
        aligned,
    )
    return pooled, None, None, None, None, None, None, None, None


@on_load
def _register_autograd() -> None:
    torch.library.register_autograd(
        "harness::roi_align", _roi_align_grad, setup_context=_setup_roi_align
    )
    torch.library.register_autograd(
        "harness::roi_align_backward",
        _roi_align_backward_grad,
        setup_context=_setup_roi_align_backward,
    )


def _pool(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    dtype = features[0].dtype
    # float16/bfloat16 maps (autocast, or a half model) are pooled in float32 and the result cast
    # back, as torchvision's autocast rule for roi_align does: a bin sums up to hundreds of
    # weighted taps, the backward accumulates many ROIs into one pixel, and half-precision atomics
    # are slow on GPUs; the op is bound by memory gathers, so float32 arithmetic costs little.
    compute = dtype if dtype in _KERNEL_DTYPES else torch.float32
    pooled = library().roi_align(
        [f.to(compute).contiguous() for f in features],
        rois.detach().to(compute).contiguous(),
        levels,
        scales,
        *output_size,
        sampling_ratio,
        aligned,
    )
    return pooled.to(dtype)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool each ROI of `input` to a fixed grid; torchvision.ops.roi_align semantics.

    input: Tensor[B, C, H, W], float16/bfloat16/float32/float64, CPU or CUDA (half types are
    computed in float32; the result has input's dtype). rois: Tensor[K, 5] float on input's device,
    (batch index, x1, y1, x2, y2) in image pixels; spatial_scale maps them to input's pixels.
    Returns Tensor[K, C, output_size[0], output_size[1]], differentiable with respect to input.
    """
    input = _check_feature("input", input)
    output_size = _output_size(output_size)
    spatial_scale = _check_scale("spatial_scale", spatial_scale)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned must be a bool, got {aligned!r}")
    rois = _check_rois(rois, input)
    return _pool([input], rois, None, [spatial_scale], output_size, sampling_ratio, aligned)


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    output_size: int | Sequence[int],
    scales: Sequence[float],
    sampling_ratio: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pool each ROI from its FPN level (see `fpn_levels`), all levels in one kernel call.

    features: L tensors [B, C, H_l, W_l] sharing B, C, dtype and device (P2..P5 for MLPerf);
    scales: the L factors mapping image pixels onto them (1/4, 1/8, 1/16, 1/32). aligned=False as
    in the MLPerf reference. Returns Tensor[K, C, oh, ow] in the order of `rois`, differentiable
    with respect to every feature map.
    """
    features = _check_features(features)
    _level_range(scales, len(features))
    output_size = _output_size(output_size)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    rois = _check_rois(rois, features[0])
    levels = fpn_levels(rois, scales, canonical_scale, canonical_level)
    return _pool(
        features, rois, levels, [float(s) for s in scales], output_size, sampling_ratio, False
    )


def _axis_taps(
    start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis of every sampling point [K, bins, G] (G = the largest grid):
    low and high pixel indices, their weights, and whether the point exists and lies on the map."""
    points = max(int(grid.max()), 0) if grid.numel() else 0
    i = torch.arange(points, device=start.device, dtype=start.dtype)
    p = torch.arange(bins, device=start.device, dtype=start.dtype)
    start, bin_size, grid_ = start[:, None, None], bin_size[:, None, None], grid[:, None, None]
    coord = start + p[None, :, None] * bin_size + (i + 0.5) * bin_size / grid_.to(start.dtype)
    valid = (coord >= -1) & (coord <= size) & (i < grid_)
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low).clamp(0, size - 1)
    high = torch.where(at_edge, size - 1, low + 1).clamp(0, size - 1)
    frac = torch.where(at_edge, 0.0, coord - low.to(coord.dtype))
    return low, high, 1 - frac, frac, valid


def roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pure-PyTorch `roi_align` (same arguments and result), differentiable through autograd."""
    oh, ow = _output_size(output_size)
    num_rois = rois.shape[0]
    _, channels, height, width = input.shape
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / oh, roi_w / ow
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, device=rois.device)
        grid_w = grid_h
    else:
        grid_h, grid_w = bin_h.ceil().long(), bin_w.ceil().long()
    ylow, yhigh, wylow, wyhigh, vy = _axis_taps(y1, bin_h, grid_h, oh, height)
    xlow, xhigh, wxlow, wxhigh, vx = _axis_taps(x1, bin_w, grid_w, ow, width)
    # Samples are [K, oh, Gh, ow, Gw]; gathering from [B, H, W, C] appends the channel axis.
    pixels = input.permute(0, 2, 3, 1)
    batch = rois[:, 0].long()[:, None, None, None, None]
    total = 0
    for yi, wy in ((ylow, wylow), (yhigh, wyhigh)):
        for xi, wx in ((xlow, wxlow), (xhigh, wxhigh)):
            values = pixels[batch, yi[:, :, :, None, None], xi[:, None, None, :, :]]
            weight = wy[:, :, :, None, None] * wx[:, None, None, :, :]
            total = total + weight[..., None] * values
    inside = (vy[:, :, :, None, None] & vx[:, None, None, :, :])[..., None]
    total = torch.where(inside, total, torch.zeros((), dtype=input.dtype, device=input.device))
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)[:, None, None, None]
    pooled = total.sum(dim=(2, 4)) / count
    return pooled.permute(0, 3, 1, 2).reshape(num_rois, channels, oh, ow)


def multilevel_roi_align_reference(
    features: Sequence[Tensor],
    rois: Tensor,
    output_size: int | Sequence[int],
    scales: Sequence[float],
    sampling_ratio: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pure-PyTorch `multilevel_roi_align`: `fpn_levels`, then `roi_align_reference` per level."""
    oh, ow = _output_size(output_size)
    levels = fpn_levels(rois, scales, canonical_scale, canonical_level)
    first = features[0]
    pooled = first.new_zeros(rois.shape[0], first.shape[1], oh, ow)
    for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
        index = torch.nonzero(levels == level).squeeze(1)
        part = roi_align_reference(feature, rois[index], (oh, ow), scale, sampling_ratio, False)
        pooled = pooled.index_copy(0, index, part)
    return pooled
