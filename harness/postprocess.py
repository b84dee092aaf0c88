"""Evaluation post-processing: a batch of detections → COCO result dicts, off the training thread.

The straightforward path (`harness.model.roi_heads.paste_masks`, then `evaluate.to_coco_results`)
pastes every mask into a full-size image and RLE-encodes D x H x W pixels per image on the training
process, one image at a time. Here instead:

- one device→host copy per batch: every image's boxes, scores, labels and M x M mask probabilities
  travel as one packed float32 tensor (`ResultEncoder.submit`);
- "virtual paste": each mask is resized only to its own box, as the reference does, and the
  full-image RLE is written from the box's pixels (`paste_rles`, the C++ op
  `harness.ops.mask_rle`, which reproduces ATen's resize arithmetic bit for bit): work grows with
  the box areas, not with D x H x W, and no image or box is ever materialized;
- worker processes do the pasting and encoding while the model evaluates the next batch.

The COCO results are identical, RLE strings included, to `paste_masks` followed by
`evaluate.to_coco_results` (tests/test_postprocess.py compares them on the benchmark's images).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness import evaluate, ops

if TYPE_CHECKING:
    from harness.data.batch import ImageTarget
    from harness.model.roi_heads import Detections


def box_corners(boxes: Tensor, mask_size: int) -> Tensor:
    """The integer box each mask is resized to, as the reference computes it: the box enlarged by
    (M + 2) / M around its centre (the mask gets a one-pixel zero border), cut toward zero.

    boxes: Tensor[D, 4] float (x1, y1, x2, y2) in pixels of the image pasted into.
    Returns Tensor[D, 4] int64 (x1, y1, x2, y2), both ends inclusive.
    """
    scale = (mask_size + 2.0) / mask_size
    center = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    # Truncation toward zero, as the reference's int32 cast.
    return torch.cat([center - half, center + half], dim=1).long()


def paste_rles(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> list[dict]:
    """COCO RLEs of M x M mask probabilities pasted into a (height, width) image, without the image.

    Each mask, with the one-pixel zero border paste_masks adds, is resized bilinearly to its
    integer box (`box_corners`) with ATen's arithmetic, thresholded and clipped to the image, and
    the full image's runs are written from the box's pixels alone (`harness.ops.mask_rle`).

    masks: Tensor[D, M, M] float32 probabilities on the CPU; boxes: Tensor[D, 4] float32 (x1, y1,
    x2, y2) in the target image's pixels. Returns D dicts {"size": [height, width], "counts": str}.
    """
    num = masks.shape[0]
    if masks.ndim != 3 or boxes.shape != (num, 4):
        raise ValueError(
            f"masks must be [D, M, M] and boxes [D, 4], got {tuple(masks.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    if num == 0:
        return []
    planes = F.pad(masks, (1, 1, 1, 1))
    strings = ops.mask_rle(planes, box_corners(boxes, masks.shape[-1]), height, width, threshold)
    size = [int(height), int(width)]
    return [{"size": size.copy(), "counts": counts} for counts in strings]


@dataclass(frozen=True)
class HostBatch:
    """One evaluation batch's detections on the host, as the workers receive them.

    packed: float32 [N, 6 + M*M], one row per detection of all images in order: box (x1, y1, x2, y2)
        in resized-image pixels, score, label, M x M mask probabilities.
    counts: detections per image; image_sizes / orig_sizes: (height, width) after resizing / of the
        image file.
    """

    packed: np.ndarray
    counts: list[int]
    image_ids: list[int]
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    mask_size: int


def encode_batch(
    batch: HostBatch,
    category_ids: Sequence[int],
    threshold: float = 0.5,
    legacy_plus_one: bool = True,
) -> list[dict]:
    """COCO result dicts of a batch: boxes scaled to the original image, masks pasted and encoded.

    Same values as scaling each image's boxes, `paste_masks` at the original size and
    `evaluate.to_coco_results` (see there for the dicts and `legacy_plus_one`)."""
    m = batch.mask_size
    predictions = []
    rows = torch.from_numpy(batch.packed).split(batch.counts)
    for part, (h, w), (oh, ow) in zip(rows, batch.image_sizes, batch.orig_sizes, strict=True):
        boxes = part[:, :4] * part.new_tensor([ow / w, oh / h, ow / w, oh / h])
        masks = part[:, 6:].reshape(-1, m, m)
        predictions.append(
            {
                "boxes": boxes,
                "scores": part[:, 4],
                "labels": part[:, 5].long(),
                "segmentations": paste_rles(masks, boxes, oh, ow, threshold),
            }
        )
    return evaluate.to_coco_results(predictions, batch.image_ids, category_ids, legacy_plus_one)


def default_workers() -> int:
    """Encoding processes per rank: half the CPUs this rank may use (the rest feed the loader and
    the GPU), at least 1 and at most 8."""
    cpus = len(os.sched_getaffinity(0)) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(8, cpus // 2))


def _worker_init() -> None:
    # Each worker encodes one batch on one core; torch's intra-op threads would oversubscribe.
    torch.set_num_threads(1)
    ops.aten_arithmetic()  # the once-per-process check, here rather than in the first batch


_pools: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of `workers` encoders, started once per process and kept for every later
    evaluation (`spawn`: the trainer holds threads, which `fork` would copy in an unknown state)."""
    if workers not in _pools:
        _pools[workers] = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )
    return _pools[workers]


