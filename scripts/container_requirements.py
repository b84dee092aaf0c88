"""Rewrite requirements.txt for a container that already has a CUDA-enabled torch.

The packages of KEPT stay as the image has them (pinned to the installed versions, so no other
package can pull in a replacement: NGC's torch is compiled against its numpy), and DALI is taken in
the variant for the image's CUDA major version. scripts/render_dockerfile.py applies the same
rewrite to render the image's pins.
Usage: python scripts/container_requirements.py requirements.txt > container-requirements.txt
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

KEPT = ("torch", "torchvision", "numpy")


def rewrite(lines: list[str], torch_cuda: str, installed=importlib.metadata.version) -> list[str]:
    """The requirement lines for an image whose torch is built with CUDA `torch_cuda` ("12.6").

    installed: name -> installed version (raises importlib.metadata.PackageNotFoundError when
    absent); a KEPT package that is absent is left out.
    """
    major = torch_cuda.split(".")[0]
    out = []
    for line in lines:
        name = re.split(r"[=<>!~\s]", line.strip(), maxsplit=1)[0].lower()
        if not name or name.startswith("#"):
            continue
        if name in KEPT:
            try:
                out.append(f"{name}=={installed(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        elif name.startswith("nvidia-dali-cuda"):
            out.append(re.sub(r"nvidia-dali-cuda\d+", f"nvidia-dali-cuda{major}0", line.strip()))
        else:
            out.append(line.strip())
    return out


def main() -> None:
    import torch

    if not torch.version.cuda:
        sys.exit("container_requirements: this torch has no CUDA; use the .venv setup instead")
    with open(sys.argv[1]) as f:
        print("\n".join(rewrite(f.read().splitlines(), torch.version.cuda)))


if __name__ == "__main__":
    main()
