"""COCO annotations: parsing, validation and the filtering both loaders share.

Box convention (the MLPerf reference's, maskrcnn-benchmark's "legacy" +1 widths): a COCO box
[x, y, w, h] becomes (x1, y1, x2, y2) = (x, y, x + w - 1, y + h - 1), clipped to [0, W - 1] x [0, H - 1].

What is dropped, counted in `CocoSet.skipped` and logged (never an error):
- crowd annotations (`iscrowd` = 1: RLE regions, not instances);
- polygons with fewer than 3 points or an odd number of coordinates, then objects left with no polygon
  (also non-crowd objects whose segmentation is not a polygon list);
- objects whose clipped box is empty (x2 <= x1 or y2 <= y1), as the reference's `clip_to_image`;
- in training only, images left with no object (the reference's `remove_images_without_annotations`).
What is an error (CocoDataError naming the file and the annotation): a missing file or directory,
unparsable JSON, missing top-level keys, an annotation whose image or category is not listed, a listed
image whose file is missing, an image listed twice (the same id, or the same file under two ids: the
MLPerf rules want each datum exactly once per epoch), a bbox that is not four finite numbers.
`check_num_classes` compares the categories with the model's classes.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class CocoDataError(ValueError):
    """A COCO directory or annotation file that cannot be used as it is."""


class CorruptImageError(CocoDataError):
    """An image file that does not decode (truncated, empty, not an image). `path` names it; the
    message is one line. The training loop can catch it to stop cleanly: the MLPerf rules forbid
    changing the training set, so a corrupt image is never skipped."""

    def __init__(self, path: str | Path, reason: str = "does not decode") -> None:
        self.path, self.reason = str(path), " ".join(reason.split())
        super().__init__(f"corrupt image {self.path}: {self.reason}")

    def __reduce__(self):  # picklable with its fields (DataLoader workers, DDP)
        return type(self), (self.path, self.reason)


@dataclass
class CocoRecord:
    """One image and its usable objects.

    boxes:        float32 [N, 4] (x1, y1, x2, y2), original-image pixels, +1 convention (see module)
    category_ids: int64 [N] COCO category ids
    polygons:     per object, a list of flat float32 [2K] arrays (x0, y0, x1, y1, ...), K >= 3
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    category_ids: np.ndarray
    polygons: list[list[np.ndarray]]
    annotation_ids: list[int]


