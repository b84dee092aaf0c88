"""The operators Mask R-CNN training spends its time in, backed by harness._C (CPU and CUDA kernels).

Each op's module holds the argument checks, the autograd.Function where it is differentiable, and a
pure-PyTorch reference implementation (the test oracle).
"""

from harness.ops.mask_targets import mask_targets, mask_targets_reference
from harness.ops.roi_align import (
    fpn_levels,
    multilevel_roi_align,
    multilevel_roi_align_reference,
    roi_align,
    roi_align_reference,
)
