"""Count the operations of one training step that would make the host wait for a GPU.

    python -m benchmarks.sync_count --config configs/cpu_demo.yaml
    python -m benchmarks.sync_count --config configs/dgx1_v100x8.yaml --size 256 384 --batch 2

One training step as harness/train.py runs it (LR schedule, forward, backward, gradient clipping,
GradScaler when run.precision is amp, the optimizer step) of a randomly initialized model (no
weights file is read) on seeded synthetic inputs (benchmarks/model_cases.make_inputs), on the CPU,
under `SyncCounter`. The counter records every operation that forces a device-to-host
synchronization when the same code runs on CUDA, with the line of harness code that caused it:

- `aten._local_scalar_dense` (Tensor.item(), bool(tensor), int(tensor), float(tensor));
- ops whose output size depends on the data: nonzero, masked_select, unique*, indexing with a bool
  mask (aten.index) and index_put with one, repeat_interleave without output_size,
  tensor_split by a tensor, bincount (its CUDA kernel reads the maximum on the host);
- equal/allclose (a host boolean);
- device-to-host copies: Tensor.cpu(), .tolist(), .numpy(), .to("cpu") called from harness code
  (these never reach the dispatcher on the CPU, so they are counted at the Python method);
- blocking host-to-device copies: torch.tensor/as_tensor(data, device=...) called from harness
  code (a copy with non_blocking=False waits for the GPU's stream).
When counting, the forward runs in fp32 on the CPU even for amp configs (bf16 is emulated here and
slow); autocast changes dtypes, not which ops run. `--time N` times steps instead.

Ops inside harness._C's pybind functions are seen only where the C++ code calls ATen ops; a copy a
CUDA kernel makes to the host by itself is invisible here (run `cuda_sync_count` on a GPU for those).
`cuda_sync_count` and `cuda_graph_core_speed` are the GPU checks benchmarks/gpu_suite.sh calls.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.model_cases import make_inputs
from harness import config as config_module
from harness.model import build_model
from harness.solver import LRSchedule, build_optimizer
from harness.train import autocast_dtype, train_step

REPO = Path(__file__).resolve().parents[1]

# Ops that always wait for the device: a host scalar, or an output whose size depends on the data.
ALWAYS_SYNC = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "equal",
    "allclose",
    "bincount",
    "tensor_split",  # counted only for the tensor overload, see _is_sync
}
INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"}
HOST_TAG = "_sync_count_on_host"


def _has_bool_index(indices) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()
    )


def _is_sync(func, args, kwargs) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in INDEX_OPS:
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name == "repeat_interleave":
        return func._overloadname.startswith("Tensor") and (
            kwargs.get("output_size") is None and (len(args) < 3 or args[-1] is None)
        )
    if name == "tensor_split":
        return func._overloadname == "tensor_indices_or_sections"
    return name in ALWAYS_SYNC


def _in_repo(filename: str) -> bool:
    """Whether `filename` is this repository's code: under REPO, but not an installed package
    (a .venv inside the checkout, as CI's fresh clone has, holds torch itself)."""
    path = Path(filename).resolve()
    return path.is_relative_to(REPO) and "site-packages" not in path.parts


def _site() -> str:
    """The innermost frame of this repository's code (not torch's) on the stack."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if _in_repo(frame.filename):
            path = Path(frame.filename).resolve().relative_to(REPO)
            return f"{path}:{frame.lineno} {frame.name}"
    return "<outside the repository>"


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


class SyncCounter(TorchDispatchMode):
    """Counts sync-forcing ops by (op, site) while active: `with SyncCounter() as c: ...`.

    On the CPU every tensor is on the host, so the counter follows which ones would be there on
    CUDA too: the results of .cpu()/.numpy() and everything computed from them are tagged, and ops
    on tagged tensors are not counted (roi_align's checks read a copied flag vector, for example).
    Python-level copies (.cpu(), .tolist(), .numpy(), .to("cpu")) and torch.tensor(data,
    device=...) (a blocking host-to-device copy, which waits for the GPU's queue) are counted when
    this repository's code calls them directly, not when torch's own code does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: collections.Counter = collections.Counter()
        self._patched: list[tuple[object, str, object]] = []

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_host = any(getattr(t, HOST_TAG, False) for t in _tensors((args, kwargs)))
        if not on_host and _is_sync(func, args, kwargs):
            self.events[(str(func.overloadpacket.__name__), _site())] += 1
        out = func(*args, **kwargs)
        if on_host:
            for t in _tensors(out):
                setattr(t, HOST_TAG, True)
        return out

    def _patch(self, owner: object, name: str, label: str, counts, tags: bool) -> None:
        original = getattr(owner, name)
        events = self.events

        def counted(*args, **kwargs):
            if _in_repo(sys._getframe(1).f_code.co_filename) and counts(args, kwargs):
                events[(label, _site())] += 1
            out = original(*args, **kwargs)
            if tags and isinstance(out, torch.Tensor):
                if out is args[0]:  # .cpu() of a CPU tensor is the tensor: tag an alias
                    out = out.view_as(out)
                setattr(out, HOST_TAG, True)
            return out

        self._patched.append((owner, name, original))
        setattr(owner, name, counted)

    def __enter__(self):
        def always(args, kwargs):
            return True

        def to_cpu(args, kwargs):
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            return isinstance(target, str) and target.startswith("cpu")

        def with_device(args, kwargs):
            return kwargs.get("device") is not None

        self._patch(torch.Tensor, "cpu", "Tensor.cpu", always, tags=True)
        self._patch(torch.Tensor, "numpy", "Tensor.numpy", always, tags=False)
        self._patch(torch.Tensor, "tolist", "Tensor.tolist", always, tags=False)
        self._patch(torch.Tensor, "to", 'Tensor.to("cpu")', to_cpu, tags=False)
        for factory in ("tensor", "as_tensor"):
            self._patch(torch, factory, f"torch.{factory}(device=)", with_device, tags=False)
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()
        return super().__exit__(*exc)

    def report(self) -> str:
        lines = [f"{self.total} sync-forcing ops"]
        for (op, site), n in sorted(self.events.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            lines.append(f"  {n:3d} x {op:<24} {site}")
        return "\n".join(lines)


@dataclass
class Step:
    """One model, optimizer, schedule and batch: `run()` is one training step, train.py's own."""

    cfg: config_module.Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    images: torch.Tensor
    targets: list
    iteration: int = 0
    cpu_autocast: bool = False

    def run(self) -> None:
        # When counting, the CPU runs the forward in fp32 (bf16 is emulated on most CPUs, ~30x
        # slower): autocast changes dtypes, not which ops run. The GradScaler runs as configured.
        device = self.images.device
        dtype = autocast_dtype(self.cfg, device)
        enabled = dtype is not None and (device.type == "cuda" or self.cpu_autocast)
        train_step(
            self.model,
            self.images,
            self.targets,
            self.optimizer,
            self.scaler,
            self.schedule,
            self.iteration,
            self.cfg.solver.grad_clip,
            torch.autocast(device.type, dtype=dtype, enabled=enabled),
        )
        self.iteration += 1


def build_step(
    config: str | Path,
    size: tuple[int, int] | None = None,
    batch: int = 2,
    device: str = "cpu",
    precision: str | None = None,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
) -> Step:
    """The model of `config` (random init), its optimizer and one synthetic batch of `batch` images
    of `size` (h, w; default the config's data.min_size x data.max_size) on `device`.
    precision overrides run.precision (the default keeps the config's)."""
    extra = list(overrides) + ([f"run.precision={precision}"] if precision else [])
    cfg = config_module.load(config, extra)
    if size is None:
        size = (cfg.data.min_size, cfg.data.max_size)
    torch.manual_seed(seed)
    model = build_model(cfg.model).train().to(device)
    optimizer = build_optimizer(model, cfg.solver, torch.device(device))
    schedule = LRSchedule(optimizer, cfg.solver)
    # The GradScaler of CUDA AMP; enabled on the CPU too so that its own host reads are counted.
    scaler = torch.amp.GradScaler(
        torch.device(device).type, enabled=cfg.run.precision in ("amp", "auto")
    )
    inputs = make_inputs(batch, *size, num_classes=cfg.model.num_classes, seed=seed).to(device)
    return Step(cfg, model, optimizer, schedule, scaler, inputs.images, inputs.targets)


def count_step(step: Step, warmup: int = 1) -> SyncCounter:
    """Counts one step after `warmup` uncounted ones (caches fill on the first)."""
    for _ in range(warmup):
        step.run()
    with SyncCounter() as counter:
        step.run()
    return counter


def time_steps(step: Step, steps: int, warmup: int = 2) -> list[float]:
    """Seconds of each of `steps` training steps after `warmup` untimed ones (compilation, caches),
    the device synced after each."""
    for _ in range(warmup):
        step.run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step.run()
        if step.images.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def cuda_sync_count(config: str, size: tuple[int, int], batch: int) -> int:
    """On a GPU: one step under torch.cuda.set_sync_debug_mode("warn") after a warm-up step; returns
    the number of synchronizing CUDA calls and prints where each came from. Then the same step under
    "error" when that count is 0, which proves it."""
    step = build_step(config, size, batch, device="cuda")
    step.run()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step.run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for w in syncs:
        print(f"sync: {Path(w.filename).name}:{w.lineno} {str(w.message).splitlines()[0]}")
    if not syncs:
        torch.cuda.set_sync_debug_mode("error")
        try:
            step.run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    print(f"cuda syncs per step ({config}, {size[0]}x{size[1]}, batch {batch}): {len(syncs)}")
    return len(syncs)


def _images_per_s(step: Step, iters: int) -> float:
    for _ in range(3):
        step.run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step.run()
    torch.cuda.synchronize()
    return step.images.shape[0] * iters / (time.perf_counter() - start)


def cuda_graph_core_speed(
    config: str, size: tuple[int, int], batch: int, iters: int = 20
) -> dict[str, float]:
    """On a GPU: training images/s with the backbone + FPN as written and with it captured as a CUDA
    graph (torch.cuda.make_graphed_callables: forward and backward replayed from static buffers)."""
    plain = build_step(config, size, batch, device="cuda")
    result = {"plain": _images_per_s(plain, iters)}
    graphed = build_step(config, size, batch, device="cuda")
    backbone = graphed.model.backbone
    dtype = autocast_dtype(graphed.cfg, graphed.images.device)
    # Autocast's weight-cast cache must be off while capturing (torch.cuda.make_graphed_callables).
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None, cache_enabled=False):
        captured = torch.cuda.make_graphed_callables(
            backbone, (graphed.images,), allow_unused_input=True
        )
    graphed.model.backbone = _ListOutput(captured)
    result["graphed_backbone"] = _images_per_s(graphed, iters)
    print(f"images/s ({config}, {size[0]}x{size[1]}, batch {batch}): {result}")
    return result


class _ListOutput(torch.nn.Module):
    """The graphed callable returns a tuple; the model's stages take the FPN maps as a list."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.inner(images))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu_demo.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=("amp", "auto", "fp32"), default=None)
    parser.add_argument(
        "--time",
        type=int,
        default=0,
        metavar="N",
        help="instead of counting, time N steps after the warm-up (with autocast on the CPU)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before --time's")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    step = build_step(
        args.config, args.size, args.batch, precision=args.precision, overrides=args.overrides
    )
    h, w = step.images.shape[-2:]
    print(
        f"{args.config}, batch {args.batch}, padded {h}x{w}, run.precision={step.cfg.run.precision}"
        f", model.compile={step.cfg.model.compile}, {torch.get_num_threads()} threads"
    )
    if args.time:
        # As train.py: autocast on the CPU too, and no GradScaler there.
        step.cpu_autocast = True
        step.scaler = torch.amp.GradScaler("cpu", enabled=False)
        times = time_steps(step, args.time, args.warmup)
        print(
            f"median {statistics.median(times):.3f} s per step; steps "
            + " ".join(f"{t:.3f}" for t in times)
        )
        return 0
    print(count_step(step).report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
