"""Iterators from the DALI pipeline to harness batches (train: grouped, endless; val: exactly once)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dali_pipeline.pipeline import READER, coco_pipeline
from harness.data.batch import Batch, ImageTarget, Normalization
from harness.data.coco import CocoDataError, CocoSet, write_clean_annotations
from harness.data.sampler import (
    AspectGrouper,
    batches_consumed,
    iterations_per_epoch,
    shard_range,
)
from harness.data.transforms import make_target, pad_batch, resized_size


@dataclass(frozen=True)
class DaliSettings:
    """What the pipeline needs besides the dataset (see dali_pipeline.pipeline.coco_pipeline)."""

    min_size: int
    max_size: int
    size_divisibility: int
    flip_prob: float
    num_threads: int
    decode_device: str  # cpu | mixed
    device_id: int | None
    norm: Normalization


def _to_torch(tensor) -> Tensor:
    """One DALI sample as a torch tensor on the same device, without a copy. Safe to keep: under the
    dynamic executor (coco_pipeline sets it) DALI never reuses an output buffer that is still
    referenced (TensorGPU.__dlpack__'s documentation), and the DLPack capsule holds that reference.
    On the GPU the capsule also makes torch's current stream wait for DALI's."""
    return torch.from_dlpack(tensor)


def _incomplete_jpegs(image_dir: Path, names: list[str], limit: int = 10) -> list[str]:
    """Up to `limit` of the named .jpg files that lack the JPEG start marker or an end marker near
    their end (truncated or not a JPEG); reads 2 bytes + the last 1 KiB of each."""
    suspects = []
    for name in names:
        if not name.lower().endswith((".jpg", ".jpeg")):
            continue
        with open(image_dir / name, "rb") as f:
            head = f.read(2)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
            tail = f.read()
        if head != b"\xff\xd8" or b"\xff\xd9" not in tail:
            suspects.append(str(image_dir / name))
            if len(suspects) == limit:
                break
    return suspects


class _Stream:
    """Decoded samples of one pipeline, one at a time: (image float32 [3, h, w], ImageTarget)."""

    def __init__(
        self, coco: CocoSet, annotation_file: Path, settings: DaliSettings, **pipeline_args
    ) -> None:
        self.settings = settings
        self.label_of = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}
        self.image_dir = coco.image_dir
        self.records = {r.image_id: r for r in coco.records}
        self.pipe = coco_pipeline(
            image_dir=str(coco.image_dir),
            annotation_file=str(annotation_file),
            num_threads=settings.num_threads,
            decode_device=settings.decode_device,
            device_id=settings.device_id,
            min_size=settings.min_size,
            max_size=settings.max_size,
            norm=settings.norm,
            **pipeline_args,
        )
        size = self.pipe.reader_meta(READER)["epoch_size"]
        if size != len(coco.records):
            raise CocoDataError(
                f"DALI's COCO reader sees {size} images in {coco.annotation_file}, "
                f"the annotation parser {len(coco.records)}"
            )

    def _run(self) -> tuple:
        try:
            return self.pipe.run()
        except RuntimeError as exc:
            # DALI names the failing sample only by its index in the batch: look for the culprit.
            suspects = _incomplete_jpegs(
                self.image_dir, [r.file_name for r in self.records.values()]
            )
            hint = f"; files that are not complete JPEGs: {', '.join(suspects)}" if suspects else ""
            raise CocoDataError(f"DALI pipeline over {self.image_dir} failed{hint}: {exc}") from exc

    def __iter__(self) -> Iterator[tuple[Tensor, ImageTarget]]:
        s = self.settings
        while True:
            images, boxes, cats, polys, verts, ids, shapes, flips = self._run()
            for i in range(len(images)):
                image = _to_torch(images[i])
                orig_h, orig_w = (int(v) for v in np.asarray(shapes[i])[:2])
                size = (int(image.shape[1]), int(image.shape[2]))
                image_id = int(np.asarray(ids[i]).reshape(-1)[0])
                rec = self.records[image_id]
                if (orig_h, orig_w) != (rec.height, rec.width):
                    raise CocoDataError(
                        f"image {self.image_dir / rec.file_name} is {orig_w}x{orig_h} (WxH) but its "
                        f"annotation file says {rec.width}x{rec.height}"
                    )
                if size != resized_size(orig_h, orig_w, s.min_size, s.max_size):
                    raise AssertionError(f"image {image_id}: DALI resized to {size}")
                # The reader's right/bottom edges are x + w; the harness convention is x + w - 1.
                ltrb = np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4) - np.float32(
                    [0, 0, 1, 1]
                )
                if len(ltrb) != len(rec.boxes):
                    raise CocoDataError(
                        f"image {image_id}: DALI's COCO reader returned {len(ltrb)} objects, the "
                        f"annotation parser kept {len(rec.boxes)}"
                    )
                target = make_target(
                    ltrb,
                    np.asarray(cats[i]).reshape(-1),
                    np.asarray(polys[i]),
                    np.asarray(verts[i]),
                    self.label_of,
                    image_id,
                    (orig_h, orig_w),
                    size,
                    bool(np.asarray(flips[i])),
                )
                yield image, target


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


class DaliTrainLoader:
    """Training batches of one rank: `len()` batches per epoch, aspect-ratio grouped;
    num_samples: usable training images over all ranks.

    The reader reshuffles the whole set every epoch (the same order on every rank). Its pipeline is
    built on first use, seeded from (seed, epoch of that use); set_epoch to another epoch than the
    next one, or with start > 0, rebuilds it seeded from (seed, that epoch), so a resumed run is
    deterministic too, though it does not replay the order of an uninterrupted one.
    """

    def __init__(
        self,
        coco: CocoSet,
        settings: DaliSettings,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        grouping: bool,
    ) -> None:
        shard_range(len(coco.records), rank, world_size)
        self.coco, self.settings = coco, settings
        # Written once per loader: for COCO it takes seconds, too long to repeat at every pass.
        self.annotation_file = write_clean_annotations(coco)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.length = iterations_per_epoch(len(coco.records), world_size, batch_size, grouping)
        self.num_samples = len(coco.records)
        self.grouper: AspectGrouper[tuple[Tensor, ImageTarget]] = AspectGrouper(
            batch_size, grouping
        )
        self.epoch = 0
        self.skip = 0
        self.samples: Iterator[tuple[Tensor, ImageTarget]] | None = None

    def _start(self, epoch: int) -> None:
        self.grouper.clear()
        stream = _Stream(
            self.coco,
            self.annotation_file,
            self.settings,
            batch_size=self.batch_size,
            shard_id=self.rank,
            num_shards=self.world_size,
            training=True,
            seed=_seed(self.seed, epoch, self.rank),
            shuffle_seed=_seed(self.seed, epoch),
            flip_prob=self.settings.flip_prob,
        )
        self.samples = iter(stream)

    def _next_group(self) -> list[tuple[Tensor, ImageTarget]]:
        assert self.samples is not None
        for image, target in self.samples:
            batch = self.grouper.push((image, target), target.image_size[1] > target.image_size[0])
            if batch is not None:
                return batch
        raise AssertionError("the DALI sample stream is infinite")

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next pass epoch `epoch`, without its first `start` samples (a global count, as
        checkpoints record it; skipping decodes them). The epoch after the last one continues the
        reader; any other, or start > 0, rebuilds it there."""
        skip = batches_consumed(start, self.batch_size, self.world_size)
        if self.samples is None or epoch != self.epoch or skip:
            self._start(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[Batch]:
        if self.samples is None:
            self._start(self.epoch)
        for _ in range(self.skip):
            self._next_group()
        for _ in range(self.length - self.skip):
            batch = self._next_group()
            images = pad_batch([b[0] for b in batch], self.settings.size_divisibility)
            yield Batch(images, [b[1] for b in batch])
        self.epoch, self.skip = self.epoch + 1, 0


class DaliValLoader:
    """Evaluation batches of one rank: its contiguous shard of the images in id order, each once;
    num_samples: val images over all ranks."""

    def __init__(
        self, coco: CocoSet, settings: DaliSettings, batch_size: int, rank: int, world_size: int
    ) -> None:
        self.coco, self.settings = coco, settings
        # Written once per loader: for COCO it takes seconds, too long to repeat at every pass.
        self.annotation_file = write_clean_annotations(coco)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_samples = len(coco.records)
        start, end = shard_range(len(coco.records), rank, world_size)
        self.expected_ids = [r.image_id for r in coco.records[start:end]]
        # One reader for all passes, built on the first; a pass left unfinished drops it.
        self.samples: Iterator[tuple[Tensor, ImageTarget]] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.expected_ids) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if not self.expected_ids:
            return
        if self.samples is None:
            stream = _Stream(
                self.coco,
                self.annotation_file,
                self.settings,
                batch_size=self.batch_size,
                shard_id=self.rank,
                num_shards=self.world_size,
                training=False,
                seed=0,
                shuffle_seed=0,
                flip_prob=0.0,
            )
            self.samples = iter(stream)
        samples, self.samples = self.samples, None  # back only after a complete pass
        for first in range(0, len(self.expected_ids), self.batch_size):
            want = self.expected_ids[first : first + self.batch_size]
            got = [next(samples) for _ in want]
            ids = [t.image_id for _, t in got]
            if ids != want:
                raise AssertionError(
                    f"DALI val shard {self.rank} read images {ids}, expected {want}"
                )
            yield Batch(
                pad_batch([g[0] for g in got], self.settings.size_divisibility), [g[1] for g in got]
            )
        # The reader pads every shard to the same number of batches (coco_pipeline): read the
        # padding too, so that the next pass starts at the shard's first image again.
        longest_shard = math.ceil(len(self.coco.records) / self.world_size)
        padded = math.ceil(longest_shard / self.batch_size) * self.batch_size
        for _ in range(padded - len(self.expected_ids)):
            next(samples)
        self.samples = samples
