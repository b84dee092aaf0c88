"""The operators Mask R-CNN training spends its time in, backed by harness._C (CPU and CUDA kernels).

Each op's module holds the argument checks, the autograd.Function where it is differentiable, and a
pure-PyTorch reference implementation (the test oracle).
"""

from harness.ops.anchors import anchor_visibility, generate_anchors, generate_anchors_reference
from harness.ops.box_coder import (
    decode_boxes,
    decode_boxes_reference,
    encode_boxes,
    encode_boxes_reference,
)
from harness.ops.mask_targets import mask_targets, mask_targets_reference
from harness.ops.nms import batched_nms, batched_nms_reference, nms, nms_reference
from harness.ops.roi_align import (
    fpn_levels,
    multilevel_roi_align,
    multilevel_roi_align_reference,
    roi_align,
    roi_align_reference,
)