def start_workers(workers: int) -> None:
    """Start the encoding processes now (each imports torch), e.g. during init, off the clock."""
    if workers > 0:
        for future in [_pool(workers).submit(int, 0) for _ in range(workers)]:
            future.result()


class ResultEncoder:
    """Turns an evaluation's batches of detections into COCO result dicts.

    `submit(detections, targets)` after each batch copies the batch to the host in one transfer and
    hands it to a worker process (workers=0: encodes it at once, in this process); `results()`
    waits and returns every image's results in submission order.
    """

    def __init__(
        self,
        category_ids: Sequence[int],
        threshold: float = 0.5,
        legacy_plus_one: bool = True,
        workers: int = 0,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.category_ids = list(category_ids)
        self.threshold = threshold
        self.legacy_plus_one = legacy_plus_one
        self.workers = workers
        self._pending: list[Future | list[dict]] = []

    def submit(self, detections: Sequence[Detections], targets: Sequence[ImageTarget]) -> None:
        """Queue one batch: per image Detections (resized-image pixels, float32) and its target."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} detections for {len(targets)} images")
        if not detections:
            return
        for name in ("boxes", "scores", "masks"):
            dtype = getattr(detections[0], name).dtype
            if dtype != torch.float32:
                raise TypeError(f"detections.{name} must be float32, got {dtype}")
        masks = torch.cat([d.masks for d in detections])
        columns = [
            torch.cat([d.boxes for d in detections]),
            torch.cat([d.scores for d in detections])[:, None],
            torch.cat([d.labels for d in detections])[:, None].float(),
            masks.flatten(1),
        ]
        # The batch's only device→host copy (labels are exact in float32 up to 2**24).
        packed = torch.cat(columns, dim=1).cpu().numpy()
        batch = HostBatch(
            packed,
            [len(d.scores) for d in detections],
            [t.image_id for t in targets],
            [tuple(t.image_size) for t in targets],
            [tuple(t.orig_size) for t in targets],
            masks.shape[-1],
        )
        args = (batch, self.category_ids, self.threshold, self.legacy_plus_one)
        if self.workers == 0:
            self._pending.append(encode_batch(*args))
        else:
            self._pending.append(_pool(self.workers).submit(encode_batch, *args))

    def results(self) -> list[dict]:
        """Every submitted image's COCO result dicts, in submission order; waits for the workers."""
        results: list[dict] = []
        for index, pending in enumerate(self._pending):
            if isinstance(pending, Future):
                try:
                    pending = pending.result()
                except Exception as err:
                    raise RuntimeError(f"encoding evaluation batch {index} failed") from err
            results.extend(pending)
        self._pending.clear()
        return results
