"""COCO evaluation: results conversion, both scoring backends agree, async scoring matches sync."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from harness.evaluate import AsyncEvaluator, coco_map, gather_results, to_coco_results

CATEGORY_IDS = [3, 7, 12]  # non-contiguous, like COCO's
IMAGE_SIZES = {11: (60, 80), 22: (64, 64), 33: (50, 90), 44: (240, 320)}  # id → (H, W)
# Image 44 holds a medium and a large object (COCO's areas: small < 32², medium < 96² <= large)
# and a crowd region (iscrowd=1, an uncompressed RLE as COCO's crowds are) at (x, y, w, h):
MEDIUM_AND_LARGE = [(20.5, 30.25, 52.0, 40.0), (130.0, 90.5, 170.0, 140.0)]  # a box, a triangle
CROWD_BOX = (30, 150, 80, 60)


def _polygon(x: float, y: float, w: float, h: float, kind: int) -> list[float]:
    """A rectangle, or a triangle inside the same box (kind 1)."""
    if kind == 1:
        return [x, y + h, x + w / 2, y, x + w, y + h]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary [H, W] mask: run lengths in column-major order, starting
    with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _crowd_mask() -> np.ndarray:
    """The crowd region of image 44: an irregular blob inside CROWD_BOX, touching its four sides."""
    height, width = IMAGE_SIZES[44]
    x, y, w, h = CROWD_BOX
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x + 10 : x + w - 10] = 1
    mask[y + 15 : y + h - 15, x : x + w] = 1
    return mask


def _annotation(ann_id: int, image_id: int, box: tuple, kind: int, category: int) -> dict:
    x, y, w, h = box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": [x, y, w, h],
        "area": w * h / (2 if kind else 1),
        "iscrowd": 0,
        "segmentation": [_polygon(x, y, w, h, kind)],
    }


@pytest.fixture
def annotation_file(tmp_path):
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id, (height, width) in IMAGE_SIZES.items():
        images.append(
            {"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"}
        )
        if image_id == 44:
            continue
        for _ in range(3):
            w, h = rng.uniform(12, 30, size=2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            kind = int(rng.integers(0, 2))
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                _annotation(len(annotations) + 1, image_id, (x, y, w, h), kind, category)
            )
    for kind, box in enumerate(MEDIUM_AND_LARGE):
        annotations.append(_annotation(len(annotations) + 1, 44, box, kind, CATEGORY_IDS[kind]))
    crowd = _crowd_mask()
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 44,
            "category_id": CATEGORY_IDS[0],
            "bbox": list(CROWD_BOX),
            "area": int(crowd.sum()),
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(crowd),
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
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=False)):
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


def _all_stats(annotation_file, results: list[dict], iou_type: str, backend: str) -> np.ndarray:
    """COCOeval's 12 summary numbers (AP, AP50, AP75, AP small/medium/large, AR ...) of one
    backend, run directly on the library."""
    if backend == "faster":
        import faster_coco_eval

        coco, cocoeval = faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    else:
        from pycocotools.cocoeval import COCOeval as cocoeval

        coco = COCO
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    subset = [{k: r[k] for k in ("image_id", "category_id", "score", geometry)} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco(str(annotation_file))
        evaluator = cocoeval(gt, gt.loadRes(subset), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=np.float64)


# 20 x 20 inside the crowd region: IoU with it far below 0.5, so it matches the crowd only by the
# crowd rule (intersection over the detection's area).
IN_CROWD = (CROWD_BOX[0] + 25, CROWD_BOX[1] + 20, 20, 20)


def _with_detection(predictions: list[dict], image_ids: list[int], box: tuple, score: float):
    """The predictions with one more detection of class 1 (the crowd's category) on image 44, of
    box (x, y, w, h) and its filled rectangle as mask, first in that image's list."""
    x, y, w, h = box
    mask = np.zeros(IMAGE_SIZES[44], np.uint8)
    mask[y : y + h, x : x + w] = 1
    extra = {
        "boxes": torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
        "scores": torch.tensor([score]),
        "labels": torch.tensor([1]),
        "masks": torch.from_numpy(mask[None]).bool(),
    }
    out = [dict(p) for p in predictions]
    image = image_ids.index(44)
    out[image] = {k: torch.cat([extra[k], v]) for k, v in predictions[image].items()}
    return out


def test_backends_agree_on_imperfect_detections(annotation_file):
    predictions, image_ids = _predictions(annotation_file, jitter=3.0, false_positives=2)
    predictions = _with_detection(predictions, image_ids, IN_CROWD, score=0.9)
    results = to_coco_results(predictions, image_ids, CATEGORY_IDS)
    faster = coco_map(annotation_file, results, backend="faster")
    reference = coco_map(annotation_file, results, backend="pycocotools")
    assert 0.05 < faster["BBOX"] < 0.95 and 0.05 < faster["SEGM"] < 0.95
    assert faster == pytest.approx(reference, abs=1e-6)
    assert coco_map(annotation_file, results, iou_types=("segm",)).keys() == {"SEGM"}
    # Every summary number agrees, the per-size APs included: the fixture has objects of all
    # three COCO sizes (AP small, medium, large are stats[3:6]; -1 would mean none of a size).
    for iou_type in ("bbox", "segm"):
        stats = _all_stats(annotation_file, results, iou_type, "faster")
        np.testing.assert_allclose(
            stats, _all_stats(annotation_file, results, iou_type, "pycocotools"), atol=1e-6
        )
        assert (stats[3:6] > 0).all(), (iou_type, stats[3:6])


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_detection_in_a_crowd_region_is_ignored(annotation_file, backend):
    """A detection that only matches the crowd region is ignored, not counted a false positive,
    even as the image's best-scored detection. The same detection on background is a false
    positive and costs AP: the check can fail."""
    predictions, image_ids = _predictions(annotation_file, jitter=0.0, false_positives=0)
    x, y, w, h = IN_CROWD
    assert _crowd_mask()[y : y + h, x : x + w].all()
    background = (250, 20, 20, 20)  # no object there
    scores = {}
    for where, box in (("crowd", IN_CROWD), ("background", background)):
        with_extra = _with_detection(predictions, image_ids, box, score=1.0)
        results = to_coco_results(with_extra, image_ids, CATEGORY_IDS, legacy_plus_one=False)
        scores[where] = coco_map(annotation_file, results, backend=backend)
    assert scores["crowd"] == pytest.approx({"BBOX": 1.0, "SEGM": 1.0})
    assert scores["background"]["BBOX"] < 0.99 and scores["background"]["SEGM"] < 0.99


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
