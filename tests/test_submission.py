"""The submission package: five short CPU runs (scripts/run_n.sh) packaged by harness.submission
pass the official package checker and result summarizer; missing, truncated, failed runs and a
wrong run count are refused with the run named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import submission
from harness.data.synthetic import generate
from tests.test_mlperf_log import records
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parent.parent


def _log_line(key: str, value, time_ms: int, event: str = "POINT_IN_TIME", **metadata) -> str:
    record = {
        "namespace": "",
        "time_ms": time_ms,
        "event_type": event,
        "key": key,
        "value": value,
        "metadata": metadata,
    }
    return ":::MLLOG " + json.dumps(record)


def fake_run(directory: Path, minutes: float, status: str = "success") -> Path:
    """A run directory whose mlperf.log has what harness.submission reads (not a checker-valid log:
    the end-to-end test below packages real runs)."""
    directory.mkdir(parents=True)
    start = 1_000_000
    lines = [
        _log_line("submission_benchmark", "maskrcnn", start),
        _log_line("submission_org", "Test org", start),
        _log_line("submission_division", "open", start),
        _log_line("submission_status", "onprem", start),
        _log_line("submission_platform", "2xCPU", start),
        _log_line("run_start", None, start, "INTERVAL_START"),
        _log_line("run_stop", None, start + int(minutes * 60_000), "INTERVAL_END", status=status),
    ]
    (directory / "mlperf.log").write_text("\n".join(lines) + "\n")
    return directory


def build(capsys, runs: list[Path], out: Path, *extra: str) -> tuple[int, str, str]:
    """harness.submission's main in this process: (exit status, stdout, stderr)."""
    args = ["--runs", *map(str, runs), "--system", "cpu_test", "--out", str(out), *extra]
    code = submission.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def five_fake_runs(tmp_path) -> list[Path]:
    return [fake_run(tmp_path / f"run{i}", minutes) for i, minutes in enumerate([3, 1, 5, 2, 4])]


def test_olympic_mean_drops_the_fastest_and_the_slowest(five_fake_runs):
    runs = [submission.read_run(path) for path in five_fake_runs]
    assert submission.olympic_minutes(runs) == pytest.approx((2 + 3 + 4) / 3)


def test_package_layout_and_system_description(five_fake_runs, tmp_path, capsys):
    out = tmp_path / "package"
    code, stdout, stderr = build(
        capsys, five_fake_runs, out, "--no-check", "--set", "host_storage_type=NVMe SSD"
    )
    assert code == 0, stderr
    results = out / "results" / "cpu_test" / "maskrcnn"
    assert sorted(p.name for p in results.iterdir()) == [f"result_{i}.txt" for i in range(5)]
    assert (results / "result_2.txt").read_text() == (five_fake_runs[2] / "mlperf.log").read_text()
    desc = json.loads((out / "systems" / "cpu_test.json").read_text())
    assert set(desc) == set(submission.SYSTEM_FIELDS)
    assert desc["submitter"] == "Test org" and desc["division"] == "open"
    assert desc["status"] == "onprem" and desc["host_storage_type"] == "NVMe SSD"
    assert desc["host_processor_vcpu_count"].isdigit() and desc["framework"].startswith("PyTorch")
    impl = out / "benchmarks" / "maskrcnn" / "implementations" / "pytorch"
    for name in ("README.md", "harness/train.py", "harness/submission.py", "configs/cpu_demo.yaml"):
        assert (impl / name).is_file(), name
    assert "olympic mean of the runs' logs: 3.0000 minutes" in stdout


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "no such directory"),
        ("no_log", "no mlperf.log"),
        ("truncated", "has no run_stop (truncated"),
        ("failed", "run_stop status is 'aborted'"),
    ],
)
def test_bad_run_is_named(five_fake_runs, tmp_path, capsys, damage, message):
    bad = five_fake_runs[3]
    if damage == "missing":
        shutil.rmtree(bad)
    elif damage == "no_log":
        (bad / "mlperf.log").unlink()
    elif damage == "truncated":
        lines = (bad / "mlperf.log").read_text().splitlines()
        (bad / "mlperf.log").write_text("\n".join(lines[:-1]) + "\n")
    else:
        shutil.rmtree(bad)
        fake_run(bad, 2, status="aborted")
    code, _, stderr = build(capsys, five_fake_runs, tmp_path / "package", "--no-check")
    assert code == 2
    assert f"run {bad}: " in stderr and message in stderr
    assert not (tmp_path / "package").exists()


