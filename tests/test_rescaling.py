"""Detections go back to the original image size before scoring (harness.train.run_evaluation).

Every other evaluating test uses square images already at the training size, where a missing or
h/w-swapped rescaling would not show. Here a stub model answers with the ground truth in RESIZED
pixels (the boxes and labels the val loader hands it, and full masks over each box) on non-square
images that really are resized, up and down; scored against the original annotations, box and
mask mAP must be 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import config, evaluate
from harness.data import build_val_loader, category_ids
from harness.data.batch import ImageTarget
from harness.data.transforms import resized_size
from harness.model.roi_heads import Detections
from harness.model.weights import normalization_for
from harness.train import run_evaluation

MIN_SIZE, MAX_SIZE = 80, 120
# (width, height) of each image file, and its objects as (category id, x, y, w, h) rectangles.
IMAGES = {
    1: ((200, 130), [(3, 10, 20, 90, 60), (7, 120, 60, 60, 55)]),  # landscape, scaled down by 0.6
    2: ((90, 150), [(7, 5, 10, 45, 80), (3, 40, 95, 48, 50)]),  # portrait, 0.8
    3: ((50, 60), [(3, 2, 4, 46, 54)]),  # scaled up by 1.6
    4: ((201, 131), [(7, 30, 15, 150, 100)]),  # 119 x 78: x and y scale differ by rounding
}
# Non-contiguous category ids: the stub answers with contiguous labels, mapped back on scoring.
CATEGORIES = (3, 7)


def _write_set(root: Path) -> Path:
    images, annotations = [], []
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for image_id, ((width, height), objects) in IMAGES.items():
        name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2017" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category, x, y, w, h in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "s"} for c in CATEGORIES],
    }
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(doc))
    return path


class GroundTruthModel(torch.nn.Module):
    """Answers each image with its ground truth as the loader resized it: boxes and labels of the
    target, score 1, and a mask that fills the box (the objects are rectangles)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ImageTarget] = []

    def forward(self, images: torch.Tensor, targets: list[ImageTarget]) -> list[Detections]:
        self.seen.extend(targets)
        return [
            Detections(
                boxes=t.boxes.clone(),
                scores=torch.ones(len(t.labels)),
                labels=t.labels.clone(),
                masks=torch.ones(len(t.labels), 28, 28),
            )
            for t in targets
        ]


@pytest.mark.parametrize("loader", ["pytorch", "dali"])
def test_detections_are_rescaled_to_the_original_image(tmp_path, loader):
    ann_file = _write_set(tmp_path)
    cfg = config.load(
        None,
        [
            "model.num_classes=3",
            f"data.root={tmp_path}",
            f"data.min_size={MIN_SIZE}",
            f"data.max_size={MAX_SIZE}",
            f"data.loader={loader}",
            "data.decode_device=cpu",
            "data.num_workers=0",
            "run.precision=fp32",
        ],
    )
    val_loader = build_val_loader(cfg, normalization_for(cfg.model), rank=0, world_size=1)
    model = GroundTruthModel()
    results = run_evaluation(model, val_loader, torch.device("cpu"), cfg, category_ids(ann_file))

    # The images really were resized, to sizes that keep each one's aspect ratio.
    sizes = {t.image_id: (t.orig_size, t.image_size) for t in model.seen}
    assert sorted(sizes) == sorted(IMAGES)
    for image_id, ((width, height), _) in IMAGES.items():
        expected = resized_size(height, width, MIN_SIZE, MAX_SIZE)
        assert sizes[image_id] == ((height, width), expected)
        assert expected != (height, width)
    # Each box comes back where it was annotated, to float precision: image 4's x and y scales
    # differ by 0.5%, so even swapping the two factors moves its box by ~0.7 px.
    expected_boxes = {
        (image_id, category): [x, y, w, h]
        for image_id, (_, objects) in IMAGES.items()
        for category, x, y, w, h in objects
    }
    assert len(results) == len(expected_boxes)
    for r in results:
        (width, height), _ = IMAGES[r["image_id"]]
        expected = expected_boxes[r["image_id"], r["category_id"]]
        assert r["bbox"] == pytest.approx(expected, abs=1e-3), (r["image_id"], r["category_id"])
        assert r["segmentation"]["size"] == [height, width]

    scores = evaluate.coco_map(ann_file, results)
    # Exactly 1, masks included: pasting a full 28 x 28 mask the reference's way (padded by one
    # cell, box enlarged by 30/28, truncated to integers) covers the GT rectangle plus at most one
    # pixel row/column per side, so every mask IoU is >= 0.959 here (objects >= 45 px a side),
    # above COCO's highest threshold (0.95). A rescaling ~2% off already drops AP at 0.95.
    assert scores == {"BBOX": pytest.approx(1.0), "SEGM": pytest.approx(1.0)}
