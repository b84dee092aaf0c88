"""Mask R-CNN mask targets: each positive ROI's GT polygons cropped to the ROI, rasterized at M x M.

The MLPerf reference (maskrcnn-benchmark `project_masks_on_boxes`) loops over ROIs in Python: per ROI
`SegmentationMask.crop(box)` -> `.resize((M, M))` -> `.convert("mask")`. Pinned details:
- crop: in float32, vertex x -= x1 and y -= y1; the size becomes w = max(x2 - x1, 1),
  h = max(y2 - y1, 1) (x2 - x1 in float32; the max leaves w unchanged when it is >= 1).
- resize: ratio_x = float(M) / float(w) in double, then `poly * ratio_x`, which torch evaluates in
  float32 with the ratio rounded to float32 (likewise for y).
- convert: `pycocotools.mask.frPyObjects(polys, M, M)` on the float32 values widened to double
  (rleFrPoly: a 5x finer grid, C truncation of v + .5, column crossings at pixel centres), then
  `mask.merge` (the union of the object's polygons) and `mask.decode` -> uint8 [M, M] indexed [y, x].
`mask_targets` computes that in one C++/CUDA call for the whole batch, bit-identical per ROI (the
kernel reproduces rleFrPoly's double arithmetic; see csrc/common/polygon_raster.h).
`mask_targets_reference` runs the reference path itself; it is the test oracle and benchmark peer.

Deviation from the reference: an object with no polygons gives an all-zero target (pycocotools'
frPyObjects raises an IndexError on an empty list).
"""

from __future__ import annotations

import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from harness.data.batch import Polygons
from harness.ops._library import debug_checks, library, on_load

# Coordinates beyond this (pixels) are rejected: with mask_size <= MAX_MASK_SIZE, rleFrPoly's
# fine-grid integers stay within 5 * 2e5 * 512 < 2^30, so their differences fit in int32.
MAX_ABS_COORDINATE = 1.0e5
MAX_MASK_SIZE = 512  # kMaxMaskSize in csrc/mask_targets/mask_targets.h


def _check_tensor(name: str, value: object, dtype: torch.dtype, shape: str, ok: bool) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {value.dtype}")
    if not ok:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(value.shape)}")


def _check_arguments(
    polygons: Polygons, rois: Tensor, roi_objects: Tensor, mask_size: int, values: bool
) -> None:
    """Raise TypeError/ValueError naming the argument for anything the kernels cannot take.

    Types, shapes and devices always; with `values`, also the offsets, indices and coordinate
    bounds, which read the data: all reduce to one boolean vector, so a CUDA call synchronizes
    once. Without them the kernels still stay in bounds (csrc/mask_targets/mask_targets.h).
    """
    if not isinstance(polygons, Polygons):
        raise TypeError(f"polygons must be a harness.data.batch.Polygons, got {type(polygons)}")
    vertices, poly_offsets, obj_offsets = (
        polygons.vertices,
        polygons.poly_offsets,
        polygons.obj_offsets,
    )
    _check_tensor(
        "polygons.vertices",
        vertices,
        torch.float32,
        "[V, 2]",
        isinstance(vertices, Tensor) and vertices.dim() == 2 and vertices.shape[1] == 2,
    )
    for name, offsets in (
        ("polygons.poly_offsets", poly_offsets),
        ("polygons.obj_offsets", obj_offsets),
    ):
        _check_tensor(
            name,
            offsets,
            torch.int64,
            "1-D with at least one entry",
            isinstance(offsets, Tensor) and offsets.dim() == 1 and offsets.numel() >= 1,
        )
    _check_tensor(
        "rois",
        rois,
        torch.float32,
        "[K, 4]",
        isinstance(rois, Tensor) and rois.dim() == 2 and rois.shape[1] == 4,
    )
    _check_tensor(
        "roi_objects",
        roi_objects,
        torch.int64,
        f"[K={rois.shape[0]}]",
        isinstance(roi_objects, Tensor) and roi_objects.shape == rois.shape[:1],
    )
    if isinstance(mask_size, bool) or not isinstance(mask_size, int):
        raise TypeError(f"mask_size must be an int, got {type(mask_size).__name__}")
    if not 1 <= mask_size <= MAX_MASK_SIZE:
        raise ValueError(f"mask_size must be in [1, {MAX_MASK_SIZE}], got {mask_size}")
    for name, t in (
        ("polygons.vertices", vertices),
        ("polygons.poly_offsets", poly_offsets),
        ("polygons.obj_offsets", obj_offsets),
        ("roi_objects", roi_objects),
    ):
        if t.device != rois.device:
            raise ValueError(f"{name} is on {t.device} but rois are on {rois.device}")
    if not values:
        return

    num_vertices, num_polys = vertices.shape[0], poly_offsets.numel() - 1
    num_objects = obj_offsets.numel() - 1
    poly_sizes = poly_offsets.diff()
    # `abs() <= limit` is False for NaN, so it rejects NaN, inf and huge values at once.
    flags = torch.stack(
        [
            (poly_offsets[0] != 0) | (poly_offsets[-1] != num_vertices),
            (poly_sizes < 3).any(),
            (obj_offsets[0] != 0) | (obj_offsets[-1] != num_polys),
            (obj_offsets.diff() < 0).any(),
            ((roi_objects < 0) | (roi_objects >= num_objects)).any(),
            ~(vertices.abs() <= MAX_ABS_COORDINATE).all(),
            ~(rois.abs() <= MAX_ABS_COORDINATE).all(),
        ]
    ).tolist()
    if not any(flags):
        return
    if flags[0]:
        raise ValueError(f"polygons.poly_offsets must run from 0 to V={num_vertices}")
    if flags[2]:
        raise ValueError(f"polygons.obj_offsets must run from 0 to P={num_polys}")
    if flags[3]:
        raise ValueError("polygons.obj_offsets must be non-decreasing")
    # Named by object and polygon index once the object partition is known to be sound.
    if flags[1]:
        p = int(torch.nonzero(poly_sizes < 3)[0])
        n = int(torch.searchsorted(obj_offsets, p, right=True)) - 1
        raise ValueError(
            f"polygons: object {n} polygon {p - int(obj_offsets[n])} has {int(poly_sizes[p])} "
            "vertices; a polygon needs at least 3"
        )
    if flags[4]:
        raise ValueError(f"roi_objects must index objects in [0, {num_objects})")
    if flags[5]:
        raise ValueError(f"polygons.vertices must be finite with |value| <= {MAX_ABS_COORDINATE:g}")
    raise ValueError(f"rois must be finite with |value| <= {MAX_ABS_COORDINATE:g}")


