"""benchmarks/sync_count.py: the counter sees each kind of sync-forcing op and nothing else, and a
training step of the CPU demo's model syncs only where the model means to."""

from __future__ import annotations

import pytest
import torch

from benchmarks.sync_count import SyncCounter, build_step, count_step

# The one host read a training step keeps (the mask head's positive count, RESULTS.md "Host syncs").
ALLOWED_MODEL_SYNCS = {("_local_scalar_dense", "_mask_loss")}


def ops_in(counter: SyncCounter) -> list[str]:
    return sorted(op for (op, _), n in counter.events.items() for _ in range(n))


def test_counts_each_sync_forcing_op_once():
    x = torch.arange(6.0)
    mask = x > 2
    with SyncCounter() as counter:
        x.sum().item()
        bool(x.any())
        x.nonzero()
        x[mask]
        y = x.clone()
        y[mask] = x[:3]
        x.masked_select(mask)
        torch.repeat_interleave(torch.tensor([1, 2]))
        x.tolist()
        x.cpu()
        x.unique()
        torch.equal(x, x)
        torch.bincount(x.long())
    assert ops_in(counter) == sorted(
        [
            "_local_scalar_dense",
            "_local_scalar_dense",
            "nonzero",
            "index",
            "index_put_",
            "masked_select",
            "repeat_interleave",
            "Tensor.tolist",
            "Tensor.cpu",
            "_unique2",
            "equal",
            "bincount",
        ]
    )


def test_ignores_sync_free_ops_and_reads_of_host_copies():
    x = torch.arange(6.0)
    mask = x > 2
    with SyncCounter() as counter:
        torch.where(mask, x, 0)
        x.masked_fill(mask, 0)
        x.topk(2)
        x[torch.tensor([0, 2])]
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        flags = mask.any()[None].cpu()  # counted: one copy
        bool(flags[0])  # a host read of the copy: free
    assert ops_in(counter) == ["Tensor.cpu"]
    assert all(site.startswith("tests/test_sync_count.py") for _, site in counter.events)


@pytest.mark.parametrize(
    ("config", "size"),
    [
        ("configs/cpu_demo.yaml", (160, 192)),
        pytest.param("configs/dgx1_v100x8.yaml", (128, 192), marks=pytest.mark.slow),
    ],
    ids=["cpu_demo", "dgx1"],
)
def test_step_syncs_only_where_the_model_allows(config, size):
    counter = count_step(build_step(config, size=size, batch=2))
    model = {
        (op, site.rsplit(" ", 1)[-1]): n
        for (op, site), n in counter.events.items()
        if not site.startswith("harness/ops/")
    }
    assert model == {key: 1 for key in ALLOWED_MODEL_SYNCS}, counter.report()
