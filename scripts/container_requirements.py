"""Rewrite requirements.txt for a container that already has a CUDA-enabled torch.

torch and torchvision stay as the image has them (pinned to the installed versions so no other package
can pull in a replacement), and DALI is taken in the variant for the image's CUDA major version.
Usage: python scripts/container_requirements.py requirements.txt > container-requirements.txt
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

import torch


def rewrite(lines: list[str], torch_cuda: str) -> list[str]:
    major = torch_cuda.split(".")[0]
    out = []
    for line in lines:
        name = re.split(r"[=<>!~\s]", line.strip(), maxsplit=1)[0].lower()
        if not name or name.startswith("#"):
            continue
        if name in ("torch", "torchvision"):
            try:
                out.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        elif name.startswith("nvidia-dali-cuda"):
            out.append(re.sub(r"nvidia-dali-cuda\d+", f"nvidia-dali-cuda{major}0", line.strip()))
        else:
            out.append(line.strip())
    return out


def main() -> None:
    if not torch.version.cuda:
        sys.exit("container_requirements: this torch has no CUDA; use the .venv setup instead")
    with open(sys.argv[1]) as f:
        print("\n".join(rewrite(f.read().splitlines(), torch.version.cuda)))


if __name__ == "__main__":
    main()