@on_load
def _register_autograd() -> None:
    # The targets are piecewise constant in the ROI and polygon coordinates: zero gradient almost
    # everywhere (registered so autograd does not treat the op as untracked).
    torch.library.register_autograd(
        "harness::mask_targets",
        lambda ctx, grad: (None, None, None, None, None, None),
    )


def mask_targets(
    polygons: Polygons, rois: Tensor, roi_objects: Tensor, mask_size: int = 28
) -> Tensor:
    """Rasterize each ROI's matched object, cropped to the ROI, into an M x M 0/1 target.

    polygons:    the GT objects of the batch (`Polygons.cat` of the images), vertices (x, y) in
                 resized-image pixels; every polygon has at least 3 vertices
    rois:        Tensor[K, 4] float32, (x1, y1, x2, y2) in the same pixels; x2 <= x1 is allowed
                 (the reference widens such a ROI to 1 pixel)
    roi_objects: Tensor[K] int64, roi k's object index in `polygons`
    mask_size:   M, in [1, 512]
    Returns Tensor[K, M, M] float32 of 0/1 indexed [k, y, x] on the rois' device, equal to the MLPerf
    reference (module docstring) for every ROI; an object without polygons gives zeros.
    All tensors share one device; coordinates must be finite with |value| <= 1e5 (checked, like
    the offsets and indices, in debug mode: harness.ops.set_debug).
    """
    _check_arguments(polygons, rois, roi_objects, mask_size, values=debug_checks())
    return library().mask_targets(
        polygons.vertices.contiguous(),
        polygons.poly_offsets.contiguous(),
        polygons.obj_offsets.contiguous(),
        rois.contiguous(),
        roi_objects.contiguous(),
        mask_size,
    )


def _reference_mask(polys: list[Tensor], box: Tensor, mask_size: int) -> Tensor:
    """maskrcnn-benchmark's Polygons crop -> resize -> convert for one ROI; polys are flat float32
    [x0, y0, x1, y1, ...], box is float32 [4]. Returns uint8 [M, M]."""
    if not polys:
        return torch.zeros(mask_size, mask_size, dtype=torch.uint8)
    w = max(box[2] - box[0], 1)
    h = max(box[3] - box[1], 1)
    ratio_w, ratio_h = float(mask_size) / float(w), float(mask_size) / float(h)
    flat = []
    for poly in polys:
        p = poly.clone()
        p[0::2] = p[0::2] - box[0]
        p[1::2] = p[1::2] - box[1]
        p[0::2] *= ratio_w
        p[1::2] *= ratio_h
        flat.append(p.numpy())
    # frPyObjects widens the float32 arrays to double itself, as in the reference.
    rles = mask_utils.frPyObjects(flat, mask_size, mask_size)
    return torch.from_numpy(mask_utils.decode(mask_utils.merge(rles)))


def mask_targets_reference(
    polygons: Polygons, rois: Tensor, roi_objects: Tensor, mask_size: int = 28
) -> Tensor:
    """The reference's per-ROI Python/pycocotools path; same contract as `mask_targets`."""
    _check_arguments(polygons, rois, roi_objects, mask_size, values=True)
    vertices = polygons.vertices.cpu()
    poly_offsets = polygons.poly_offsets.tolist()
    obj_offsets = polygons.obj_offsets.tolist()
    masks = []
    for box, obj in zip(rois.detach().cpu(), roi_objects.tolist(), strict=True):
        polys = [
            vertices[poly_offsets[p] : poly_offsets[p + 1]].reshape(-1)
            for p in range(obj_offsets[obj], obj_offsets[obj + 1])
        ]
        masks.append(_reference_mask(polys, box, mask_size))
    if not masks:
        return torch.zeros(0, mask_size, mask_size, device=rois.device)
    return torch.stack(masks).to(rois.device, dtype=torch.float32)