@dataclass
class CocoSet:
    """The usable part of one split: records ordered by image id."""

    annotation_file: Path
    image_dir: Path
    category_ids: list[int]
    records: list[CocoRecord]
    skipped: Counter = field(default_factory=Counter)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CocoDataError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoDataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise CocoDataError(f"{path}: top level must be an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise CocoDataError(f"{path}: missing or malformed top-level key '{key}'")
    return doc


def category_ids(annotation_file: str | Path) -> list[int]:
    """Sorted COCO category ids: index i - 1 is the COCO id of contiguous label i (0 = background)."""
    doc = _read_json(Path(annotation_file))
    return sorted(int(c["id"]) for c in doc["categories"])


def _clean_polygons(segmentation: object) -> list[np.ndarray] | None:
    """Valid polygons of a non-crowd object, or None when its segmentation is not a polygon list."""
    if not isinstance(segmentation, list):
        return None
    return [
        np.asarray(p, dtype=np.float32)
        for p in segmentation
        if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
    ]


def check_num_classes(coco: CocoSet, num_classes: int) -> None:
    """Raise CocoDataError unless the dataset has num_classes - 1 categories (+ background)."""
    if len(coco.category_ids) + 1 != num_classes:
        raise CocoDataError(
            f"{coco.annotation_file}: {len(coco.category_ids)} categories + background = "
            f"{len(coco.category_ids) + 1} classes, but model.num_classes={num_classes}"
        )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _clipped_box(bbox: list, width: int, height: int) -> np.ndarray | None:
    """(x1, y1, x2, y2) with the +1 convention clipped to the image, None when empty."""
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([x, y, x + w - 1, y + h - 1], dtype=np.float32)
    box[0::2] = box[0::2].clip(0, width - 1)
    box[1::2] = box[1::2].clip(0, height - 1)
    if not (box[2] > box[0] and box[3] > box[1]):
        return None
    return box


def load_coco(root: str | Path, split: str, *, keep_empty_images: bool) -> CocoSet:
    """Parse and validate `root/annotations/instances_{split}.json` against `root/{split}/`.

    keep_empty_images: False for training (images with no usable object are dropped, as the
    reference does), True for evaluation (every listed image is kept).
    """
    root = Path(root)
    if not root.is_dir():
        raise CocoDataError(f"dataset directory not found: {root}")
    image_dir = root / split
    if not image_dir.is_dir():
        raise CocoDataError(f"image directory not found: {image_dir}")
    ann_file = root / "annotations" / f"instances_{split}.json"
    doc = _read_json(ann_file)
    cats = sorted(int(c["id"]) for c in doc["categories"])
    known_cats = set(cats)
    on_disk = set(os.listdir(image_dir))

    images: dict[int, dict] = {}
    id_of_file: dict[str, int] = {}
    for img in doc["images"]:
        try:
            image_id, name = int(img["id"]), str(img["file_name"])
            height, width = int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CocoDataError(f"{ann_file}: malformed image entry {img!r} ({exc})") from exc
        if name not in on_disk:
            raise CocoDataError(f"{ann_file}: image {image_id} file not found: {image_dir / name}")
        if image_id in images:
            raise CocoDataError(f"{ann_file}: image id {image_id} is listed twice")
        if name in id_of_file:
            raise CocoDataError(
                f"{ann_file}: file {name} is listed twice, as images {id_of_file[name]} and "
                f"{image_id}"
            )
        id_of_file[name] = image_id
        images[image_id] = {"file_name": name, "height": height, "width": width, "anns": []}

    skipped: Counter = Counter()
    for ann in doc["annotations"]:
        ann_id = ann.get("id")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise CocoDataError(
                f"{ann_file}: annotation {ann_id} points at image {ann.get('image_id')!r}, "
                "which is not listed in 'images'"
            )
        if ann.get("category_id") not in known_cats:
            raise CocoDataError(
                f"{ann_file}: annotation {ann_id} has unknown category {ann.get('category_id')!r}"
            )
        if ann.get("iscrowd", 0):
            skipped["crowd annotations"] += 1
            continue
        polys = _clean_polygons(ann.get("segmentation"))
        if polys is None:
            skipped["objects whose segmentation is not a polygon list"] += 1
            continue
        dropped = (
            len(ann["segmentation"]) - len(polys) if isinstance(ann["segmentation"], list) else 0
        )
        skipped["polygons with fewer than 3 points"] += dropped
        if not polys:
            skipped["objects with no valid polygon"] += 1
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise CocoDataError(
                f"{ann_file}: annotation {ann_id} (image {ann['image_id']}): bbox must be four "
                f"finite numbers [x, y, w, h], got {bbox!r:.80}"
            )
        box = _clipped_box(bbox, image["width"], image["height"])
        if box is None:
            skipped["objects with an empty box"] += 1
            continue
        image["anns"].append((int(ann_id), box, int(ann["category_id"]), polys))

    records = []
    for image_id in sorted(images):
        image = images[image_id]
        anns = image["anns"]
        if not anns and not keep_empty_images:
            skipped["images without usable annotations"] += 1
            continue
        records.append(
            CocoRecord(
                image_id=image_id,
                file_name=image["file_name"],
                height=image["height"],
                width=image["width"],
                boxes=np.stack([a[1] for a in anns]) if anns else np.zeros((0, 4), np.float32),
                category_ids=np.array([a[2] for a in anns], dtype=np.int64),
                polygons=[a[3] for a in anns],
                annotation_ids=[a[0] for a in anns],
            )
        )
    skipped = Counter({k: v for k, v in skipped.items() if v})
    if skipped:
        log.warning("%s: skipped %s", ann_file, ", ".join(f"{v} {k}" for k, v in skipped.items()))
    return CocoSet(ann_file, image_dir, cats, records, skipped)
