"""Loaders from the DALI pipeline to harness batches (train: grouped epochs; val: each image once).

Both pick their images as the PyTorch loader does (harness.data.sampler), so the two loaders read
the same batches with the same flips; DALI does the pixel work and returns each batch padded. When a
batch fails to decode, the files in flight are decoded again with the PyTorch loader's reader
(harness.data.images) to name the culprit: both loaders raise the same CorruptImageError.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dali_pipeline.pipeline import HostBatch, coco_pipeline
from harness.config import DataConfig
from harness.data.batch import Batch, Normalization
from harness.data.coco import CocoDataError, CocoSet, CorruptImageError
from harness.data.images import decode, size_mismatch
from harness.data.sampler import CocoEpochs, Keys, shard_range
from harness.data.transforms import padded_size, record_target, resized_size


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

    @classmethod
    def of(cls, data: DataConfig, norm: Normalization) -> DaliSettings:
        """The settings cfg.data asks for; decode_device auto is mixed when a GPU is visible."""
        device = data.decode_device
        if device == "auto":
            device = "mixed" if torch.cuda.is_available() else "cpu"
        if device == "mixed" and not torch.cuda.is_available():
            raise ValueError("data.decode_device=mixed needs a CUDA GPU; none is visible")
        return cls(
            min_size=data.min_size,
            max_size=data.max_size,
            size_divisibility=data.size_divisibility,
            flip_prob=data.flip_prob,
            num_threads=max(1, data.num_workers),
            decode_device=device,
            device_id=torch.cuda.current_device() if device == "mixed" else None,
            norm=norm,
        )


def _to_torch(tensor) -> Tensor:
    """A DALI tensor as a torch tensor on the same device, without a copy. Safe to keep: under the
    dynamic executor (coco_pipeline sets it) DALI never reuses an output buffer that is still
    referenced (TensorGPU.__dlpack__'s documentation), and the DLPack capsule holds that reference.
    On the GPU the capsule also makes torch's current stream wait for DALI's."""
    return torch.from_dlpack(tensor)


def _first_corrupt(paths: list[Path]) -> CorruptImageError | None:
    """The error of the first file among `paths` that does not decode, None when all do."""
    for path in paths:
        try:
            decode(path)
        except CorruptImageError as error:
            return error
    return None


class _HostBatches:
    """DALI's external source: the files of the next batch of `keys` (an endless iterator of
    batches), with their sizes, the batch's canvas and the flips. Remembers the batches DALI has
    taken (it prefetches) and not yet returned, oldest first."""

    def __init__(self, coco: CocoSet, settings: DaliSettings, keys: Iterator[Keys]) -> None:
        self.coco, self.settings, self.keys = coco, settings, keys
        self.in_flight: deque[Keys] = deque()

    def size(self, index: int) -> tuple[int, int]:
        rec = self.coco.records[index]
        return resized_size(rec.height, rec.width, self.settings.min_size, self.settings.max_size)

    def path(self, index: int) -> Path:
        return self.coco.image_dir / self.coco.records[index].file_name

    def __call__(self) -> HostBatch:
        keys = next(self.keys)
        self.in_flight.append(keys)
        sizes = [self.size(index) for index, _ in keys]
        canvas = np.array(padded_size(sizes, self.settings.size_divisibility), dtype=np.float32)
        return (
            [np.fromfile(self.path(index), dtype=np.uint8) for index, _ in keys],
            [np.array(s, dtype=np.float32) for s in sizes],
            [canvas] * len(keys),
            [np.array(flip, dtype=np.int32) for _, flip in keys],
        )


class _Stream:
    """The batches of one pipeline, in the order of `keys` (an endless iterator of batches)."""

    def __init__(
        self, coco: CocoSet, settings: DaliSettings, keys: Iterator[Keys], batch_size: int
    ) -> None:
        self.coco = coco
        self.label_of = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}
        # The pipeline holds the source, never the stream: dropping the stream frees the pipeline.
        self.source = _HostBatches(coco, settings, keys)
        self.pipe = coco_pipeline(
            source=self.source,
            batch_size=batch_size,
            num_threads=settings.num_threads,
            decode_device=settings.decode_device,
            device_id=settings.device_id,
            norm=settings.norm,
        )

    def next(self) -> Batch:
        try:
            images, shapes = self.pipe.run()
        except RuntimeError as exc:
            # DALI names a failing sample only by its index in a batch: find the culprit in flight.
            files = [self.source.path(i) for keys in self.source.in_flight for i, _ in keys]
            corrupt = _first_corrupt(files)
            if corrupt is not None:
                raise corrupt from None
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise CocoDataError(
                f"DALI pipeline over {self.coco.image_dir} failed: {reason}"
            ) from None
        keys = self.source.in_flight.popleft()
        targets = []
        for (index, flip), shape in zip(keys, shapes.as_array(), strict=True):
            rec = self.coco.records[index]
            got = (int(shape[0]), int(shape[1]))
            if got != (rec.height, rec.width):
                raise CocoDataError(
                    size_mismatch(
                        self.source.path(index),
                        got,
                        (rec.height, rec.width),
                        self.coco.annotation_file,
                    )
                )
            targets.append(record_target(rec, self.label_of, self.source.size(index), flip))
        return Batch(_to_torch(images.as_tensor()), targets)


class DaliTrainLoader(CocoEpochs):
    """Training batches of one rank: `len()` batches per epoch, aspect-ratio grouped, each epoch a
    function of (seed, epoch) as in the PyTorch loader (the epochs, set_epoch and num_samples of
    harness.data.sampler.GroupedEpochs).

    One pipeline runs on from epoch to epoch (it prefetches across the boundary); a pass that starts
    anywhere else (set_epoch to another epoch, start > 0, or a pass left unfinished) builds a new one
    there.
    """

    def __init__(
        self,
        coco: CocoSet,
        data: DataConfig,
        norm: Normalization,
        images_per_step: int,
        rank: int,
        world_size: int,
        seed: int,
    ) -> None:
        super().__init__(coco, data, images_per_step, rank, world_size, seed)
        self.coco, self.settings = coco, DaliSettings.of(data, norm)
        self.stream: _Stream | None = None
        self.stream_at = (0, 0)  # (epoch, batch) the stream returns next

    def _keys(self, epoch: int, skip: int) -> Iterator[Keys]:
        yield from self.batches(epoch)[skip:]
        for later in itertools.count(epoch + 1):
            yield from self.batches(later)

    def __iter__(self) -> Iterator[Batch]:
        if self.stream is None or self.stream_at != (self.epoch, self.skip):
            self.stream = None  # release the old pipeline's threads and buffers first
            keys = self._keys(self.epoch, self.skip)
            self.stream = _Stream(self.coco, self.settings, keys, self.images_per_rank)
        for i in range(self.skip, len(self)):
            batch = self.stream.next()
            self.stream_at = (self.epoch, i + 1) if i + 1 < len(self) else (self.epoch + 1, 0)
            yield batch
        self.finish_pass()


class DaliValLoader:
    """Evaluation batches of one rank: its contiguous shard of the images in id order, each once;
    num_samples: val images over all ranks."""

    def __init__(
        self, coco: CocoSet, data: DataConfig, norm: Normalization, rank: int, world_size: int
    ) -> None:
        self.coco, self.settings = coco, DaliSettings.of(data, norm)
        self.batch_size = size = data.val_ims_per_batch
        self.num_samples = len(coco.records)
        start, end = shard_range(len(coco.records), rank, world_size)
        keys = [(i, False) for i in range(start, end)]
        self.batches = [keys[i : i + size] for i in range(0, len(keys), size)]
        # One pipeline for all passes; a pass left unfinished drops it.
        self.stream: _Stream | None = None
        self.stream_at = 0  # the batch of a pass the stream returns next

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        if not self.batches:
            return
        if self.stream is None or self.stream_at != 0:
            self.stream = None
            keys = itertools.cycle(self.batches)
            self.stream = _Stream(self.coco, self.settings, keys, self.batch_size)
        for i in range(len(self.batches)):
            batch = self.stream.next()
            self.stream_at = (i + 1) % len(self.batches)
            yield batch
