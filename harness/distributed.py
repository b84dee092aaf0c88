"""Process-group setup from torchrun's environment and the few collectives the training loop needs.

Every helper works unchanged in a single process (no torchrun environment): broadcasts return their
input and reductions are the identity, so the loop has no `if distributed` branches.
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# A Gloo group for host-side flags when the default group is NCCL (created on first use).
_host_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # this process's device: cuda:<local_rank> with NCCL, else cpu
    is_main: bool  # rank 0: the only rank that logs, writes metrics and checkpoints


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Args:
        backend: "nccl" (one GPU per process, cuda:LOCAL_RANK) or "gloo" (CPU); default nccl when a
            GPU is visible, gloo otherwise.
        timeout_s: how long a collective may wait for the other ranks before failing.

    Without WORLD_SIZE in the environment (or WORLD_SIZE=1) no group is created: rank 0 of 1, on
    cuda:0 when a GPU is visible, else the CPU.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    world_size = _env_int("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world_size == 1:
        device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(0, 1, 0, device, True)
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but torchrun variables {missing} are not set")
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1}")
    device = torch.device("cpu")
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if backend == "nccl" else None,
    )
    return DistInfo(rank, world_size, local_rank, device, rank == 0)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed on every rank; a negative seed on rank 0 draws a random one in [0, 2**63).

    Sent as int64: a float32 round trip (as in the reference) changes seeds above 2**24.
    """
    if seed < 0:
        seed = secrets.randbelow(2**63)
    if not is_initialized():
        return seed
    buffer = torch.tensor([seed], dtype=torch.int64, device=_comm_device())
    dist.broadcast(buffer, src=0)
    return int(buffer.item())


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision (e.g. stop training: target reached) on every rank."""
    if not is_initialized():
        return bool(flag)
    buffer = torch.tensor([int(bool(flag))], dtype=torch.uint8, device=_comm_device())
    dist.broadcast(buffer, src=0)
    return bool(buffer.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable object (e.g. the run folder it created) on every rank."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one, e.g. a stop signal that reached some
    ranks a step before the others. Every rank must call it at the same point of the loop.

    One 4-byte all-reduce over Gloo on host memory: with NCCL the flag would have to go to the GPU
    and be read back, a sync in every step; on the CPU it costs well under a millisecond.
    """
    global _host_group
    if not is_initialized():
        return bool(flag)
    if dist.get_backend() != "gloo" and _host_group is None:
        _host_group = dist.new_group(backend="gloo")
    buffer = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=_host_group)
    return bool(buffer.item())


def parameters_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds the same parameters: compares each rank's parameter checksum
    with rank 0's (one small collective; meant for the end of a run, not every step)."""
    if not is_initialized():
        return True
    with torch.no_grad():
        total = sum(p.double().sum() for p in model.parameters())
    checksum = torch.tensor([float(total)], dtype=torch.float64, device=_comm_device())
    reference = checksum.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([int(torch.equal(checksum, reference))], device=_comm_device())
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean over ranks of scalar tensors (loss terms for logging), in one collective.

    Every rank must pass the same keys. Returns detached float32 scalars in the input's key order;
    without a process group, the detached inputs.
    """
    for key, value in values.items():
        if value.numel() != 1:
            raise ValueError(f"all_reduce_mean: '{key}' must be a scalar, got shape {value.shape}")
    if not is_initialized():
        return {key: value.detach() for key, value in values.items()}
    keys = sorted(values)
    device = _comm_device()
    stacked = torch.stack([values[k].detach().reshape(()).to(device, torch.float32) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= dist.get_world_size()
    reduced = dict(zip(keys, stacked.unbind(), strict=True))
    return {key: reduced[key] for key in values}


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op when none was created)."""
    global _host_group
    if is_initialized():
        dist.destroy_process_group()
    _host_group = None
