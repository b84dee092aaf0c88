"""Deep checks of a COCO copy and of the backbone weights, for scripts/verify_dataset.sh.

    python -m harness.data.verify DATADIR [--splits S ...] [--weights FILE] [--sha256 HEX]

- decode SPLIT: every image DATADIR/coco/SPLIT's annotation file lists decodes, at its annotated
  size, with the loaders' own reader (harness.data.images), and the annotations load as training
  loads them (an image listed twice, a malformed box, an unknown category are errors);
- the weights FILE (if given) is a Detectron Caffe2 pickle holding every blob of the ResNet-50
  body the closed configs build, with the right shapes, and with --sha256 has that digest.

Prints "PASSED  ITEM (detail)" or "FAILED  ITEM (detail)" per check, as verify_dataset.sh does,
and exits 1 when one failed. One process for all checks: torch is imported once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.data.coco import CocoDataError, CocoRecord, load_coco
from harness.data.images import decode, size_mismatch

# Bad files listed in the detail line; the count is always given.
_LISTED = 5


def _image_problem(image_dir: Path, rec: CocoRecord, ann_file: Path) -> str | None:
    path = image_dir / rec.file_name
    try:
        image = decode(path)
    except CocoDataError as error:
        return str(error)
    if tuple(image.shape[1:]) != (rec.height, rec.width):
        return size_mismatch(path, tuple(image.shape[1:]), (rec.height, rec.width), ann_file)
    return None


def check_images(root: str | Path, split: str, workers: int) -> tuple[bool, str]:
    """(passed, detail) for every image of `split`."""
    try:
        coco = load_coco(root, split, keep_empty_images=True)
    except CocoDataError as error:
        return False, str(error)
    # torchvision's read_file/decode_image are torch ops, which run without the GIL
    # (torch.ops dispatch releases it): threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [
            p
            for p in pool.map(
                lambda rec: _image_problem(coco.image_dir, rec, coco.annotation_file),
                coco.records,
            )
            if p
        ]
    if problems:
        listed = "; ".join(problems[:_LISTED])
        more = f"; ... ({len(problems) - _LISTED} more)" if len(problems) > _LISTED else ""
        return False, f"{len(problems)} of {len(coco.records)} images are bad: {listed}{more}"
    return True, f"{len(coco.records)} images decode at their annotated sizes"


def check_weights(path: str | Path, sha256: str = "") -> tuple[bool, str]:
    """(passed, detail) for a Caffe2 ResNet-50 weights pickle."""
    from harness.model.backbone import ResNet
    from harness.model.weights import load_backbone_weights

    path = Path(path)
    if not path.is_file():
        return False, f"{path}: not found"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha256 and digest != sha256.lower():
        return False, f"sha256 expected {sha256.lower()}, got {digest}"
    try:
        load_backbone_weights(ResNet(depth=50), path, "caffe2")
    except (ValueError, OSError) as error:
        return False, " ".join(str(error).split())
    checked = "sha256 matches" if sha256 else f"sha256 {digest} (no digest to compare)"
    return True, f"{path.stat().st_size} bytes, every ResNet-50 blob present; {checked}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data.verify", description=__doc__)
    parser.add_argument("datadir")
    parser.add_argument("--splits", nargs="*", default=["train2017", "val2017"])
    parser.add_argument("--weights", default="", help="e.g. DATADIR/R-50.pkl; none: not checked")
    parser.add_argument("--sha256", default="", help="the weights file's expected digest")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    results = [
        (f"decode {split}", *check_images(Path(args.datadir) / "coco", split, max(1, args.workers)))
        for split in args.splits
    ]
    if args.weights:
        results.append((Path(args.weights).name, *check_weights(args.weights, args.sha256)))
    for item, passed, detail in results:
        print(f"{'PASSED' if passed else 'FAILED'}  {item} ({detail})")
    return 0 if all(passed for _, passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
