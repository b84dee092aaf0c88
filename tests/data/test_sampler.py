import numpy as np
import pytest

from harness.data.sampler import (
    GroupedEpochs,
    batches_consumed,
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


def test_batches_consumed_counts_global_batches():
    assert batches_consumed(48, batch_size=4, world_size=4) == 3
    with pytest.raises(ValueError, match="whole number of global batches of 16"):
        batches_consumed(20, batch_size=4, world_size=4)


LANDSCAPE = np.arange(40) % 3 == 0


def _epochs(rank=0, world=1, seed=0, grouping=True, batch=4, flip=0.5):
    return GroupedEpochs(LANDSCAPE, batch, rank, world, seed, flip, grouping)


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
