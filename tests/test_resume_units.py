"""The pieces a resumed run relies on: stale temp files removed, no non-finite checkpoint, one
continued MLPerf log, no repeated metrics, the lock, the config checks; and a full disk stops the
log instead of dropping lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import checkpoint, config, resume
from harness.metrics import MetricsWriter, evaluated, read_metrics
from harness.mlperf_log import MLPerfLogError, MLPerfLogger, continue_log
from tests.test_mlperf_log import records, run_checker, write_run_log


def _state(model: torch.nn.Module, iteration: int = 3) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return checkpoint.training_state(model, optimizer, None, iteration, 1, 0, config.load())


def test_temp_files_of_killed_writes_are_removed_on_the_next_save(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".ckpt_00000002.pt.tmp-{dead_pid}"
    orphan_digest = tmp_path / f".ckpt_00000002.pt.sha256.tmp-{dead_pid}"
    alive = tmp_path / f".ckpt_00000002.pt.tmp-{os.getppid()}"  # a live writer's file stays
    for path in (orphan, orphan_digest, alive):
        path.write_bytes(b"partial")
    checkpoint.save_checkpoint(tmp_path, _state(torch.nn.Linear(2, 2)))
    assert not orphan.exists() and not orphan_digest.exists() and alive.exists()
    orphan.write_bytes(b"partial")
    assert checkpoint.load_latest(tmp_path)["iteration"] == 3
    assert not orphan.exists()


def test_a_diverged_model_is_never_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(checkpoint.NonFiniteStateError, match="weight"):
        _state(model)
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_a_full_disk_stops_the_log_instead_of_dropping_lines(tmp_path):
    path = tmp_path / "mlperf.log"
    os.symlink("/dev/full", path)
    log = MLPerfLogger(path)
    with pytest.raises(MLPerfLogError, match="No space left on device"):
        log.init_start()
    assert log.failed
    log.run_stop("aborted")  # after the failure reached the caller, nothing more is attempted


def test_continued_log_drops_the_attempts_run_stop_and_unscored_eval(tmp_path):
    path = tmp_path / "mlperf.log"
    write_run_log(path, ("run.platform=test",), [(0.1, 0.1)])  # one scored eval, run_stop
    log = MLPerfLogger(path)
    log.block_start(2, 1)
    log.epoch_start(2)
    log.epoch_stop(2)
    log.block_stop(2)
    log.eval_start(2)  # killed here: never scored
    log.close()
    with open(path, "a") as f:
        f.write(':::MLLOG {"namespace": "", "time_ms": 1, "event_ty')  # a line cut by the kill
    original = path.read_text()
    assert continue_log(path)
    assert (tmp_path / "mlperf.attempt-1.log").read_text() == original
    keys = [r["key"] for r in records(path)]
    assert "run_stop" not in keys
    assert keys.count("eval_start") == 1 and keys[-1] == "block_stop"
    # the resumed process evaluates epoch 2 and ends the run: one log the checker accepts
    log = MLPerfLogger(path)
    log.eval_start(2)
    log.eval_accuracy({"BBOX": 0.4, "SEGM": 0.36}, 2)
    log.eval_stop(2)
    log.run_stop("success")
    log.close()
    result = run_checker(path)
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    assert not continue_log(path, restart=True)  # started over: the whole log is kept aside
    assert not path.exists() and (tmp_path / "mlperf.attempt-2.log").is_file()


def test_resumed_metrics_drop_the_iterations_after_the_checkpoint(tmp_path):
    writer = MetricsWriter(tmp_path, 10, stream=io.StringIO())
    for it in (2, 4, 6):
        writer.log_iteration(it, 1, {"loss_a": 1.0}, 0.1, 0.1, 0.0, 10.0)
    writer.log_eval(1, 6, {"BBOX": 0.2, "SEGM": 0.3}, 1.0)
    writer.log_iteration(8, 2, {"loss_a": 1.0}, 0.1, 0.1, 0.0, 10.0)
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "iter", "iterat')  # cut by a SIGKILL
    writer = MetricsWriter(tmp_path, 10, start_iter=6, stream=io.StringIO())
    writer.log_iteration(8, 2, {"loss_a": 1.0}, 0.1, 0.1, 0.0, 10.0)
    writer.close()
    iters = [r["iteration"] for r in read_metrics(tmp_path) if r["type"] == "iter"]
    assert iters == [2, 4, 6, 8]
    assert evaluated(tmp_path) == {1: (0.2, 0.3)}


def test_one_process_per_run_directory(tmp_path):
    lock = resume.RunLock(tmp_path)
    code = (
        "import sys; from pathlib import Path; from harness import resume, config\n"
        "try:\n    resume.RunLock(Path(sys.argv[1]))\n"
        "except config.ConfigError as e:\n    print(e); sys.exit(2)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert other.returncode == 2 and f"in use by pid {os.getpid()}" in other.stdout
    lock.release()
    again = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout


def _run_dir(tmp_path: Path, *overrides: str) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config.save(config.load(None, ("run.seed=77", *overrides)), run / "config.yaml")
    return run


def test_resume_takes_the_runs_config_and_refuses_what_may_not_change(tmp_path):
    run = _run_dir(tmp_path)
    cfg = resume.run_config(run, None, ["data.root=/elsewhere", "run.log_every_iters=5"])
    assert cfg.run.seed == 77 and cfg.data.root == "/elsewhere"
    assert resume.run_config(run, None, ["run.seed=-1"]).run.seed == 77  # -1: "the run's own"
    with pytest.raises(config.ConfigError, match=r"run\.seed: 77 -> 1234"):
        resume.run_config(run, None, ["run.seed=1234"])
    with pytest.raises(config.ConfigError, match=r"solver\.base_lr"):
        resume.run_config(run, None, ["solver.base_lr=0.04"])
    with pytest.raises(config.ConfigError, match="not a run directory"):
        resume.run_config(tmp_path, None, [])
    with pytest.raises(config.ConfigError, match="no such directory"):
        resume.run_config(tmp_path / "nope", None, [])
    state = {"iteration": 4, "config": config.to_dict(config.load(None, ("run.seed=78",)))}
    with pytest.raises(config.ConfigError, match=r"checkpoint at iteration 4 .*run\.seed: 78"):
        resume.check_checkpoint(run, cfg, state)
    resume.check_checkpoint(run, cfg, {"iteration": 4, "config": config.to_dict(cfg)})
