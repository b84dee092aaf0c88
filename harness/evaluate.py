"""COCO evaluation: model detections → COCO results, AP@[.5:.95] for boxes and masks, and an
asynchronous evaluator that scores in a background process while training goes on.

Scoring uses faster-coco-eval (a C++ reimplementation of the COCO API with identical numbers) when
it is installed and pycocotools otherwise. This module imports neither torch nor a COCO library at
import time, so the scoring process it spawns starts in well under a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

BACKENDS = ("auto", "faster", "pycocotools")
IOU_TYPES = {"bbox": "BBOX", "segm": "SEGM"}


def _coco_api(backend: str) -> SimpleNamespace:
    """COCO, COCOeval and the RLE module of the chosen backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "faster" or (
        backend == "auto" and importlib.util.find_spec("faster_coco_eval") is not None
    ):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
            from faster_coco_eval.core import mask
        except ImportError as err:
            raise ImportError("backend='faster' needs the faster-coco-eval package") from err
        return SimpleNamespace(COCO=COCO, COCOeval=COCOeval_faster, mask=mask)
    from pycocotools import mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return SimpleNamespace(COCO=COCO, COCOeval=COCOeval, mask=mask)


def _encode_masks(masks: np.ndarray, mask_api: Any) -> list[dict]:
    """RLE of binary masks [D, H, W] with `counts` as str (json-serializable)."""
    rles = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_coco_results(
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    legacy_plus_one: bool = True,
    backend: str = "auto",
) -> list[dict]:
    """Convert per-image detections to COCO results (the list a results json holds).

    Args:
        predictions: per image, a mapping with
            boxes: Tensor[D, 4] (x1, y1, x2, y2) in pixels of the ORIGINAL image,
            scores: Tensor[D],
            labels: Tensor[D] int, contiguous classes 1..C (0 is background),
            masks (optional): Tensor[D, H, W] uint8/bool, 1 inside the object, already pasted at the
                original image size H×W,
            segmentations (optional, instead of masks): D COCO RLEs {"size", "counts": str}, as
                `postprocess.paste_rles` writes them without pasting.
        image_ids: COCO image id of each prediction.
        category_ids: COCO category id of each contiguous class: label l → category_ids[l - 1].
        legacy_plus_one: the reference (Detectron) boxes count pixels inclusively, so a box's width
            is x2 - x1 + 1; False gives x2 - x1.
        backend: which COCO library encodes the masks (see `coco_map`).

    Returns:
        One dict per detection: image_id, category_id, bbox [x, y, w, h], score, and with masks a
        segmentation RLE {"size": [H, W], "counts": str}.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(
            f"predictions has {len(predictions)} images but image_ids has {len(image_ids)}"
        )
    offset = 1.0 if legacy_plus_one else 0.0
    categories = np.asarray(category_ids, dtype=np.int64)
    mask_api = None
    results: list[dict] = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        for key in ("boxes", "scores", "labels"):
            if key not in prediction:
                raise KeyError(f"prediction for image {image_id} lacks '{key}'")
        boxes = prediction["boxes"].detach().float().cpu().numpy().astype(np.float64)
        scores = prediction["scores"].detach().float().cpu().numpy().tolist()
        labels = prediction["labels"].detach().cpu().numpy().astype(np.int64)
        num = len(labels)
        if boxes.shape != (num, 4) or len(scores) != num:
            raise ValueError(
                f"image {image_id}: boxes {tuple(boxes.shape)}, scores {len(scores)} and labels "
                f"{num} do not describe the same D detections (boxes must be [D, 4])"
            )
        if num and (labels.min() < 1 or labels.max() > len(categories)):
            raise ValueError(
                f"image {image_id}: labels must lie in 1..{len(categories)}, got "
                f"{labels.min()}..{labels.max()}"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + offset], axis=1)
        rles: list[dict | None] = [None] * num
        if "segmentations" in prediction:
            rles = list(prediction["segmentations"])
            if len(rles) != num:
                raise ValueError(
                    f"image {image_id}: {len(rles)} segmentations for {num} detections"
                )
        elif "masks" in prediction and num:
            masks = prediction["masks"].detach().cpu().numpy()
            if masks.ndim != 3 or len(masks) != num:
                raise ValueError(
                    f"image {image_id}: masks must be [D, H, W] with D={num}, got {masks.shape}"
                )
            mask_api = mask_api or _coco_api(backend).mask
            rles = _encode_masks(masks, mask_api)
        for k in range(num):
            result = {
                "image_id": int(image_id),
                "category_id": int(categories[labels[k] - 1]),
                "bbox": xywh[k].tolist(),
                "score": float(scores[k]),
            }
            if rles[k] is not None:
                result["segmentation"] = rles[k]
            results.append(result)
    return results


def _score(gt: Any, api: SimpleNamespace, results: list[dict], iou_types: Sequence[str]):
    """AP@[.5:.95] per iou type on a loaded ground truth; the COCO library's prints are silenced."""
    scores: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_types: expected 'bbox' or 'segm', got {iou_type!r}")
        geometry = "bbox" if iou_type == "bbox" else "segmentation"
        if results and geometry not in results[0]:
            raise KeyError(f"iou type '{iou_type}' needs results with a '{geometry}' field")
        # Fresh dicts with only this type's geometry: loadRes mutates them, and a bbox next to a
        # segmentation would make it compute the mask's area from the box.
        subset = [
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "score": r["score"],
                geometry: r[geometry],
            }
            for r in results
        ]
        if not subset:
            scores[IOU_TYPES[iou_type]] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = api.COCOeval(gt, gt.loadRes(subset), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        scores[IOU_TYPES[iou_type]] = max(float(evaluator.stats[0]), 0.0)
    return scores


def _load_ground_truth(annotation_file: str | Path, backend: str) -> tuple[Any, SimpleNamespace]:
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    api = _coco_api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = api.COCO(str(path))
    return gt, api


def coco_map(
    annotation_file: str | Path,
    results: list[dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
    backend: str = "auto",
) -> dict[str, float]:
    """COCO AP@[.5:.95] of `results` (from `to_coco_results`) against an instances json.

    Every image of the annotation file is scored: images without results count as misses.

    Returns:
        {"BBOX": box AP, "SEGM": mask AP} (keys of the requested iou_types), fractions in [0, 1];
        0.0 for empty results (and where the COCO API reports -1: nothing to score).
    """
    gt, api = _load_ground_truth(annotation_file, backend)
    return _score(gt, api, results, iou_types)


_worker: dict[str, Any] = {}


def _worker_init(annotation_file: str, backend: str) -> None:
    """Load the ground truth once per scoring process."""
    _worker["gt"], _worker["api"] = _load_ground_truth(annotation_file, backend)


def _worker_score(results: list[dict], iou_types: tuple[str, ...]) -> dict[str, float]:
    return _score(_worker["gt"], _worker["api"], results, iou_types)


class AsyncEvaluator:
    """Scores COCO results in one background process so training continues during scoring.

    The process is started with `spawn` (the trainer holds threads, which `fork` would copy in an
    unknown state) and loads the ground truth once. Results travel as plain python lists.

    Usage: `submit(epoch, results)` after each evaluation pass; `poll()` each iteration returns the
    scores that are ready; `wait_all()` at the end; `close()` (or a `with` block) stops the process.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        backend: str = "auto",
        iou_types: Sequence[str] = ("bbox", "segm"),
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not Path(annotation_file).is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
        self.iou_types = tuple(iou_types)
        self._pending: list[tuple[int, Future]] = []
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(str(annotation_file), backend),
        )

    def submit(self, epoch: int, results: list[dict]) -> None:
        """Queue `results` of evaluation `epoch` for scoring; returns at once."""
        if not isinstance(results, list):
            raise TypeError(f"results must be a list of COCO result dicts, got {type(results)}")
        self._pending.append((epoch, self._pool.submit(_worker_score, results, self.iou_types)))

    @property
    def pending(self) -> int:
        """Submitted evaluations whose scores have not been returned yet."""
        return len(self._pending)

    def _take(self, block: bool) -> list[tuple[int, dict[str, float]]]:
        done = []
        while self._pending and (block or self._pending[0][1].done()):
            epoch, future = self._pending.pop(0)
            try:
                done.append((epoch, future.result()))
            except Exception as err:
                raise RuntimeError(f"scoring the evaluation of epoch {epoch} failed") from err
        return done

    def poll(self) -> list[tuple[int, dict[str, float]]]:
        """Scores finished since the last call, as (epoch, {"BBOX", "SEGM"}) in submission order."""
        return self._take(block=False)

    def wait_all(self) -> list[tuple[int, dict[str, float]]]:
        """Block until every submitted evaluation is scored and return those not yet returned."""
        return self._take(block=True)

    def close(self) -> None:
        """Stop the scoring process, dropping evaluations not yet scored."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def __enter__(self) -> AsyncEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gather_results(local: list[dict]) -> list[dict]:
    """Collect every rank's COCO results on rank 0 (other ranks get []).

    A distributed sampler pads the evaluation set by repeating images on some ranks; scoring an
    image's detections twice would lower precision, so each image is taken from the first rank that
    evaluated it. Identity when torch.distributed is not initialized.
    """
    # Imported here so that the scoring process, which also imports this module, never loads torch.
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(local)
    rank = dist.get_rank()
    gathered: list[list[dict]] | None = [[] for _ in range(dist.get_world_size())]
    dist.gather_object(local, gathered if rank == 0 else None, dst=0)
    if rank != 0:
        return []
    merged: list[dict] = []
    seen: set[int] = set()
    for rank_results in gathered:
        images = {r["image_id"] for r in rank_results}
        merged.extend(r for r in rank_results if r["image_id"] not in seen)
        seen |= images
    return merged
