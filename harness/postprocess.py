"""Evaluation post-processing: a batch of detections → COCO result dicts, off the training thread.

The straightforward path (`harness.model.roi_heads.paste_masks`, then `evaluate.to_coco_results`)
pastes every mask into a full-size image and RLE-encodes D x H x W pixels per image on the training
process, one image at a time. Here instead:

- one device→host copy per batch: every image's boxes, scores, labels and M x M mask probabilities
  travel as one packed float32 tensor (`ResultEncoder.submit`);
- "virtual paste": each mask is resized only to its own box, as the reference does, and the
  full-image RLE is written from the runs inside the box (`paste_rles`): work grows with the box
  areas, not with D x H x W;
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
from pycocotools import mask as mask_api
from torch import Tensor

from harness import evaluate

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

    Each padded mask is resized bilinearly to its integer box (`box_corners`) by the same
    F.interpolate call as a full paste, thresholded, clipped to the image, and the runs of the
    full image (column-major, COCO's order) are derived from the box's pixels alone.

    masks: Tensor[D, M, M] float probabilities on the CPU; boxes: Tensor[D, 4] (x1, y1, x2, y2) in
    the target image's pixels. Returns D dicts {"size": [height, width], "counts": str}.
    """
    num, m = masks.shape[0], masks.shape[-1]
    if masks.ndim != 3 or boxes.shape != (num, 4):
        raise ValueError(
            f"masks must be [D, M, M] and boxes [D, 4], got {tuple(masks.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    if num == 0:
        return []
    x1, y1, x2, y2 = box_corners(boxes, m).numpy().T
    box_h, box_w = np.maximum(y2 - y1 + 1, 1), np.maximum(x2 - x1 + 1, 1)
    left, top = np.maximum(x1, 0), np.maximum(y1, 0)
    cols = np.maximum(np.minimum(x2 + 1, width) - left, 0)  # the box's columns inside the image
    rows = np.maximum(np.minimum(y2 + 1, height) - top, 0)
    cols[rows == 0] = 0
    rows[cols == 0] = 0
    # Every box's pixels, row by row, each box between a zero row above and one below; `change`
    # marks where a pixel differs from the one above it, i.e. where a run down a column starts or
    # ends.
    stride = cols
    sizes = (rows + 1) * cols
    starts = np.cumsum(sizes) - sizes
    change = np.empty(int(sizes.sum()), dtype=bool)
    planes = F.pad(masks, (1, 1, 1, 1)).view(num, 1, 1, m + 2, m + 2).unbind(0)
    # The op F.interpolate(mode="bilinear") dispatches to, without its per-call argument checks.
    upsample = torch.ops.aten.upsample_bilinear2d.vec
    for i in np.flatnonzero(cols).tolist():
        resized = upsample(planes[i], [int(box_h[i]), int(box_w[i])], False, None)
        inside = resized[0, 0].numpy()[top[i] - y1[i] :, left[i] - x1[i] :][: rows[i], : cols[i]]
        binary = inside > threshold
        block = change[starts[i] : starts[i] + sizes[i]].reshape(rows[i] + 1, cols[i])
        block[0] = binary[0]
        np.not_equal(binary[1:], binary[:-1], out=block[1:-1])
        block[-1] = binary[-1]
    edges = np.flatnonzero(change)
    owner = np.searchsorted(starts, edges, side="right") - 1
    local = edges - starts[owner]
    position = (left[owner] + local % stride[owner]) * height + top[owner] + local // stride[owner]
    # COCO's order: by column, then down it; per column the changes alternate start, end.
    # (A run's end may be height * width, one past the last pixel.)
    span = height * width + 1
    owner, position = np.divmod(np.sort(owner * span + position), span)
    run_start, run_end, run_owner = position[0::2], position[1::2], owner[0::2]
    # A run that ends at the bottom of a full-height column goes on at the next column's top.
    joined = np.zeros(len(run_start), dtype=bool)
    joined[1:] = (run_owner[1:] == run_owner[:-1]) & (run_start[1:] == run_end[:-1])
    run_start, run_owner = run_start[~joined], run_owner[~joined]
    run_end = run_end[np.append(~joined[1:], True)] if len(joined) else run_end
    first = np.ones(len(run_start), dtype=bool)
    first[1:] = run_owner[1:] != run_owner[:-1]
    previous_end = np.zeros_like(run_end)
    previous_end[1:] = run_end[:-1]
    previous_end[first] = 0
    # Per mask: zeros before each run, the run; then the zeros after its last run, if any.
    counts = np.stack([run_start - previous_end, run_end - run_start], axis=1).ravel()
    runs = np.bincount(run_owner, minlength=num)
    last = np.cumsum(runs)
    tail = np.full(num, height * width, dtype=np.int64)
    tail[runs > 0] -= run_end[last[runs > 0] - 1]
    counts = np.insert(counts, 2 * last[tail > 0], tail[tail > 0])
    per_mask = np.split(counts, np.cumsum(2 * runs + (tail > 0))[:-1])
    rles = mask_api.frPyObjects(
        [{"size": [height, width], "counts": c} for c in per_mask], height, width
    )
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


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
