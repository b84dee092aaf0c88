"""Sharding, per-epoch shuffling and aspect-ratio grouping, shared by both loaders.

Epoch e of a training run visits a permutation of the whole set drawn from (seed, e), the same on every
rank; rank r reads the contiguous block [r * N // W, (r + 1) * N // W) of it (DALI's shard rule).
Batches hold only images with width > height or only images with width <= height (the reference's
aspect-ratio grouping): samples wait in one bucket per orientation and a full bucket is a batch.
Buckets carry over from one epoch to the next, so every epoch yields exactly `iterations_per_epoch`
batches and no image waits more than one epoch.

Resuming (set_epoch(e, start=k) on a fresh loader) restarts epoch e's order with empty buckets and skips
its first k samples; it differs from the uninterrupted run only in the few images that were waiting
in the buckets when epoch e began.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous shard of num_items (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    return rank * num_items // world_size, (rank + 1) * num_items // world_size


def batches_consumed(start: int, batch_size: int, world_size: int) -> int:
    """Per-rank batches behind `start` samples of an epoch consumed by all ranks together (what a
    checkpoint records); `start` must be a whole number of global batches."""
    global_batch = batch_size * world_size
    if start < 0 or start % global_batch:
        raise ValueError(f"start={start} is not a whole number of global batches of {global_batch}")
    return start // global_batch


def iterations_per_epoch(num_items: int, world_size: int, batch_size: int) -> int:
    """Batches per epoch on every rank: the smallest shard's full batches, so all ranks agree."""
    if batch_size < 1:
        raise ValueError(f"batch size per rank must be >= 1, got {batch_size}")
    return (num_items // world_size) // batch_size


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


class GroupedIndexStream:
    """Infinite stream of (index, flip) batches for one rank of a training run."""

    def __init__(
        self,
        landscape: np.ndarray,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        flip_prob: float,
        grouping: bool,
    ) -> None:
        self.landscape = np.asarray(landscape, dtype=bool)
        self.rank, self.world_size = rank, world_size
        self.seed, self.flip_prob = seed, flip_prob
        self.grouper: AspectGrouper[tuple[int, bool]] = AspectGrouper(batch_size, grouping)
        self._items: Iterator[tuple[int, bool]] = iter(())
        self.restart(0)

    def restart(self, epoch: int) -> None:
        """Start over at `epoch` with empty buckets (the state of a fresh run at that epoch)."""
        self.grouper.clear()
        self._items = self._from_epoch(epoch)

    def _from_epoch(self, epoch: int) -> Iterator[tuple[int, bool]]:
        start, end = shard_range(len(self.landscape), self.rank, self.world_size)
        while True:
            order, flips = epoch_order(len(self.landscape), self.seed, epoch, self.flip_prob)
            for pos in range(start, end):
                yield int(order[pos]), bool(flips[pos])
            epoch += 1

    def next_batch(self) -> list[tuple[int, bool]]:
        for index, flip in self._items:
            batch = self.grouper.push((index, flip), bool(self.landscape[index]))
            if batch is not None:
                return batch
        raise AssertionError("the index stream is infinite")
