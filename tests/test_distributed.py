"""Distributed helpers: a real 2-process gloo group on the CPU, and the single-process fallbacks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from harness import distributed
from harness.distributed import (
    all_reduce_mean,
    any_rank,
    barrier,
    broadcast_flag,
    broadcast_seed,
    cleanup,
    init_distributed,
    parameters_in_sync,
)
from harness.evaluate import gather_results

BIG_SEED = 2**40 + 2**24 + 1  # float32 cannot hold it: a float round trip would change it
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    info = init_distributed(backend="gloo", timeout_s=60)
    try:
        assert (info.rank, info.world_size, info.local_rank) == (rank, WORLD, rank)
        assert info.is_main == (rank == 0)
        assert info.device == torch.device("cpu")

        assert broadcast_seed(BIG_SEED if rank == 0 else 7) == BIG_SEED
        drawn = broadcast_seed(-1 if rank == 0 else 7)
        assert 0 <= drawn < 2**63 and drawn != 7
        assert broadcast_flag(rank == 0) is True
        assert broadcast_flag(rank == 1) is False
        # A stop seen by one rank only stops every rank; nobody's stops nobody.
        assert any_rank(rank == 1) is True
        assert any_rank(False) is False

        losses = {"loss_mask": torch.tensor(1.0 + rank), "loss_box": torch.tensor([4.0 * rank])}
        reduced = all_reduce_mean(losses)
        assert list(reduced) == ["loss_mask", "loss_box"]
        assert reduced["loss_mask"].item() == 1.5 and reduced["loss_box"].item() == 2.0

        # Rank 1 repeats image 2 (a padded sampler does this); rank 0's copy is kept, once.
        local = [
            {"image_id": 1 + rank, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9 - rank / 2},
            {"image_id": 2 + rank, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
        ]
        merged = gather_results(local)
        if rank == 0:
            assert [(r["image_id"], r["score"]) for r in merged] == [(1, 0.9), (2, 0.5), (3, 0.5)]
        else:
            assert merged == []

        # Same seed, same model on both ranks: in sync. Then one element on rank 1 only moves by one
        # float32 ulp: every rank must see False (the check all-reduces, it does not only compare
        # on rank 0).
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        assert parameters_in_sync(model) is True
        if rank == 1:
            with torch.no_grad():
                weight = model[1].weight
                weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))
        assert parameters_in_sync(model) is False
        barrier()
    finally:
        cleanup()


def test_two_process_gloo_group():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_single_process_without_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(backend="gloo")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert info.device == torch.device("cpu")
    assert not distributed.is_initialized()
    assert broadcast_seed(BIG_SEED) == BIG_SEED
    assert broadcast_flag(True) is True
    assert any_rank(True) is True and any_rank(False) is False
    loss = torch.tensor(3.0, requires_grad=True)
    reduced = all_reduce_mean({"loss": loss * 2})
    assert reduced["loss"].item() == 6.0 and not reduced["loss"].requires_grad
    barrier()
    cleanup()


def test_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        init_distributed(backend="gloo")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed(backend="gloo")
    with pytest.raises(ValueError, match="backend"):
        init_distributed(backend="mpi")
    with pytest.raises(ValueError, match="loss_box"):
        all_reduce_mean({"loss_box": torch.ones(2)})
