"""Render Dockerfile.backendai from docker/Dockerfile.backendai.in and requirements.txt.

Every fact about the base image comes from one table, NGC_RELEASES, and the base is chosen from it:
the newest NGC PyTorch release whose torch build still has kernels for the V100 (sm_70). The labels
(base-distro, runtime-path), the CUDA arch list, the DALI variant and the Python the pins must
resolve for are all rendered from that row; the image's pip pins are derived from requirements.txt,
never typed by hand: DALI is taken in the variant for the image's CUDA major version
(scripts/container_requirements.py's mapping) and the packages the base image's torch is built with
are kept as the image has them.

Usage: python scripts/render_dockerfile.py            # rewrite Dockerfile.backendai
       python scripts/render_dockerfile.py --check    # exit 1 when the committed file is stale
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docker" / "Dockerfile.backendai.in"
OUTPUT = ROOT / "Dockerfile.backendai"
REQUIREMENTS = ROOT / "requirements.txt"
SERVICE_DEFS = ROOT / "docker" / "service-defs"
PROJECT_DIR = "/opt/mlperf-maskrcnn"
# V100, A100, H100: the job's platform first; setup.py reads this at build time. Each must be in
# the base image's torch arch list (tests/test_dockerfile.py checks it).
ARCH_LIST = "7.0;8.0;9.0"
# The interactive services the image advertises (name, port). Each has a definition in
# docker/service-defs/<name>.json, copied to /etc/backend.ai/service-defs, so the kernel runner
# starts it with our settings instead of its built-in ones (tensorboard at /home/work/logs, jupyter
# with NotebookApp options that Jupyter Server 2 ignores). 8091/8090/6006 are the ports Lablup's
# own NGC images use (lablup/backend.ai-kernels vendor/ngc-pytorch/Dockerfile.24.12-*).
SERVICES = (("jupyterlab", 8090), ("tensorboard", 6006))
# /dev/shm of a session started without `--resource-opts shmem=` (Backend.AI's default is 64m).
# Shared memory holds the batches the PyTorch DataLoader's workers hand to the training process
# (DALI decodes in-process and needs none) and NCCL's intra-node SHM transport. At the DGX-1
# config one padded image is 3 x 800 x 1344 float32 = 12.9 MB; 8 ranks x 2 workers x 2 batches in
# flight hold 8 x 4 x 6 images = 2.5 GB for training and 8 x 4 x 2 images = 0.8 GB for the
# (asynchronous) evaluation (tests/test_dockerfile.py recomputes this from the config). 8g leaves
# 2.4x that, room for NCCL's SHM buffers when P2P is unavailable. Backend.AI adds it to the image's
# minimum memory (manager compute_kernel_resources_rule.py, _apply_shmem_to_mem_min), so every
# session needs mem >= min.mem + shmem = 16g.
SHMEM = "8g"
MIN_MEM = "8g"


@dataclass(frozen=True)
class NgcRelease:
    """One NGC PyTorch release (nvcr.io/nvidia/pytorch:<release>-py3) as its vendors document it.

    arch_list: TORCH_CUDA_ARCH_LIST of the image's torch build (space-separated, as NGC sets it);
    torch and cuda: major.minor of the image's torch and CUDA toolkit.
    """

    release: str
    ubuntu: str
    python: str
    cuda: str
    torch: str
    arch_list: str
    glibc: str
    python_path: str = "/usr/bin/python3"

    @property
    def tag(self) -> str:
        return f"nvcr.io/nvidia/pytorch:{self.release}-py3"

    @property
    def base_distro(self) -> str:
        return f"ubuntu{self.ubuntu}"

    @property
    def platforms(self) -> list[str]:
        """The wheel platform tags the image's pip accepts: manylinux up to the image's glibc."""
        newest = int(self.glibc.split(".")[1])
        return ["manylinux2014_x86_64"] + [
            f"manylinux_2_{minor}_x86_64" for minor in range(17, newest + 1)
        ]

    def runs_on(self, capability: str) -> bool:
        """Whether the torch build has kernels for compute capability `capability` ("7.0")."""
        return capability in {arch.removesuffix("+PTX") for arch in self.arch_list.split()}


_VOLTA_TO_HOPPER = "5.2 6.0 6.1 7.0 7.2 7.5 8.0 8.6 8.7 9.0+PTX"
_TURING_TO_BLACKWELL = "7.5 8.0 8.6 9.0 10.0 12.0+PTX"
# Evidence, per release:
# - OS, Python, torch and CUDA: lablup/backend.ai-kernels vendor/ngc-pytorch, the file names
#   Dockerfile.24.10-pytorch2.5-py310-cuda12.6, Dockerfile.24.12-pytorch2.6-py312-cuda12.6 and
#   Dockerfile.25.01-pytorch2.6-py312-cuda12.8 (PRs #311, #305, #306); the 24.12 file (commit
#   20c790a8) sets ai.backend.base-distro="ubuntu24.04" and /usr/local/lib/python3.12/dist-packages,
#   the 24.10 one (python3.10) is the last 22.04 image.
# - Arch lists: the 22.04/CUDA 12.x images set TORCH_CUDA_ARCH_LIST="5.2 ... 7.0 ... 9.0+PTX" (an
#   nvcr.io/nvidia/pytorch:24.01-py3 environment dump); the CUDA 12.8+ images set "7.5 8.0 8.6 9.0
#   10.0 12.0+PTX", no 7.0, as upstream PyTorch's cu128 builds dropped sm_70 (pytorch/pytorch
#   #147607; moi90/pytorch_compute_capabilities table.md: 2.7.0 cuda12.8 starts at sm_75, cuda12.6
#   has sm_70). CUDA 13 removed Volta from the toolkit altogether (NGC 25.08+).
# - glibc: Ubuntu's own (2.35 in 22.04 jammy, 2.39 in 24.04 noble); it bounds the manylinux tags.
NGC_RELEASES = (
    NgcRelease("24.10", "22.04", "3.10", "12.6", "2.5", _VOLTA_TO_HOPPER, "2.35"),
    NgcRelease("24.12", "24.04", "3.12", "12.6", "2.6", _VOLTA_TO_HOPPER, "2.39"),
    NgcRelease("25.01", "24.04", "3.12", "12.8", "2.6", _TURING_TO_BLACKWELL, "2.39"),
)


def newest_release_for(capability: str, releases=NGC_RELEASES) -> NgcRelease:
    """The newest release whose torch runs on `capability`; ValueError when none does."""
    fitting = [r for r in releases if r.runs_on(capability)]
    if not fitting:
        raise ValueError(f"no NGC PyTorch release in the table runs on sm_{capability}")
    return max(fitting, key=lambda r: tuple(int(p) for p in r.release.split(".")))


BASE = newest_release_for("7.0")


def _container_requirements():
    """scripts/container_requirements.py: KEPT and rewrite(lines, torch_cuda), the DALI mapping."""
    spec = importlib.util.spec_from_file_location(
        "container_requirements", ROOT / "scripts" / "container_requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONTAINER = _container_requirements()
# Never installed: the image's builds stay (its torch is compiled against its numpy).
KEPT: tuple[str, ...] = _CONTAINER.KEPT


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[\s]", requirement.strip(), maxsplit=1)[0].lower()


def image_pins(requirements: str, base: NgcRelease = BASE) -> list[str]:
    """The `name==version` lines the image installs, in requirements.txt order.

    requirements: the text of requirements.txt (exact `==` pins). Raises ValueError naming the
    line when a pin is not exact.
    """
    lines = [ln.strip() for ln in requirements.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    for line in lines:
        if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", line):
            raise ValueError(f"requirements.txt: {line!r} is not an exact `name==version` pin")
    return _CONTAINER.rewrite([ln for ln in lines if _name(ln) not in KEPT], base.cuda)


def render(template: str, requirements: str, base: NgcRelease = BASE) -> str:
    """The Dockerfile text: template placeholders `{{NAME}}` filled; an unknown one is an error."""
    pins = image_pins(requirements, base)
    values = {
        "GENERATED_NOTE": "Generated by scripts/render_dockerfile.py from "
        "docker/Dockerfile.backendai.in\n# and requirements.txt: edit those, then rerun it.",
        "BASE_IMAGE": base.tag,
        "UBUNTU": base.ubuntu,
        "BASE_DISTRO": base.base_distro,
        "CUDA": base.cuda,
        "TORCH": base.torch,
        "TORCH_ARCH_LIST": base.arch_list,
        "PYTHON": base.python,
        "PYTHON_PATH": base.python_path,
        "KEPT": " ".join(KEPT),
        "PROJECT_DIR": PROJECT_DIR,
        "ARCH_LIST": ARCH_LIST,
        "SHMEM": SHMEM,
        "MIN_MEM": MIN_MEM,
        "SERVICE_PORTS": ",".join(f"{name}:http:{port}" for name, port in SERVICES),
        "SERVICE_MODULES": ", ".join(name for name, _ in SERVICES),
        "PINS": " \\\n".join(f"        {pin}" for pin in pins),
    }

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{TEMPLATE.name}: unknown placeholder {{{{{key}}}}}")
        return values[key]

    return re.sub(r"\{\{([A-Z_]+)\}\}", fill, template)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if Dockerfile.backendai is not up to date"
    )
    parser.add_argument(
        "--print",
        choices=("release", "pins"),
        help="print one rendered fact (the NGC release or the image's pins) "
        "instead of writing the file; scripts/build_image.sh tags the image with the release",
    )
    args = parser.parse_args()
    if args.print == "release":
        print(BASE.release)
        return
    if args.print == "pins":
        print("\n".join(image_pins(REQUIREMENTS.read_text())))
        return
    text = render(TEMPLATE.read_text(), REQUIREMENTS.read_text())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.exit(f"{OUTPUT.name} is stale: run python scripts/render_dockerfile.py")
        return
    OUTPUT.write_text(text)


if __name__ == "__main__":
    main()
