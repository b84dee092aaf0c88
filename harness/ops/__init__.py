"""The operators Mask R-CNN training spends its time in: the `harness` library of PyTorch ops
(torch.ops.harness.*, CPU and CUDA kernels in harness._C; see harness/ops/_library.py).

Each op's module holds its Python face (argument checks, autograd registration) and a pure-PyTorch
reference implementation (the test oracle); fake implementations are in harness/ops/_meta.py.
"""

from harness.ops._library import debug_checks, library, set_debug
from harness.ops.anchors import anchor_visibility, generate_anchors, generate_anchors_reference
from harness.ops.box_coder import (
    decode_boxes,
    decode_boxes_reference,
    encode_boxes,
    encode_boxes_reference,
)
from harness.ops.boxes import box_area, box_iou
from harness.ops.mask_rle import (
    aten_arithmetic,
    mask_rle,
    resize_bilinear,
    resize_bilinear_reference,
)
from harness.ops.mask_targets import mask_targets, mask_targets_reference
from harness.ops.nms import (
    batched_nms,
    batched_nms_mask,
    batched_nms_reference,
    nms,
    nms_mask,
    nms_reference,
)
from harness.ops.roi_align import (
    fpn_levels,
    multilevel_roi_align,
    multilevel_roi_align_reference,
    roi_align,
    roi_align_reference,
)

__all__ = [
    "anchor_visibility",
    "aten_arithmetic",
    "batched_nms",
    "batched_nms_mask",
    "batched_nms_reference",
    "box_area",
    "box_iou",
    "debug_checks",
    "decode_boxes",
    "decode_boxes_reference",
    "encode_boxes",
    "encode_boxes_reference",
    "fpn_levels",
    "generate_anchors",
    "generate_anchors_reference",
    "library",
    "mask_rle",
    "mask_targets",
    "mask_targets_reference",
    "multilevel_roi_align",
    "multilevel_roi_align_reference",
    "nms",
    "nms_mask",
    "nms_reference",
    "resize_bilinear",
    "resize_bilinear_reference",
    "roi_align",
    "roi_align_reference",
    "set_debug",
]
