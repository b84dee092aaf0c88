import numpy as np
import pytest

from harness.data.sampler import GroupedIndexStream, iterations_per_epoch, shard_range


def test_shards_partition_the_items():
    covered = [i for r in range(3) for i in range(*shard_range(10, r, 3))]
    assert covered == list(range(10))
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 3, 3)


def test_iterations_agree_on_every_rank():
    assert iterations_per_epoch(10, 3, 2) == 1
    assert iterations_per_epoch(17, 2, 4) == 2
    with pytest.raises(ValueError, match="batch size"):
        iterations_per_epoch(10, 1, 0)


LANDSCAPE = np.arange(40) % 3 == 0


def _stream(rank=0, world=1, seed=0, grouping=True, batch=4, flip=0.5):
    return GroupedIndexStream(LANDSCAPE, batch, rank, world, seed, flip, grouping)


def test_batches_hold_one_orientation():
    stream = _stream()
    for _ in range(20):
        batch = stream.next_batch()
        assert len(batch) == 4
        assert len({bool(LANDSCAPE[i]) for i, _ in batch}) == 1


def test_without_grouping_an_epoch_visits_every_item_once_across_ranks():
    seen = []
    for rank in range(2):
        stream = _stream(rank=rank, world=2, grouping=False)
        for _ in range(iterations_per_epoch(40, 2, 4)):
            seen += [i for i, _ in stream.next_batch()]
    assert sorted(seen) == list(range(40))


def test_order_is_a_function_of_seed_and_epoch():
    a, b, c = _stream(seed=1), _stream(seed=1), _stream(seed=2)
    first = [a.next_batch() for _ in range(5)]
    assert first == [b.next_batch() for _ in range(5)]
    assert first != [c.next_batch() for _ in range(5)]
    a.restart(3)
    b.restart(3)
    assert [a.next_batch() for _ in range(3)] == [b.next_batch() for _ in range(3)]
    b.restart(0)
    assert [b.next_batch() for _ in range(5)] == first


def test_flip_probability_extremes():
    assert all(f for _ in range(5) for _, f in _stream(flip=1.0).next_batch())
    assert not any(f for _ in range(5) for _, f in _stream(flip=0.0).next_batch())
