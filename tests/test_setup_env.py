"""scripts/setup_env.sh's HARNESS_VENV mode, run against a fake NGC python3.

The fake `python3` first on PATH answers the script's probes as a stock NGC image would (a CUDA
torch that sees a GPU, its Python and torch versions) and creates the venv as a recording stand-in
whose pip and setup.py calls are logged instead of run. The script itself runs for real, from a copy
of the checkout's files it reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON3 = """#!/usr/bin/env bash
# A stock NGC image's python3: CUDA torch present when FAKE_CUDA=1.
echo "python3 $*" >>"$FAKE_LOG"
if [[ "$1" == "-" ]]; then cat >/dev/null; [[ "${FAKE_CUDA:-1}" == 1 ]]; exit; fi
if [[ "$1" == "-c" ]]; then echo "/usr/bin/python3 3.12.3 2.6.0a0+nv24.12"; exit 0; fi
if [[ "$1 $2" == "-m venv" ]]; then
  dir="${@: -1}"; mkdir -p "$dir/bin"; echo "include-system-site-packages = true" >"$dir/pyvenv.cfg"
  cp "$FAKE_VENV_PYTHON" "$dir/bin/python"; chmod +x "$dir/bin/python"; exit 0
fi
exit 3
"""

FAKE_VENV_PYTHON = """#!/usr/bin/env bash
# The venv's python: pip and builds are recorded; container_requirements prints the pins.
echo "venv-python $*" >>"$FAKE_LOG"
case "$1" in
  -m | setup.py) exit 0 ;;
  -c) [[ "$2" == *torch.__version__* ]] && echo "2.6.0a0+nv24.12"; exit 0 ;;
  */container_requirements.py) grep -v '^#' "$2"; exit 0 ;;
esac
exit 3
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of what setup_env.sh reads, a fake python3 on PATH and the environment to run it."""
    root = tmp_path / "checkout"
    for name in ("scripts/setup_env.sh", "scripts/container_requirements.py", "setup.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "csrc", root / "csrc")
    (root / "requirements.txt").write_text("torch==2.14.1\npyyaml==6.0.4\n")
    (root / "harness").mkdir()
    (root / "harness" / "_C.cpython-fake.so").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "venv-python").write_text(FAKE_VENV_PYTHON)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_VENV_PYTHON": str(tmp_path / "venv-python"),
        "FORCE_CUDA": "0",
        "HARNESS_VENV": str(tmp_path / "vfolder" / "harness-venv"),
    }
    return root, env, tmp_path / "calls.log"


def source(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", 'source scripts/setup_env.sh && echo "PY=$PY"'],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_venv_over_the_images_torch_is_made_once_and_reused(checkout):
    root, env, log = checkout
    venv = Path(env["HARNESS_VENV"])
    first = source(root, env)
    assert first.returncode == 0, first.stderr
    assert f"PY={venv}/bin/python" in first.stdout
    made = calls(log)
    assert f"python3 -m venv --system-site-packages {venv}" in made
    # The image's torch stays: only the other pins go into the venv.
    install = f"venv-python -m pip install -q -r {venv}/container-requirements.txt"
    assert install in made
    assert (venv / "container-requirements.txt").read_text().split() == [
        "torch==2.14.1",
        "pyyaml==6.0.4",
    ]
    assert (venv / ".harness-stamp").is_file()

    # A later session finds the stamp current: no venv, no pip.
    again = source(root, env)
    assert again.returncode == 0, again.stderr
    assert not [c for c in calls(log) if "venv --system" in c or "pip install" in c]

    # A changed requirements.txt installs again.
    (root / "requirements.txt").write_text("torch==2.14.1\npyyaml==6.0.4\ntqdm==4.70.1\n")
    changed = source(root, env)
    assert changed.returncode == 0, changed.stderr
    assert install in calls(log)


def test_venv_needs_an_image_with_cuda_torch(checkout):
    root, env, _ = checkout
    proc = source(root, {**env, "FAKE_CUDA": "0"})
    assert proc.returncode != 0
    assert "HARNESS_VENV" in proc.stderr and "CUDA-enabled torch" in proc.stderr
    assert not Path(env["HARNESS_VENV"]).exists()


def test_venv_refuses_a_folder_that_is_not_one(checkout):
    root, env, log = checkout
    folder = Path(env["HARNESS_VENV"])
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("user data")
    proc = source(root, env)
    assert proc.returncode != 0 and "is not a virtual environment" in proc.stderr
    assert (folder / "precious.txt").read_text() == "user data"
    assert not [c for c in calls(log) if "venv" in c]


def test_container_requirements_keep_the_images_torch_and_numpy():
    import importlib.metadata

    from scripts.render_dockerfile import _container_requirements

    image = {"torch": "2.6.0a0+df5bbc0", "numpy": "1.26.4"}

    def installed(name: str) -> str:
        if name not in image:
            raise importlib.metadata.PackageNotFoundError(name)
        return image[name]

    lines = ["torch==2.14.1", "torchvision==0.29.1", "numpy==2.4.6", "# note", ""]
    lines += ["nvidia-dali-cuda130==2.4.0", "pyyaml==6.0.4"]
    assert _container_requirements().rewrite(lines, "12.6", installed) == [
        "torch==2.6.0a0+df5bbc0",  # pinned to the image's build, so nothing replaces it
        "numpy==1.26.4",  # torchvision is absent from this image: left out
        "nvidia-dali-cuda120==2.4.0",
        "pyyaml==6.0.4",
    ]
