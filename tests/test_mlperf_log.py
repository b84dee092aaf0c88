"""The MLPerf log passes the official compliance checker (ruleset 3.1.0) for closed and open runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness import config
from harness.mlperf_log import MLPerfLogger

CLOSED_OVERRIDES = ("run.platform=test-host-1xCPU",)
OPEN_OVERRIDES = (
    "run.platform=test-host-1xCPU",
    "run.division=open",
    "solver.ims_per_batch=2",
    "solver.base_lr=0.013",  # neither 0.02·K nor 0.02/K: only legal in the open division
    "solver.steps=[900]",
    "data.min_size=256",
    "data.max_size=256",
    "model.rpn.post_nms_top_n_train=500",
)


def write_run_log(path: Path, overrides: tuple[str, ...], accuracies: list[tuple[float, float]]):
    """A fake-but-complete run: one block of one epoch per evaluation, one eval per accuracy."""
    cfg = config.load(None, overrides)
    log = MLPerfLogger(path)
    log.submission(cfg, cfg.run.platform, cache_cleared=True)
    log.init_start()
    log.log_hyperparameters(cfg, world_size=1, seed=2**40 + 3)
    log.weights_initialization(["rpn.head.conv", "roi_heads.box_head.fc6"])
    log.init_stop()
    log.run_start()
    log.dataset_sizes(train_samples=117266, eval_samples=5000)
    for epoch, (bbox, segm) in enumerate(accuracies, start=1):
        log.block_start(first_epoch_num=epoch, epoch_count=1)
        log.epoch_start(epoch)
        log.epoch_stop(epoch)
        log.block_stop(first_epoch_num=epoch)
        log.eval_start(epoch)
        log.eval_accuracy({"BBOX": bbox, "SEGM": segm}, epoch_num=epoch)
        log.eval_stop(epoch)
    log.run_stop("success")
    log.close()


def run_checker(log_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mlperf_logging.compliance_checker",
            "--usage",
            "training",
            "--ruleset",
            "3.1.0",
            "--log_output",
            str(log_path.with_suffix(".checker.log")),
            str(log_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines and all(line.startswith(":::MLLOG {") for line in lines)
    return [json.loads(line[len(":::MLLOG ") :]) for line in lines]


def test_closed_log_passes_checker(tmp_path):
    log_path = tmp_path / "mlperf.log"
    write_run_log(log_path, CLOSED_OVERRIDES, [(0.20, 0.18), (0.378, 0.340)])
    result = run_checker(log_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stderr


def test_open_log_below_target_passes_checker(tmp_path):
    log_path = tmp_path / "mlperf.log"
    write_run_log(log_path, OPEN_OVERRIDES, [(0.05, 0.04), (0.11, 0.10)])
    result = run_checker(log_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stderr


def test_closed_log_below_target_fails_checker(tmp_path):
    log_path = tmp_path / "mlperf.log"
    write_run_log(log_path, CLOSED_OVERRIDES, [(0.376, 0.340)])
    result = run_checker(log_path)
    assert result.returncode != 0
    assert "BBOX" in result.stderr


@pytest.mark.parametrize("dropped", ["num_image_candidates", "run_stop"])
def test_missing_required_key_fails_checker(tmp_path, dropped):
    log_path = tmp_path / "mlperf.log"
    write_run_log(log_path, CLOSED_OVERRIDES, [(0.38, 0.35)])
    kept = [line for line in log_path.read_text().splitlines() if f'"key": "{dropped}"' not in line]
    log_path.write_text("\n".join(kept) + "\n")
    result = run_checker(log_path)
    assert result.returncode != 0
    assert dropped in result.stderr


def test_hyperparameters_logged_once_with_config_values(tmp_path):
    log_path = tmp_path / "mlperf.log"
    write_run_log(log_path, CLOSED_OVERRIDES, [(0.38, 0.35)])
    by_key: dict[str, list] = {}
    for rec in records(log_path):
        by_key.setdefault(rec["key"], []).append(rec)
    for key in (
        "seed",
        "global_batch_size",
        "opt_learning_rate_decay_steps",
        "submission_platform",
    ):
        assert len(by_key[key]) == 1, key
    assert by_key["seed"][0]["value"] == 2**40 + 3
    assert by_key["global_batch_size"][0]["value"] == 16
    assert by_key["opt_learning_rate_decay_steps"][0]["value"] == [60000, 80000]
    assert by_key["num_image_candidates"][0]["value"] == 2000
    assert by_key["submission_benchmark"][0]["value"] == "maskrcnn"
    assert by_key["run_stop"][0]["metadata"]["status"] == "success"
    assert by_key["block_start"][0]["metadata"]["first_epoch_num"] == 1
    assert by_key["block_start"][0]["metadata"]["epoch_count"] == 1
    # The recorded call site is the caller's code, not the wrapper.
    assert by_key["eval_accuracy"][0]["metadata"]["file"].endswith("test_mlperf_log.py")


def test_non_main_rank_writes_nothing(tmp_path):
    log_path = tmp_path / "mlperf.log"
    log = MLPerfLogger(log_path, is_main=False)
    log.init_start()
    log.eval_accuracy({"BBOX": 0.1, "SEGM": 0.1}, epoch_num=1)
    log.close()
    assert not log_path.exists()


def test_stdout_echo(tmp_path, capsys):
    log = MLPerfLogger(tmp_path / "mlperf.log", stdout=True)
    log.run_start()
    log.close()
    assert capsys.readouterr().out.startswith(':::MLLOG {"namespace": ')


def test_bad_arguments(tmp_path):
    log = MLPerfLogger(tmp_path / "mlperf.log")
    with pytest.raises(ValueError, match="status"):
        log.run_stop("done")
    with pytest.raises(KeyError, match="SEGM"):
        log.eval_accuracy({"BBOX": 0.4}, epoch_num=1)
    with pytest.raises(ValueError, match="platform name is empty"):
        log.submission(config.load(), "", cache_cleared=False)
    semi = config.load()
    semi = replace(semi, run=replace(semi.run, division="semi"))  # what config.load would refuse
    with pytest.raises(ValueError, match=r"run\.division"):
        log.submission(semi, "x", cache_cleared=False)
    cfg = config.load(None, ("run.platform=x", "solver.ims_per_batch=6"))
    with pytest.raises(ValueError, match="world_size=4"):
        log.log_hyperparameters(cfg, 4, seed=1)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        MLPerfLogger(tmp_path / "no_such_dir" / "mlperf.log")
