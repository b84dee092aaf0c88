"""COCO evaluation: results conversion, both scoring backends agree, async scoring matches sync."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from harness.evaluate import AsyncEvaluator, coco_map, gather_results, to_coco_results

CATEGORY_IDS = [3, 7, 12]  # non-contiguous, like COCO's
IMAGE_SIZES = {11: (60, 80), 22: (64, 64), 33: (50, 90)}  # id → (H, W)


def _polygon(x: float, y: float, w: float, h: float, kind: int) -> list[float]:
    """A rectangle, or a triangle inside the same box (kind 1)."""
    if kind == 1:
        return [x, y + h, x + w / 2, y, x + w, y + h]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture
def annotation_file(tmp_path):
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id, (height, width) in IMAGE_SIZES.items():
        images.append(
            {"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"}
        )
        for _ in range(3):
            w, h = rng.uniform(12, 30, size=2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            kind = int(rng.integers(0, 2))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [x, y, w, h],
                    "area": w * h / (2 if kind else 1),
                    "iscrowd": 0,
                    "segmentation": [_polygon(x, y, w, h, kind)],
                }
            )
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def _predictions(annotation_file, jitter: float, false_positives: int, seed: int = 0):
    """Per image: the ground truth as detections (label = contiguous class), boxes moved by up to
    `jitter` pixels, masks shifted by the same rounded offset, plus random false positives."""
    gt = COCO(str(annotation_file))
    rng = np.random.default_rng(seed)
    predictions, image_ids = [], []
    for image_id, (height, width) in IMAGE_SIZES.items():
        boxes, labels, masks = [], [], []
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])):
            dx, dy = rng.uniform(-jitter, jitter, size=2)
            x, y, w, h = ann["bbox"]
            boxes.append([x + dx, y + dy, x + w + dx, y + h + dy])
            labels.append(CATEGORY_IDS.index(ann["category_id"]) + 1)
            masks.append(np.roll(gt.annToMask(ann), (round(dy), round(dx)), axis=(0, 1)))
        for _ in range(false_positives):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            boxes.append([x, y, x + 15, y + 15])
            labels.append(int(rng.integers(1, len(CATEGORY_IDS) + 1)))
            fp_mask = np.zeros((height, width), np.uint8)
            fp_mask[int(y) : int(y) + 15, int(x) : int(x) + 15] = 1
            masks.append(fp_mask)
        num = len(boxes)
        predictions.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.from_numpy(rng.uniform(0.05, 1.0, size=num)).float(),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks)).bool(),
            }
        )
        image_ids.append(image_id)
    return predictions, image_ids


def test_to_coco_results_fields(annotation_file):
    predictions, image_ids = _predictions(annotation_file, jitter=0.0, false_positives=1)
    results = to_coco_results(predictions, image_ids, CATEGORY_IDS)
    assert len(results) == sum(len(p["labels"]) for p in predictions)
    json.dumps(results)  # a results file must be writable as json
    first, pred = results[0], predictions[0]
    assert first["image_id"] == image_ids[0]
    assert first["category_id"] == CATEGORY_IDS[int(pred["labels"][0]) - 1]
    x1, y1, x2, y2 = pred["boxes"][0].tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1 + 1, y2 - y1 + 1], abs=1e-3)
    assert first["score"] == pytest.approx(float(pred["scores"][0]))
    assert isinstance(first["segmentation"]["counts"], str)
    assert first["segmentation"]["size"] == list(IMAGE_SIZES[image_ids[0]])
    decoded = mask_utils.decode(
        {**first["segmentation"], "counts": first["segmentation"]["counts"].encode()}
    )
    np.testing.assert_array_equal(decoded, pred["masks"][0].numpy().astype(np.uint8))
    exclusive = to_coco_results(predictions[:1], image_ids[:1], CATEGORY_IDS, legacy_plus_one=False)
    assert exclusive[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_perfect_detections_score_one(annotation_file, backend):
    predictions, image_ids = _predictions(annotation_file, jitter=0.0, false_positives=0)
    results = to_coco_results(predictions, image_ids, CATEGORY_IDS, legacy_plus_one=False)
    assert coco_map(annotation_file, results, backend=backend) == pytest.approx(
        {"BBOX": 1.0, "SEGM": 1.0}
    )


def test_backends_agree_on_imperfect_detections(annotation_file):
    predictions, image_ids = _predictions(annotation_file, jitter=3.0, false_positives=2)
    results = to_coco_results(predictions, image_ids, CATEGORY_IDS)
    faster = coco_map(annotation_file, results, backend="faster")
    reference = coco_map(annotation_file, results, backend="pycocotools")
    assert 0.05 < faster["BBOX"] < 0.95 and 0.05 < faster["SEGM"] < 0.95
    assert faster == pytest.approx(reference, abs=1e-6)
    assert coco_map(annotation_file, results, iou_types=("segm",)).keys() == {"SEGM"}


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_empty_results_score_zero(annotation_file, backend):
    assert coco_map(annotation_file, [], backend=backend) == {"BBOX": 0.0, "SEGM": 0.0}


def test_async_matches_sync(annotation_file):
    good, image_ids = _predictions(annotation_file, jitter=1.0, false_positives=1)
    bad, _ = _predictions(annotation_file, jitter=4.0, false_positives=3, seed=5)
    runs = {
        1: to_coco_results(good, image_ids, CATEGORY_IDS),
        2: to_coco_results(bad, image_ids, CATEGORY_IDS),
    }
    with AsyncEvaluator(annotation_file) as evaluator:
        for epoch, results in runs.items():
            evaluator.submit(epoch, results)
        assert evaluator.pending == 2
        scored = evaluator.poll() + evaluator.wait_all()
        assert evaluator.pending == 0 and evaluator.poll() == []
    assert [epoch for epoch, _ in scored] == [1, 2]
    for epoch, scores in scored:
        assert scores == pytest.approx(coco_map(annotation_file, runs[epoch]), abs=1e-12)
    assert scored[0][1]["BBOX"] > scored[1][1]["BBOX"]


def test_bad_inputs(annotation_file, tmp_path):
    predictions, image_ids = _predictions(annotation_file, jitter=0.0, false_positives=0)
    with pytest.raises(ValueError, match="image_ids"):
        to_coco_results(predictions, image_ids[:1], CATEGORY_IDS)
    wrong_label = [{**predictions[0], "labels": predictions[0]["labels"] * 0 + 4}]
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.3"):
        to_coco_results(wrong_label, image_ids[:1], CATEGORY_IDS)
    with pytest.raises(KeyError, match="scores"):
        to_coco_results(
            [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [11], CATEGORY_IDS
        )
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        coco_map(tmp_path / "missing.json", [])
    with pytest.raises(ValueError, match="backend"):
        coco_map(annotation_file, [], backend="detectron")
    boxes_only = to_coco_results(
        [{k: v for k, v in predictions[0].items() if k != "masks"}], [11], CATEGORY_IDS
    )
    with pytest.raises(KeyError, match="segmentation"):
        coco_map(annotation_file, boxes_only)


def test_gather_results_is_identity_without_process_group():
    local = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    assert gather_results(local) == local