def test_wrong_run_count_and_bad_options(five_fake_runs, tmp_path, capsys):
    package = tmp_path / "package"
    code, _, stderr = build(capsys, five_fake_runs[:4], package, "--no-check")
    assert code == 2 and "needs 5 runs" in stderr and "got 4" in stderr
    code, _, stderr = build(capsys, five_fake_runs, package, "--no-check", "--division", "closed")
    assert code == 2 and "logged another submission_division" in stderr
    code, _, stderr = build(capsys, five_fake_runs, package, "--no-check", "--set", "gpu_color=1")
    assert code == 2 and "unknown system description field(s) gpu_color" in stderr
    (tmp_path / "exists").mkdir()
    code, _, stderr = build(capsys, five_fake_runs, tmp_path / "exists", "--no-check")
    assert code == 2 and "exists" in stderr


STUB_PYTHON = """#!/usr/bin/env bash
# Stands in for python in scripts/run_n.sh: `-m harness.train ...` makes a run directory named by
# the seed (seed 13 fails); `-m harness.submission ...` prints its arguments.
if [[ "$2" == harness.train ]]; then
  for arg in "$@"; do
    case "$arg" in run.output_dir=*) dir=${arg#*=} ;; run.seed=*) seed=${arg#*=} ;; esac
  done
  mkdir -p "$dir/run-$seed"
  echo "train $* HARNESS_DROP_CACHES=$HARNESS_DROP_CACHES"
  [[ $seed != 13 ]]
else
  echo "package $*"
fi
"""


@pytest.mark.parametrize("seed0", [10, 12])
def test_run_n_runs_seeds_back_to_back_and_packages(tmp_path, seed0):
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    proc = subprocess.run(
        [
            *("bash", str(ROOT / "scripts" / "run_n.sh"), "2", "--dir", str(tmp_path / "runs")),
            *("--package", "sys1", str(tmp_path / "package"), "--config", "configs/x.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PY": str(stub),
            "RUN_N_SEED": str(seed0),
        },
    )
    runs = [tmp_path / "runs" / f"run-{seed0 + i}" for i in range(2)]
    assert all(run.is_dir() for run in runs)
    assert proc.stdout.count("--config configs/x.yaml") == 2
    # Each run drops the cache itself (harness/cache.py), open-division runs included.
    assert proc.stdout.count("HARNESS_DROP_CACHES=1") == 2
    # Packaging follows even after a failed run: harness.submission names the failed run.
    assert f"package -m harness.submission --runs {runs[0]} {runs[1]} --system sys1" in proc.stdout
    if seed0 == 12:
        assert "run 2 (seed 13) exited with status 1" in proc.stderr
    assert proc.returncode == 0  # the stub's packaging "passes"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_n.sh"), "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Usage: scripts/run_n.sh N" in proc.stderr


@pytest.mark.slow
def test_five_cpu_runs_package_passes_the_checkers(tmp_path):
    """scripts/run_n.sh runs five tiny open-division CPU runs and packages them; the official
    package checker passes and the result summarizer scores the olympic mean of the logs."""
    data = generate(tmp_path / "data", train=8, val=4, seed=3, size=64)
    out = tmp_path / "package"
    proc = subprocess.run(
        [
            *("bash", str(ROOT / "scripts" / "run_n.sh"), "5", "--dir", str(tmp_path / "runs")),
            *("--package", "cpu_test", str(out), "--config", "configs/cpu_demo.yaml", *TINY),
            *(f"data.root={data}", "solver.max_iter=2", "solver.ims_per_batch=2"),
            *("run.target_bbox_map=0", "run.target_segm_map=0"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
        # Not dropping the page cache, which would slow every job on the machine: the runs log
        # cache_clear false, as open runs may.
        env={**os.environ, "RUN_N_SEED": "100", "HARNESS_DROP_CACHES": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 5
    seeds = [
        next(r["value"] for r in records(run / "mlperf.log") if r["key"] == "seed") for run in runs
    ]
    assert seeds == [100, 101, 102, 103, 104]
    cleared = [
        next(r["value"] for r in records(run / "mlperf.log") if r["key"] == "cache_clear")
        for run in runs
    ]
    assert cleared == [False] * 5
    assert "package_checker 3.1.0: PASSED" in proc.stdout
    expected = submission.olympic_minutes([submission.read_run(r) for r in runs])
    scored = float(proc.stdout.split("scored time ")[1].split()[0])
    assert scored == pytest.approx(expected, abs=1e-4)
    assert sorted(p.name for p in (out / "results" / "cpu_test" / "maskrcnn").iterdir()) == [
        f"result_{i}.txt" for i in range(5)
    ]
