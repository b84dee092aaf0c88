"""Print what a bug report needs: `python -m harness.collect_env`."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first_installed(*dists: str) -> str:
    for dist in dists:
        version = _version(dist)
        if version != "not installed":
            return f"{dist} {version}"
    return "not installed"


def _torch_lines() -> list[str]:
    import torch

    lines = [f"torch: {torch.__version__} (built with CUDA {torch.version.cuda or 'none'})"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        lines.append(f"GPUs: {count}")
        for i in range(count):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"  [{i}] {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}"
            )
        lines.append(f"cuDNN: {torch.backends.cudnn.version()}")
        nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        lines.append(f"NCCL: {'.'.join(map(str, nccl)) if nccl else 'unavailable'}")
    else:
        lines.append("GPUs: none visible (torch.cuda.is_available() is False)")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    return lines


def _extension_lines() -> list[str]:
    from harness import extension

    try:
        ext = extension.load()
    except extension.ExtensionError as exc:
        return [f"harness._C: PROBLEM: {exc}"]
    kind = f"CUDA, archs {', '.join(ext.cuda_archs())}" if ext.cuda_compiled() else "CPU only"
    return [f"harness._C: {kind}; built against torch {ext.torch_version()}; {ext.__file__}"]


def report() -> str:
    lines = [
        f"Python: {sys.version.split()[0]} ({sys.executable})",
        f"Platform: {platform.platform()}",
    ]
    try:
        lines += _torch_lines()
    except ImportError as exc:
        lines.append(f"torch: not importable ({exc})")
    lines += [
        f"torchvision: {_version('torchvision')}",
        f"DALI: {_first_installed('nvidia-dali-cuda130', 'nvidia-dali-cuda120', 'nvidia-dali-cuda110')}",
        f"pycocotools: {_version('pycocotools')}",
        f"faster-coco-eval: {_version('faster-coco-eval')}",
        f"mlperf-logging: {_version('mlperf-logging')}",
        f"apex: {'importable' if importlib.util.find_spec('apex') else 'absent'}",
    ]
    lines += _extension_lines()
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
