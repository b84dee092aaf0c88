"""Reading image files, one rule for every reader: the PyTorch loader, the DALI loader's diagnosis of
a failed batch and `python -m harness.data.verify`.

- EXIF orientation is ignored: COCO annotations refer to the stored pixels (the reference reads
  images with PIL, which does not rotate them either).
- A file that does not decode (empty, truncated, not an image) is a CorruptImageError naming it.
  It is never skipped: the MLPerf rules (training_rules.adoc, "Data State at Start of Run") fix the
  training set, so a damaged copy must be repaired (scripts/verify_dataset.sh finds it before a run),
  not trained around.
"""

from __future__ import annotations

from pathlib import Path

import torchvision.io
from torch import Tensor

from harness.data.coco import CorruptImageError


def decode(path: str | Path) -> Tensor:
    """The image at `path` as uint8 Tensor[3, H, W] RGB, as stored (EXIF orientation ignored).
    Raises CorruptImageError(path) when it does not decode."""
    try:
        data = torchvision.io.read_file(str(path))
        return torchvision.io.decode_image(
            data, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=False
        )
    except RuntimeError as exc:
        # torchvision's messages start with the C++ function and source line; the reason is last.
        raise CorruptImageError(path, str(exc).split(", ")[-1]) from None


def size_mismatch(
    path: str | Path, got: tuple[int, int], rec_hw: tuple[int, int], ann: Path
) -> str:
    """The error message for an image whose (height, width) `got` is not the annotated `rec_hw`."""
    return f"image {path} is {got[1]}x{got[0]} (WxH) but {ann} says {rec_hw[1]}x{rec_hw[0]}"
