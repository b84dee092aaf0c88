"""run_and_time.sh's argument handling (checked before any environment setup or training)."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "run_and_time.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_describes_both_modes():
    proc = run("--help")
    assert proc.returncode == 0
    assert "DATADIR" in proc.stdout and "CPU demo" in proc.stdout and "RESULT," in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option '--bogus'"),
        (["--config"], "--config needs a value"),
        (["--resume"], "--resume needs a run directory"),
        (["positional"], "unexpected argument 'positional'"),
    ],
)
def test_bad_arguments_are_named(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
