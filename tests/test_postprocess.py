"""Evaluation post-processing: the virtual paste and the batched, parallel encoder give exactly the
COCO results of pasting every mask at full size and encoding it (the path they replace)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from harness.data.transforms import resized_size
from harness.evaluate import to_coco_results
from harness.model.roi_heads import Detections, paste_masks
from harness.postprocess import ResultEncoder, paste_rles

COCO_CATEGORY_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70]
COCO_CATEGORY_IDS += [*range(72, 83), *range(84, 91)]  # the 80 ids of instances_val2017.json
IDENTITY_IMAGES = 8  # the first images of the benchmark's sample (benchmarks/test_eval_bench.py)


def coco_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) of an image shaped like COCO val2017's: the longer side 640, the shorter 480
    or 427 for most, otherwise anywhere in 240..640; about two thirds landscape. An assumption
    (COCO serves images scaled to a 640 longer side), not a measured histogram."""
    short = int(rng.choice([480, 427, 0], p=[0.5, 0.25, 0.25])) or int(rng.integers(240, 641))
    return (short, 640) if rng.random() < 2 / 3 else (640, short)


def coco_like_detections(num_images: int, seed: int = 0, per_image: int = 100, mask_size: int = 28):
    """Model-like evaluation outputs at COCO scale: per image (Detections, target).

    Images of `coco_like_size`, resized as the loader does (800 / 1333); per image `per_image`
    detections in resized-image pixels: object sizes by COCO's published shares (41% small, under
    32^2 pixels of the original image; 34% medium, to 96^2; 24% large, to the whole image), area
    log-uniform within its class, aspect 1/3..3, boxes clipped to the image as the ROI heads clip
    them; descending scores; labels 1..80; and M x M mask probabilities shaped like objects (a
    sigmoid of an ellipse's logit plus smooth noise, so that a thresholded mask has ragged edges).
    The target carries image_id, image_size and orig_size, all the encoder reads."""
    grid = (np.arange(mask_size) + 0.5) / mask_size - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    pairs = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])  # image i is the same in every sample size
        oh, ow = coco_like_size(rng)
        h, w = resized_size(oh, ow, 800, 1333)
        d = per_image
        bounds = np.log([[4.0**2, 32.0**2], [32.0**2, 96.0**2], [96.0**2, oh * ow]])
        low, high = bounds[rng.choice(3, size=d, p=[0.41, 0.35, 0.24])].T
        area = np.exp(rng.uniform(low, high)) * (h / oh) ** 2
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), size=d))
        bw, bh = np.sqrt(area * aspect), np.sqrt(area / aspect)
        cx, cy = rng.uniform(0, w, size=d), rng.uniform(0, h, size=d)
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        boxes = np.minimum(boxes.clip(min=0), [w - 1, h - 1, w - 1, h - 1])
        centre = rng.uniform(-0.15, 0.15, size=(2, d, 1, 1))
        radius = rng.uniform(0.15, 0.45, size=(2, d, 1, 1))
        ellipse = 1 - ((xx - centre[0]) / radius[0]) ** 2 - ((yy - centre[1]) / radius[1]) ** 2
        noise = rng.normal(0, 1, size=(d, mask_size // 4, mask_size // 4))
        noise = np.kron(noise, np.ones((4, 4)))[:, :mask_size, :mask_size]
        logits = 6 * ellipse + 1.5 * noise
        detections = Detections(
            torch.from_numpy(boxes).float(),
            torch.from_numpy(np.sort(rng.uniform(0.05, 1.0, size=d))[::-1].copy()).float(),
            torch.from_numpy(rng.integers(1, 81, size=d)),
            torch.from_numpy(logits).float().sigmoid(),
        )
        target = SimpleNamespace(image_id=100000 + index, image_size=(h, w), orig_size=(oh, ow))
        pairs.append((detections, target))
    return pairs


def paste_and_encode(pairs, category_ids, threshold: float = 0.5) -> list[dict]:
    """The path the encoder replaces (harness.train.run_evaluation before it): per image, scale the
    boxes, paste every mask at the original size, copy to the host; then encode one by one."""
    predictions, image_ids = [], []
    for det, target in pairs:
        (h, w), (oh, ow) = target.image_size, target.orig_size
        boxes = det.boxes * det.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
        masks = paste_masks(det.masks, boxes, oh, ow, threshold)
        predictions.append(
            {"boxes": boxes, "scores": det.scores, "labels": det.labels, "masks": masks}
        )
        image_ids.append(target.image_id)
    return to_coco_results(predictions, image_ids, category_ids, backend="pycocotools")


def encode(pairs, category_ids, workers: int = 0, batch: int = 4) -> list[dict]:
    encoder = ResultEncoder(category_ids, 0.5, workers=workers)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        encoder.submit([d for d, _ in chunk], [t for _, t in chunk])
    return encoder.results()


def _rle(result: dict) -> dict:
    return {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}


def _rle_of_full_paste(masks, boxes, height, width) -> list[str]:
    pasted = paste_masks(masks, boxes, height, width).numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(pasted.transpose(1, 2, 0)))
    return [rle["counts"].decode("ascii") for rle in rles]


def test_encoder_results_identical_on_benchmark_images():
    pairs = coco_like_detections(IDENTITY_IMAGES)
    expected = paste_and_encode(pairs, COCO_CATEGORY_IDS)
    results = encode(pairs, COCO_CATEGORY_IDS)
    assert len(results) == IDENTITY_IMAGES * 100
    # Exact equality of every dict: ids, bbox floats, score, RLE size and counts strings.
    assert results == expected
    # The sample has what the virtual paste must get right: masks clipped at the image's border.
    x, y, w, h = mask_utils.toBbox([_rle(r) for r in results]).T
    height, width = np.array([r["segmentation"]["size"] for r in results]).T
    drawn = w > 0
    assert drawn.mean() > 0.9
    assert ((x == 0) | (y == 0) | (x + w == width) | (y + h == height))[drawn].any()


@pytest.mark.parametrize("size", [(480, 640), (64, 48), (7, 5)])
def test_paste_rles_edge_boxes(size):
    height, width = size
    boxes = torch.tensor(
        [
            [0, 0, width - 1, height - 1],  # the whole image: columns of full height join
            [-50, -50, -10, -10],  # outside: an empty mask
            [width + 5, 0, width + 50, 10],  # outside on the right
            [3, 0, 4, height - 1],  # thin and full height
            [0, 2, width - 1, 3],  # thin and full width
            [1.5, 1.5, 2.2, 2.7],  # under two pixels
            [0, 0, width - 1, height - 1],
            [-width, -height, 2 * width, 2 * height],  # far beyond every border
        ],
        dtype=torch.float32,
    )
    masks = torch.rand(len(boxes), 28, 28, generator=torch.Generator().manual_seed(height))
    masks[7] = 1.0  # all ones beyond the borders: one run over the whole image
    rles = paste_rles(masks, boxes, height, width)
    assert [r["counts"] for r in rles] == _rle_of_full_paste(masks, boxes, height, width)
    assert all(r["size"] == [height, width] for r in rles)
    assert mask_utils.area({"size": [height, width], "counts": rles[1]["counts"].encode()}) == 0
    full = mask_utils.area({"size": [height, width], "counts": rles[7]["counts"].encode()})
    assert full == height * width


def test_paste_rles_threshold_and_empty_input():
    masks = torch.full((1, 28, 28), 0.6)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0]])
    empty = mask_utils.encode(np.zeros((40, 40, 1), dtype=np.uint8, order="F"))[0]
    assert paste_rles(masks, boxes, 40, 40, 0.7)[0]["counts"] == empty["counts"].decode()
    assert paste_rles(masks, boxes, 40, 40, 0.5) != paste_rles(masks, boxes, 40, 40, 0.7)
    assert paste_rles(torch.zeros(0, 28, 28), torch.zeros(0, 4), 10, 10) == []
    with pytest.raises(ValueError, match=r"boxes \[D, 4\]"):
        paste_rles(masks, torch.zeros(2, 4), 40, 40)


