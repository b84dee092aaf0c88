"""benchmarks/gpu_suite.sh: syntax and a quick clear refusal where there is no GPU (shellcheck:
tests/test_shellcheck.py)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"

# On a GPU machine the suite would really run (minutes); these tests are about its refusal.
needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is visible: the suite would run for minutes"
)


def run_suite(tmp_path: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "PY": sys.executable}
    return subprocess.run(
        ["bash", str(SUITE), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_is_executable_and_parses():
    assert os.access(SUITE, os.X_OK)
    subprocess.run(["bash", "-n", str(SUITE)], check=True)


def test_embedded_summary_python_parses():
    text = SUITE.read_text()
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", text, re.S)
    assert match, "the summary heredoc is missing"
    ast.parse(match.group(1))


def test_usage_error_without_out_dir(tmp_path):
    proc = run_suite(tmp_path, os.environ["PATH"])
    assert proc.returncode == 2
    assert "usage: benchmarks/gpu_suite.sh OUT_DIR" in proc.stderr


@needs_no_gpu
def test_refuses_quickly_without_nvidia_smi(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    # bash itself is found by absolute path; PATH holds no nvidia-smi.
    proc = run_suite(tmp_path, f"{empty}:/usr/bin:/bin", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "no NVIDIA GPU is usable here (nvidia-smi not found)" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing should be written without a GPU"


@needs_no_gpu
def test_refuses_when_torch_sees_no_gpu(tmp_path):
    # A driver tool that lists a GPU while torch sees none (e.g. a CPU-only torch build).
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    proc = run_suite(tmp_path, f"{fake}:/usr/bin:/bin", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "torch.cuda.is_available() is False" in proc.stderr
    assert sys.executable in proc.stderr


def test_gpu_only_build_leaves_no_stale_build_stamp(tmp_path):
    """The suite builds for GPU 0's arch only; scripts/setup_env.sh's .build-stamp must not keep
    claiming the earlier build, or the next run would reuse this one-arch extension."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(SUITE, repo / "benchmarks" / "gpu_suite.sh")
    (repo / ".build-stamp").write_text("stamp of the all-archs build\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    # A Python that reports compute capability 8.0 and records what setup.py was asked to build.
    py = fake / "python"
    py.write_text(
        "#!/bin/bash\n"
        'if [[ "$1" == setup.py ]]; then\n'
        '  echo "$TORCH_CUDA_ARCH_LIST $(ls .build-stamp 2>/dev/null)" > built.txt\n'
        'elif [[ "$1" == -c ]]; then echo 8.0; fi\n'
    )
    py.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "PY": str(py)}
    subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (repo / "built.txt").read_text().split() == ["8.0"]
    assert not (repo / ".build-stamp").exists()
