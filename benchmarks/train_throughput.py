"""Training throughput (images/s) and peak GPU memory of our Mask R-CNN and torchvision's.

    python benchmarks/train_throughput.py --device cuda --batch-sizes 2 8 --image-size 800 1333 \\
        --iters 50 --warmup 10 --json throughput.json [--amp | --no-amp]

For every batch size, each model (built, with its synthetic inputs, by benchmarks/model_cases.py)
runs `--warmup` untimed training steps, then `--iters` timed ones between two device syncs. AMP is
fp16 autocast with a GradScaler on CUDA, bf16 autocast on the CPU. Peak memory is
torch.cuda.max_memory_allocated from just before the model is built (weights, optimizer state and
activations), null on the CPU. A case that runs out of GPU memory is recorded with its error and the
run goes on. Prints a table and writes the JSON (schema in `run`'s docstring).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

# Run as a script from anywhere: the repository root holds the `harness` and `benchmarks` packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torchvision

from benchmarks.conftest import sync
from benchmarks.model_cases import MODELS, amp_dtype, build_case, make_inputs

PRECISION_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _measure(
    which: str, batch_size: int, image_size: tuple[int, int], args: argparse.Namespace
) -> dict:
    """One model at one batch size: {"model", "batch_size", "images_per_s", "s_per_iter",
    "peak_memory_bytes", "error"}."""
    device = torch.device(args.device)
    result = {"model": which, "batch_size": batch_size, "images_per_s": None, "s_per_iter": None}
    result.update(peak_memory_bytes=None, error=None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        case = build_case(which, make_inputs(batch_size, *image_size), device)
        autocast = amp_dtype(device) if args.amp else None
        scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
        for _ in range(args.warmup):
            case.step(autocast, scaler)
        sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            case.step(autocast, scaler)
        sync(device)
        elapsed = time.perf_counter() - start
    except torch.OutOfMemoryError as error:
        result["error"] = f"out of memory: {str(error).splitlines()[0]}"
        return result
    result["images_per_s"] = batch_size * args.iters / elapsed
    result["s_per_iter"] = elapsed / args.iters
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def run(args: argparse.Namespace) -> dict:
    """Measure every (batch size, model) pair. Returns the report written as JSON:

    {"device": str, "device_name": str, "torch": str, "torchvision": str, "amp": bool,
     "precision": "fp32" | "fp16" | "bf16", "image_size": [h, w], "iters": int, "warmup": int,
     "results": [{"model": "ours" | "peer", "batch_size": int, "images_per_s": float | null,
                  "s_per_iter": float | null, "peak_memory_bytes": int | null, "error": str | null}],
     "speedup": {"<batch size>": ours images/s over peer images/s, or null}}
    """
    device = torch.device(args.device)
    if device.type == "cuda":
        # Both models see one fixed input shape, so cuDNN's per-shape algorithm search pays off.
        torch.backends.cudnn.benchmark = True
    image_size = tuple(args.image_size)
    results = [
        _measure(which, batch_size, image_size, args)
        for batch_size in args.batch_sizes
        for which in args.models
    ]
    speedup = {}
    for batch_size in args.batch_sizes:
        rates = {r["model"]: r["images_per_s"] for r in results if r["batch_size"] == batch_size}
        ours, peer = rates.get("ours"), rates.get("peer")
        speedup[str(batch_size)] = ours / peer if ours and peer else None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "amp": args.amp,
        "precision": PRECISION_NAMES[amp_dtype(device)] if args.amp else "fp32",
        "image_size": list(image_size),
        "iters": args.iters,
        "warmup": args.warmup,
        "results": results,
        "speedup": speedup,
    }


def format_table(report: dict) -> str:
    """The report as a fixed-width text table, one row per (batch size, model)."""
    lines = [
        f"{report['device']} ({report['device_name']}), {report['precision']}, "
        f"{report['image_size'][0]}x{report['image_size'][1]}, {report['iters']} iters",
        f"{'model':<6} {'batch':>5} {'img/s':>9} {'s/iter':>9} {'peak MiB':>9}  speedup",
    ]
    for r in report["results"]:
        if r["error"]:
            lines.append(f"{r['model']:<6} {r['batch_size']:>5}  {r['error']}")
            continue
        peak = r["peak_memory_bytes"]
        peak_text = f"{peak / 2**20:9.0f}" if peak is not None else f"{'-':>9}"
        ratio = report["speedup"][str(r["batch_size"])]
        ratio_text = f"  {ratio:.2f}x" if r["model"] == "ours" and ratio else ""
        lines.append(
            f"{r['model']:<6} {r['batch_size']:>5} {r['images_per_s']:9.2f} "
            f"{r['s_per_iter']:9.3f} {peak_text}{ratio_text}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[800, 1333],
        metavar=("H", "W"),
        help="unpadded image height and width (padded to a multiple of 32)",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fp16 autocast + GradScaler on CUDA, bf16 autocast on the CPU (default on)",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if min(args.image_size) < 32:
        parser.error(f"--image-size must be at least 32 on each side, got {args.image_size}")
    if args.iters < 1 or args.warmup < 0:
        parser.error(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible (use --device cpu for a smoke run)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
