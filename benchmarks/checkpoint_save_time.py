"""How long rank 0's checkpoint save takes at a config's model size: the stop path's budget.

    python benchmarks/checkpoint_save_time.py [--config configs/dgx1_v100x8.yaml] [--out DIR]
        [--repeats 3]

Destroying a Backend.AI session stops the container with `docker stop`: SIGINT, then SIGKILL 10 s
later (lablup/backend.ai, src/ai/backend/agent/docker/agent.py: StopSignal SIGINT, the stop API's
default 10 s timeout). On a stop harness.train saves the full training state on rank 0 with
harness.checkpoint.save_checkpoint; this script times exactly that call. It builds the config's
model (no pretrained weights are read: only the shapes matter), an optimizer whose momentum
buffers exist (one step on zero gradients), and the state harness.train saves (weights, optimizer,
scaler, position, RNG, config), then saves it `--repeats` times into DIR (default: a temporary
folder; pass the vfolder to time the real destination). Prints the checkpoint size and the
seconds per save (atomic write, fsync, SHA-256 digest included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script from anywhere: the repository root holds the `harness` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from harness import checkpoint, config
from harness.model import build_model
from harness.solver import build_optimizer


def training_state(config_path: Path) -> dict:
    cfg = config.load(config_path, ["model.backbone.weights="])
    model = build_model(cfg.model)
    device = torch.device("cpu")
    optimizer = build_optimizer(model, cfg.solver, device)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers a real run's checkpoint holds
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return checkpoint.training_state(model, optimizer, scaler, 1000, 3, 96, cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("configs/dgx1_v100x8.yaml"))
    p.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: a temp one)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats} must be >= 1")

    state = training_state(args.config)
    params = sum(t.numel() for t in state["model"].values())
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        seconds, size = [], 0
        for i in range(args.repeats):
            state["iteration"] = 1000 + i
            start = time.perf_counter()
            path = checkpoint.save_checkpoint(tmp, state, keep=1)
            seconds.append(time.perf_counter() - start)
            size = path.stat().st_size
    print(
        f"{args.config}: {params / 1e6:.1f} M values in the model state, checkpoint "
        f"{size / 2**20:.0f} MiB; save_checkpoint {statistics.median(seconds):.2f} s median of "
        f"{args.repeats} ({', '.join(f'{s:.2f}' for s in seconds)} s) into {args.out or 'a temp dir'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
