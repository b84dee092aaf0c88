"""Stops and resumes end to end: a SIGTERM and a SIGKILL, each followed by `--resume`, end with one
MLPerf log that passes the 3.1.0 checker, no repeated metrics, the run's own seed, and (at one
thread) the final weights of an uninterrupted run; a kill during the last evaluation is not
recorded as a miss; bad resumes are refused before anything changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import checkpoint
from tests.test_mlperf_log import records, run_checker
from tests.test_train import ROOT, TINY, dataset, run_dirs, train  # noqa: F401 (fixture)

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# 16 iterations at batch 2 over the 8 images (several epochs), an evaluation after each epoch;
# targets of 1 are never reached, so every run trains to max_iter and exits 4.
COMMON = [
    "--config",
    "configs/cpu_demo.yaml",
    "solver.ims_per_batch=2",
    "solver.max_iter=16",
    "run.eval_every_epochs=1",
    "run.target_bbox_map=1",
    "run.target_segm_map=1",
]


def _start(tmp_path: Path, data: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness.train", *args, *TINY]
    cmd += [f"data.root={data}", f"run.output_dir={tmp_path / 'runs'}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_iteration(tmp_path: Path, iteration: int, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 600
    while time.time() < deadline:
        for path in (tmp_path / "runs").glob("*/metrics.jsonl"):
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
            if any(r.get("iteration", 0) >= iteration for r in lines if r["type"] == "iter"):
                return path.parent
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError(f"training never reached iteration {iteration}")


def _check_resumed_run(run: Path, straight: Path) -> None:
    log = run / "mlperf.log"
    result = run_checker(log)
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    keys = [r["key"] for r in records(log)]
    for once in ("run_start", "init_stop", "seed", "run_stop", "submission_org"):
        assert keys.count(once) == 1, once

    def evals(path: Path) -> list[int]:
        return [r["metadata"]["epoch_num"] for r in records(path) if r["key"] == "eval_accuracy"]

    assert evals(log) == evals(straight / "mlperf.log") and len(evals(log)) > 2
    iters = [
        r["iteration"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "iter"
    ]
    assert iters == sorted(set(iters)) == list(range(1, 17))
    a = checkpoint.load_latest(straight / "checkpoints")
    b = checkpoint.load_latest(run / "checkpoints")
    assert a["iteration"] == b["iteration"] == 16
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path, dataset, kill):  # noqa: F811
    proc = _start(tmp_path, dataset, *COMMON)  # a random seed: resume must keep it
    run = _wait_for_iteration(tmp_path, 6, proc)
    proc.send_signal(kill)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == (130 if kill == signal.SIGTERM else -9), err[-2000:]
    seed = yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"]
    assert seed != -1

    # the resumed process takes config and seed from the run: no --config, no overrides
    resumed = train(tmp_path, dataset, "--resume", str(run), tiny=False, env=ONE_THREAD)
    assert resumed.returncode == 4, resumed.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"] == seed

    straight = tmp_path / "straight"
    train(straight, dataset, *COMMON, f"run.seed={seed}", env=ONE_THREAD)
    _check_resumed_run(run, run_dirs(straight)[0])


def test_bad_resumes_are_refused_before_anything_changes(tmp_path, dataset):  # noqa: F811
    train(tmp_path, dataset, *COMMON, "solver.max_iter=1", "run.eval_every_epochs=0")
    (run,) = run_dirs(tmp_path)
    before = sorted(p.name for p in run.rglob("*"))
    for args, message in [
        (["--resume", str(tmp_path / "runs")], "not a run directory"),
        (["--resume", str(run), "run.seed=3"], "run.seed"),
        (["--resume", str(run), "solver.base_lr=0.5"], "solver.base_lr"),
    ]:
        proc = train(tmp_path, dataset, *args, check=False, tiny=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [x for x in proc.stderr.splitlines() if x.startswith("python -m harness.train")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.rglob("*")) == before


def test_a_kill_during_the_last_evaluation_is_evaluated_again(tmp_path, dataset):  # noqa: F811
    """The run below reaches its targets (0) at its only evaluation. Cut its records back to the
    moment the evaluation began, as a SIGKILL there leaves them: the resumed run must evaluate the
    epoch again and succeed, not exit 4 as a miss without evaluating."""
    targets = ["run.target_bbox_map=0", "run.target_segm_map=0"]
    train(tmp_path, dataset, *COMMON[:3], "solver.max_iter=4", *targets)
    (run,) = run_dirs(tmp_path)
    (evaluated_epoch,) = [
        r["metadata"]["epoch_num"] for r in records(run / "mlperf.log") if r["key"] == "eval_start"
    ]
    # the last checkpoint was saved before the evaluation it names as due
    assert checkpoint.load_latest(run / "checkpoints")["eval_pending"] == evaluated_epoch
    log = run / "mlperf.log"
    lines = log.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"eval_start"' in line)
    log.write_text("".join(lines[: cut + 1]))
    metrics = run / "metrics.jsonl"
    kept = [x for x in metrics.read_text().splitlines(keepends=True) if '"type": "eval"' not in x]
    metrics.write_text("".join(kept))

    resumed = train(tmp_path, dataset, "--resume", str(run), tiny=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = run_checker(log)
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    keys = [r["key"] for r in records(log)]
    assert keys.count("eval_start") == 1 and keys.count("eval_accuracy") == 1
    assert records(log)[-1]["metadata"]["status"] == "success"


def test_a_corrupt_image_stops_the_run_with_its_name_after_saving(tmp_path, dataset):  # noqa: F811
    """The rules fix the training set, so a corrupt image is not skipped: the run stops with one
    line naming the file (exit 2), and what it trained is checkpointed for a resume once the file
    is restored."""
    data = tmp_path / "coco"
    shutil.copytree(dataset, data)
    images = sorted((data / "train2017").iterdir())
    broken = images[len(images) // 2]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated, as a cut copy leaves it
    proc = train(tmp_path, data, *COMMON, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m harness.train: data error:") and broken.name in last, last
    (run,) = run_dirs(tmp_path)
    assert checkpoint.load_latest(run / "checkpoints") is not None
    assert records(run / "mlperf.log")[-1]["metadata"]["status"] == "aborted"
