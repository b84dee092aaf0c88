"""Sharding, per-epoch shuffling and aspect-ratio grouping, shared by both loaders.

Epoch e of a training run visits a permutation of the whole set drawn from (seed, e), the same on every
rank; rank r reads the contiguous block [r * N // W, (r + 1) * N // W) of it.
Batches hold only images with width > height or only images with width <= height (the reference's
aspect-ratio grouping): samples wait in one bucket per orientation and a full bucket is a batch.

Units: a step trains on `images_per_step` images over all ranks (solver.ims_per_batch, the global
batch); each rank's batch holds `images_per_rank(images_per_step, world_size)` of them, the one place
the global batch is split. A checkpoint's position in an epoch counts images over all ranks.

Every rank must run the same number of iterations, known before the epoch: `iterations_per_epoch`,
one batch fewer than the shard could fill without grouping (what grouping can always fill, since each
orientation's bucket leaves fewer than B images behind). Both training loaders are `GroupedEpochs`:
epochs are self-contained (the batches of epoch e are a function of seed and e alone, up to ~3 B
images per rank and epoch are left out), so a run resumed at any batch replays exactly what an
uninterrupted run would have read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from harness.config import ConfigError

if TYPE_CHECKING:
    from harness.config import DataConfig
    from harness.data.coco import CocoSet

T = TypeVar("T")
Keys = list[tuple[int, bool]]  # one batch: (record index, flip) per image


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous shard of num_items (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    return rank * num_items // world_size, (rank + 1) * num_items // world_size


def images_per_rank(images_per_step: int, world_size: int) -> int:
    """The images each rank trains on per step: the global batch (solver.ims_per_batch) split evenly
    over the ranks. Raises ConfigError when it does not split."""
    if world_size < 1 or images_per_step < world_size or images_per_step % world_size:
        raise ConfigError(
            f"solver.ims_per_batch={images_per_step}: the images of a step must split evenly over "
            f"the world size (world_size={world_size})"
        )
    return images_per_step // world_size


def iterations_per_epoch(num_items: int, world_size: int, batch_size: int, grouping: bool) -> int:
    """Batches per epoch on every rank (the smallest shard's; see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch size per rank must be >= 1, got {batch_size}")
    full = (num_items // world_size) // batch_size
    return max(0, full - 1) if grouping and batch_size > 1 else full


class AspectGrouper(Generic[T]):
    """Collects items into batches of one orientation (or of any, when grouping is off)."""

    def __init__(self, batch_size: int, grouping: bool) -> None:
        self.batch_size = batch_size
        self.grouping = grouping
        self.buckets: dict[bool, list[T]] = {False: [], True: []}

    def push(self, item: T, landscape: bool) -> list[T] | None:
        """Add an item (landscape: width > height); returns a full batch when one is ready."""
        bucket = self.buckets[landscape and self.grouping]
        bucket.append(item)
        if len(bucket) < self.batch_size:
            return None
        batch = bucket[:]
        bucket.clear()
        return batch

    def clear(self) -> None:
        for bucket in self.buckets.values():
            bucket.clear()


def epoch_order(
    num_items: int, seed: int, epoch: int, flip_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """The global visiting order of an epoch and each position's flip decision (bool)."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_items), rng.random(num_items) < flip_prob


class GroupedEpochs:
    """The (index, flip) batches of one rank, epoch by epoch, each epoch a function of (seed, epoch),
    and where the next pass over them starts. Both training loaders are GroupedEpochs.

    landscape: per usable training image, width > height; images_per_step: the global batch, of
    which each batch of this rank holds images_per_rank.
    len(): batches per epoch (the same on every rank); num_samples: usable images over all ranks.
    """

    def __init__(
        self,
        landscape: np.ndarray,
        images_per_step: int,
        rank: int,
        world_size: int,
        seed: int,
        flip_prob: float,
        grouping: bool,
    ) -> None:
        self.landscape = np.asarray(landscape, dtype=bool)
        self.num_samples = len(self.landscape)
        self.images_per_step = images_per_step
        self.images_per_rank = images_per_rank(images_per_step, world_size)
        self.grouping = grouping
        self.shard = shard_range(self.num_samples, rank, world_size)
        self.seed, self.flip_prob = seed, flip_prob
        self.length = iterations_per_epoch(
            self.num_samples, world_size, self.images_per_rank, grouping
        )
        self.epoch, self.skip = 0, 0  # the next pass: its epoch and the batches it leaves out

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next pass epoch `epoch`, without its first `start` images (a count over all
        ranks, as checkpoints record it). Without a call, passes run epochs 0, 1, 2, ..."""
        if start < 0 or start % self.images_per_step:
            raise ValueError(
                f"start={start} is not a whole number of global batches of "
                f"{self.images_per_step} images"
            )
        self.epoch, self.skip = epoch, start // self.images_per_step

    def finish_pass(self) -> None:
        """The pass ran to its end: the next one is the following epoch, whole."""
        self.epoch, self.skip = self.epoch + 1, 0

    def batches(self, epoch: int) -> list[Keys]:
        """The `len()` batches of `epoch`: lists of (record index, flip) of one orientation."""
        order, flips = epoch_order(self.num_samples, self.seed, epoch, self.flip_prob)
        grouper: AspectGrouper[tuple[int, bool]] = AspectGrouper(
            self.images_per_rank, self.grouping
        )
        out: list[Keys] = []
        for pos in range(*self.shard):
            if len(out) == self.length:
                break
            index = int(order[pos])
            batch = grouper.push((index, bool(flips[pos])), bool(self.landscape[index]))
            if batch is not None:
                out.append(batch)
        if len(out) != self.length:
            raise AssertionError(f"epoch {epoch} filled {len(out)} of {self.length} batches")
        return out


class CocoEpochs(GroupedEpochs):
    """GroupedEpochs over a COCO training set: its images' orientations, with the data config's
    flip probability and aspect-ratio grouping. Both training loaders extend it."""

    def __init__(
        self,
        coco: CocoSet,
        data: DataConfig,
        images_per_step: int,
        rank: int,
        world_size: int,
        seed: int,
    ) -> None:
        landscape = np.array([r.width > r.height for r in coco.records], dtype=bool)
        super().__init__(
            landscape,
            images_per_step,
            rank,
            world_size,
            seed,
            data.flip_prob,
            data.aspect_ratio_grouping,
        )
