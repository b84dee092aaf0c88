"""The plain PyTorch loader: torch DataLoader workers, torchvision decoding, the shared transforms.

For machines without DALI and as the benchmark baseline. Flip decisions are drawn in the main process
(harness.data.sampler) and travel with the index, so batches do not depend on the number of workers.
A file that does not decode, or not to its annotated size, travels from the worker as the error
itself and is raised in the main process (DataLoader would re-raise it as a multi-line message).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from harness.config import DataConfig
from harness.data.batch import Batch, ImageTarget, Normalization
from harness.data.coco import CocoDataError, CocoRecord, CocoSet
from harness.data.images import decode, size_mismatch
from harness.data.sampler import CocoEpochs, Keys, shard_range
from harness.data.transforms import normalize, pad_batch, record_target, resized_size


class CocoImages(Dataset):
    """Indexed by (record index, flip): returns (image float32 [3, h, w] normalized, ImageTarget)."""

    def __init__(self, coco: CocoSet, min_size: int, max_size: int, norm: Normalization) -> None:
        self.coco = coco
        self.min_size, self.max_size = min_size, max_size
        self.norm = norm
        self.label_of = {cid: i + 1 for i, cid in enumerate(coco.category_ids)}

    def __len__(self) -> int:
        return len(self.coco.records)

    def read_image(self, rec: CocoRecord) -> Tensor:
        """uint8 [3, H, W] RGB as stored; raises CorruptImageError naming the file when it does not
        decode, CocoDataError when it is not the size the annotation file states."""
        path = self.coco.image_dir / rec.file_name
        image = decode(path)
        if tuple(image.shape[1:]) != (rec.height, rec.width):
            raise CocoDataError(
                size_mismatch(
                    path, tuple(image.shape[1:]), (rec.height, rec.width), self.coco.annotation_file
                )
            )
        return image

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Tensor, ImageTarget] | CocoDataError:
        index, flip = key
        rec = self.coco.records[index]
        try:
            image = self.read_image(rec)
        except CocoDataError as error:
            return error
        size = resized_size(rec.height, rec.width, self.min_size, self.max_size)
        image = TF.resize(image, list(size), antialias=True)
        if flip:
            image = image.flip(-1)
        return normalize(image, self.norm), record_target(rec, self.label_of, size, flip)


class _Collate:
    def __init__(self, size_divisibility: int) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, samples: list[tuple[Tensor, ImageTarget] | CocoDataError]) -> Batch:
        for sample in samples:
            if isinstance(sample, CocoDataError):
                return sample
        return Batch(
            pad_batch([s[0] for s in samples], self.size_divisibility), [s[1] for s in samples]
        )


def _raise_errors(batches: Iterable[Batch | CocoDataError]) -> Iterator[Batch]:
    """The batches, raising the first data error a worker sent instead of a batch."""
    for batch in batches:
        if isinstance(batch, CocoDataError):
            raise batch
        yield batch


class _EpochBatches:
    """The DataLoader's batch sampler: the batches of the pass being read."""

    def __init__(self) -> None:
        self.batches: list[Keys] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Keys]:
        return iter(self.batches)


class TorchTrainLoader(CocoEpochs):
    """Training batches of one rank: `len()` batches per epoch of `images_per_rank` images each
    (the epochs, set_epoch and num_samples of GroupedEpochs)."""

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
        self.sampler = _EpochBatches()
        self.loader = DataLoader(
            CocoImages(coco, data.min_size, data.max_size, norm),
            batch_sampler=self.sampler,
            num_workers=data.num_workers,
            collate_fn=_Collate(data.size_divisibility),
            persistent_workers=data.num_workers > 0,
            # Its own generator: each iter() draws a base seed, which must not advance the global
            # RNG that sampling uses, or a resumed run would draw differently from a straight one.
            generator=torch.Generator().manual_seed(seed),
        )

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.batches = self.batches(self.epoch)[self.skip :]
        yield from _raise_errors(self.loader)
        self.finish_pass()


class TorchValLoader:
    """Evaluation batches of one rank: its contiguous shard of the images in id order, unflipped;
    num_samples: val images over all ranks."""

    def __init__(
        self, coco: CocoSet, data: DataConfig, norm: Normalization, rank: int, world_size: int
    ) -> None:
        self.num_samples = len(coco.records)
        start, end = shard_range(len(coco.records), rank, world_size)
        keys = [(i, False) for i in range(start, end)]
        size = data.val_ims_per_batch
        batches = [keys[i : i + size] for i in range(0, len(keys), size)]
        self.num_batches = len(batches)
        self.loader = DataLoader(
            CocoImages(coco, data.min_size, data.max_size, norm),
            batch_sampler=batches,
            num_workers=data.num_workers,
            collate_fn=_Collate(data.size_divisibility),
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        return _raise_errors(self.loader)
