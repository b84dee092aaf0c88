import numpy as np
import pytest

from harness.config import ConfigError
from harness.data.sampler import (
    GroupedEpochs,
    images_per_rank,
    iterations_per_epoch,
    shard_range,
)


def test_shards_partition_the_items():
    covered = [i for r in range(3) for i in range(*shard_range(10, r, 3))]
    assert covered == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 3, 3)


def test_iterations_agree_on_every_rank_and_leave_room_for_grouping():
    assert iterations_per_epoch(17, 2, 4, grouping=False) == 2
    assert iterations_per_epoch(17, 2, 4, grouping=True) == 1
    assert (
        iterations_per_epoch(17, 2, 1, grouping=True) == 8
    )  # batches of one need no grouping slack
    with pytest.raises(ValueError, match="batch size"):
        iterations_per_epoch(10, 1, 0, grouping=False)


LANDSCAPE = np.arange(40) % 3 == 0


def _epochs(rank=0, world=1, seed=0, grouping=True, batch=4, flip=0.5):
    """`batch`: images per rank and batch."""
    return GroupedEpochs(LANDSCAPE, batch * world, rank, world, seed, flip, grouping)


def test_the_global_batch_splits_evenly_over_the_ranks():
    assert images_per_rank(48, 4) == 12
    for images, world in [(6, 4), (2, 4), (4, 0)]:
        with pytest.raises(ConfigError, match=rf"ims_per_batch={images}: .*world_size={world}"):
            images_per_rank(images, world)
    with pytest.raises(ConfigError, match="world_size=4"):
        GroupedEpochs(LANDSCAPE, 6, 0, 4, seed=0, flip_prob=0.5, grouping=True)


def test_a_pass_starts_after_whole_global_batches():
    epochs = _epochs(world=4, batch=4, grouping=False)  # 10 images per rank: two batches
    epochs.set_epoch(2, start=16)
    assert (epochs.epoch, epochs.skip) == (2, 1)
    with pytest.raises(ValueError, match="whole number of global batches of 16 images"):
        epochs.set_epoch(2, start=20)
    epochs.finish_pass()
    assert (epochs.epoch, epochs.skip) == (3, 0)


@pytest.mark.parametrize("seed", range(5))
def test_every_epoch_fills_its_batches_with_one_orientation_each(seed):
    epochs = _epochs(seed=seed, batch=5)
    for epoch in range(10):
        batches = epochs.batches(epoch)
        assert len(batches) == epochs.length == 40 // 5 - 1
        for batch in batches:
            assert len(batch) == 5
            assert len({bool(LANDSCAPE[i]) for i, _ in batch}) == 1
        indices = [i for b in batches for i, _ in b]
        assert len(set(indices)) == len(indices)


def test_without_grouping_an_epoch_visits_every_item_once_across_ranks():
    seen = [
        i for rank in range(2) for b in _epochs(rank, 2, grouping=False).batches(0) for i, _ in b
    ]
    assert sorted(seen) == list(range(40))


def test_an_epoch_is_a_function_of_seed_and_epoch():
    a, b, c = _epochs(seed=1), _epochs(seed=1), _epochs(seed=2)
    assert a.batches(3) == b.batches(3)
    assert a.batches(3) != c.batches(3)
    assert a.batches(3) != a.batches(4)


def test_flip_probability_extremes():
    assert all(f for b in _epochs(flip=1.0).batches(0) for _, f in b)
    assert not any(f for b in _epochs(flip=0.0).batches(0) for _, f in b)
