"""MLPerf Mask R-CNN (ResNet-50-FPN) training harness."""

__version__ = "0.1.0"
