"""End-to-end runs of `python -m harness.train` on a tiny synthetic set: the MLPerf log passes the
official checker, resume continues exactly, SIGTERM saves and aborts, config errors are named,
two gloo ranks stay in sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import checkpoint, config
from harness.data.synthetic import generate
from harness.train import block_end, check_runnable, last_epoch_of_run
from tests.test_mlperf_log import records, run_checker

ROOT = Path(__file__).resolve().parent.parent

# A tiny model that still runs every stage of the real one.
TINY = [
    "model.num_classes=5",
    "model.backbone.depth=18",
    "model.backbone.norm=gn",
    "model.backbone.freeze_at=0",
    "model.backbone.stride_in_1x1=false",
    "model.rpn.pre_nms_top_n_train=200",
    "model.rpn.post_nms_top_n_train=1000",
    "model.rpn.pre_nms_top_n_test=100",
    "model.rpn.post_nms_top_n_test=100",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.mlp_head_dim=64",
    "model.roi_heads.mask_conv_dims=[32,32]",
    "data.min_size=64",
    "data.max_size=64",
    "data.num_workers=0",
    "data.loader=pytorch",
    "run.precision=fp32",
    "run.log_every_iters=1",
    "run.platform=test",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), train=8, val=4, seed=3, size=64)


def train(tmp_path: Path, dataset: Path, *args: str, env=None, check=True, tiny=True):
    cmd = [sys.executable, "-m", "harness.train", *args]
    overrides = [
        *(TINY if tiny else []),
        f"data.root={dataset}",
        f"run.output_dir={tmp_path / 'runs'}",
    ]
    proc = subprocess.run(
        [*cmd, *overrides], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    if check and proc.returncode not in (0, 4):  # 4: target missed
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_open_run_log_passes_the_checker(tmp_path, dataset):
    """An open-division run (targets 0, so its first evaluation reaches them) logs a compliant run."""
    proc = train(
        tmp_path,
        dataset,
        "--config",
        "configs/cpu_demo.yaml",
        "solver.max_iter=4",
        "solver.ims_per_batch=2",
        "run.target_bbox_map=0",
        "run.target_segm_map=0",
        "run.seed=1234",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    for name in ("mlperf.log", "metrics.jsonl", "config.yaml", "plots/loss.png", "plots/map.png"):
        assert (run / name).is_file(), name
    result = run_checker(run / "mlperf.log")
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert any(r["type"] == "eval" for r in records)
    assert any(r["type"] == "iter" and "loss_mask" in r["losses"] for r in records)


def test_last_epoch_is_where_max_iter_or_max_epochs_falls():
    solver = config.SolverConfig(ims_per_batch=2, max_iter=1532, max_epochs=0)
    assert last_epoch_of_run(0, 0, 0, solver, 383) == 4  # 1532 = 4 x 383
    assert last_epoch_of_run(0, 0, 0, replace(solver, max_iter=1533), 383) == 5
    assert last_epoch_of_run(0, 0, 0, replace(solver, max_epochs=3), 383) == 3
    # Resumed 100 batches (200 images) into epoch 3: 183 batches finish it, 383 more end epoch 4.
    assert last_epoch_of_run(866, 2, 200, solver, 383) == 4
    assert last_epoch_of_run(866, 2, 200, replace(solver, max_iter=1533), 383) == 5


def test_blocks_end_at_every_kth_epoch_and_at_the_last():
    assert [block_end(e, 1, 4) for e in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert [block_end(e, 2, 5) for e in (1, 3, 5)] == [2, 4, 5]
    assert block_end(3, 2, 8) == 4  # a run resumed inside a block closes it where it would have
    assert block_end(1, 0, 6) == 6  # no evaluation: one block


@pytest.mark.slow
def test_evaluating_every_second_epoch_logs_blocks_of_two(tmp_path, dataset):
    """Three epochs, an evaluation every two: blocks (1, 2) and (3, 1), evaluated after epochs 2
    and 3 (the last is always evaluated), and the checker accepts the log."""
    common = ["--config", "configs/cpu_demo.yaml", "run.target_bbox_map=1", "run.target_segm_map=1"]
    one_epoch = tmp_path / "one_epoch"
    train(one_epoch, dataset, *common, "run.eval_every_epochs=0", "solver.max_epochs=1")
    length = checkpoint.load_latest(run_dirs(one_epoch)[0] / "checkpoints")["iteration"]
    runs = tmp_path / "every_two"
    proc = train(runs, dataset, *common, "run.eval_every_epochs=2", f"solver.max_iter={3 * length}")
    assert proc.returncode == 4, proc.stderr[-2000:]  # targets of 1 are never reached
    log = run_dirs(runs)[0] / "mlperf.log"
    events = [(r["key"], r["metadata"]) for r in records(log)]
    blocks = [(m["first_epoch_num"], m["epoch_count"]) for k, m in events if k == "block_start"]
    assert blocks == [(1, 2), (3, 1)]
    assert [m["first_epoch_num"] for k, m in events if k == "block_stop"] == [1, 3]
    assert [m["epoch_num"] for k, m in events if k == "eval_accuracy"] == [2, 3]
    result = run_checker(log)
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_zero_logging_interval_is_refused(tmp_path, dataset):
    proc = train(
        tmp_path,
        dataset,
        "--config",
        "configs/cpu_demo.yaml",
        "run.log_every_iters=0",
        check=False,
        tiny=False,  # TINY sets the interval
    )
    assert proc.returncode == 2
    assert "run.log_every_iters must be at least 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, dataset):
    """N iterations straight equal N/2, a stop, and a resume for the rest.

    One thread per run: with two, the order of parallel float reductions (oneDNN's, ROIAlign's
    backward) differs from run to run by ~1e-6 after a few steps, which would hide nothing about
    resuming but make the comparison flaky. At one thread both runs are bit-identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "--config",
        "configs/cpu_demo.yaml",
        "solver.ims_per_batch=2",
        "run.seed=5",
        "run.target_bbox_map=1",
        "run.target_segm_map=1",
        "data.flip_prob=0.5",
        "run.eval_every_epochs=0",
    ]
    straight = tmp_path / "straight"
    train(straight, dataset, *common, "solver.max_iter=8", env=env)
    split = tmp_path / "split"
    train(split, dataset, *common, "solver.max_iter=4", env=env)
    (first,) = run_dirs(split)
    train(split, dataset, *common, "solver.max_iter=8", "--resume", str(first), env=env)
    a = checkpoint.load_latest(run_dirs(straight)[0] / "checkpoints")
    b = checkpoint.load_latest(first / "checkpoints")
    assert a["iteration"] == b["iteration"] == 8
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_max_iter_on_an_epochs_last_batch_checkpoints_the_epoch_as_done(tmp_path, dataset):
    common = ["--config", "configs/cpu_demo.yaml", "run.eval_every_epochs=0"]
    one_epoch = tmp_path / "one_epoch"
    train(one_epoch, dataset, *common, "solver.max_epochs=1")
    length = checkpoint.load_latest(run_dirs(one_epoch)[0] / "checkpoints")["iteration"]
    stopped = tmp_path / "stopped"
    train(stopped, dataset, *common, f"solver.max_iter={length}")
    state = checkpoint.load_latest(run_dirs(stopped)[0] / "checkpoints")
    assert (state["iteration"], state["epoch"], state["sampler_position"]) == (length, 1, 0)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_logs_aborted(tmp_path, dataset):
    cmd = [
        sys.executable,
        "-m",
        "harness.train",
        "--config",
        "configs/cpu_demo.yaml",
        *TINY,
        f"data.root={dataset}",
        f"run.output_dir={tmp_path / 'runs'}",
        "solver.max_iter=100000",
        "run.target_bbox_map=1",
        "run.target_segm_map=1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline:
        runs = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if runs and runs[0].stat().st_size > 0:
            metrics = runs[0]
            break
        time.sleep(0.5)
    assert metrics is not None, "training never logged an iteration"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGTERM received" in err
    run = metrics.parent
    state = checkpoint.load_latest(run / "checkpoints")
    assert state is not None and state["iteration"] >= 1
    last = (run / "mlperf.log").read_text().strip().splitlines()[-1]
    assert '"run_stop"' in last and '"aborted"' in last


def test_unknown_config_key_is_named(tmp_path, dataset):
    proc = train(
        tmp_path, dataset, "--config", "configs/cpu_demo.yaml", "solver.base_lrr=0.1", check=False
    )
    assert proc.returncode == 2
    assert "unknown config key 'solver.base_lrr'; did you mean 'base_lr'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_for_other_gpu_count_is_refused(tmp_path, dataset):
    proc = train(tmp_path, dataset, "--config", "configs/dgx1_v100x8.yaml", check=False)
    assert proc.returncode == 2
    assert "needs 8 GPU(s); none is visible" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_global_batch_that_does_not_split_over_the_ranks_is_a_config_error():
    cfg = config.load(None, ("run.division=open", "solver.ims_per_batch=6"))
    check_runnable(cfg, 3)
    with pytest.raises(config.ConfigError, match=r"ims_per_batch=6: .*world_size=4"):
        check_runnable(cfg, 4)


@pytest.mark.slow
def test_two_gloo_ranks_train_in_sync(tmp_path, dataset):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29611",
        "-m",
        "harness.train",
        "--config",
        "configs/cpu_demo.yaml",
        *TINY,
        f"data.root={dataset}",
        f"run.output_dir={tmp_path / 'runs'}",
        "solver.ims_per_batch=2",
        "solver.max_iter=3",
        "run.target_bbox_map=0",
        "run.target_segm_map=0",
        "run.seed=11",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    state = checkpoint.load_latest(run / "checkpoints")
    assert state["iteration"] == 3
    assert run_checker(run / "mlperf.log").returncode == 0
