"""Mask R-CNN R50-FPN to the MLPerf reference, one module per stage."""

from harness.model.mask_rcnn import MaskRCNN, build_model

__all__ = ["MaskRCNN", "build_model"]