def test_worker_processes_match_inline():
    pairs = coco_like_detections(6, seed=3)
    assert encode(pairs, COCO_CATEGORY_IDS, workers=2, batch=2) == encode(pairs, COCO_CATEGORY_IDS)


def test_images_without_detections():
    pairs = coco_like_detections(3, seed=1)
    det, target = pairs[1]
    pairs[1] = (Detections(det.boxes[:0], det.scores[:0], det.labels[:0], det.masks[:0]), target)
    results = encode(pairs, COCO_CATEGORY_IDS, batch=3)
    assert results == paste_and_encode(pairs, COCO_CATEGORY_IDS)
    assert {r["image_id"] for r in results} == {pairs[0][1].image_id, pairs[2][1].image_id}


def test_encoder_rejects_bad_batches():
    (det, target), _ = coco_like_detections(2)
    encoder = ResultEncoder(COCO_CATEGORY_IDS)
    with pytest.raises(ValueError, match="2 detections for 1 images"):
        encoder.submit([det, det], [target])
    half = Detections(det.boxes, det.scores, det.labels, det.masks.half())
    with pytest.raises(TypeError, match=r"detections\.masks must be float32"):
        encoder.submit([half], [target])
    with pytest.raises(ValueError, match="workers"):
        ResultEncoder(COCO_CATEGORY_IDS, workers=-1)
    with pytest.raises(ValueError, match="3 segmentations for 2 detections"):
        to_coco_results(
            [
                {
                    "boxes": det.boxes[:2],
                    "scores": det.scores[:2],
                    "labels": det.labels[:2],
                    "segmentations": [{}] * 3,
                }
            ],
            [1],
            COCO_CATEGORY_IDS,
        )
