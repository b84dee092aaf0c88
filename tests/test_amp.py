"""Mixed precision (`run.precision=amp`), which every other test turns off: bf16 autocast on the CPU,
fp16 with a GradScaler on CUDA (the closed configs' setting, with channels-last and DALI's mixed
decode in a `cuda` twin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import checkpoint, config
from harness.data import build_train_loader
from harness.data.synthetic import generate
from harness.model import build_model
from harness.model.weights import normalization_for
from harness.train import autocast_context
from tests.test_mlperf_log import run_checker
from tests.test_train import ROOT, TINY, run_dirs, train

AMP = [*(o for o in TINY if not o.startswith("run.precision=")), "run.precision=amp"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), train=8, val=4, seed=3, size=64)


def test_amp_on_the_cpu_computes_in_bf16_and_keeps_fp32_weights(dataset):
    """One training step under autocast_context: the backbone's features are bf16 (so autocast is
    really on), the losses and the gradients are finite, and weights and gradients stay fp32."""
    cfg = config.load(ROOT / "configs/cpu_demo.yaml", [*AMP, f"data.root={dataset}"])
    model = build_model(cfg.model)
    loader = build_train_loader(cfg, normalization_for(cfg.model), 0, 1, seed=0)
    loader.set_epoch(1)
    batch = next(iter(loader))
    dtypes = []
    model.backbone.register_forward_hook(lambda _m, _i, out: dtypes.extend(f.dtype for f in out))
    with autocast_context(cfg, torch.device("cpu")):
        losses = model(batch.images, batch.targets)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    }
    for name, value in losses.items():
        assert torch.isfinite(value), f"{name} = {value}"
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        if param.grad is not None:
            assert param.grad.dtype == torch.float32, name
            assert torch.isfinite(param.grad).all(), name


def _amp_run(tmp_path: Path, dataset: Path, *extra: str) -> Path:
    proc = train(
        tmp_path,
        dataset,
        "--config",
        "configs/cpu_demo.yaml",
        *AMP,
        *extra,
        "solver.max_iter=2",
        "solver.ims_per_batch=2",
        "run.target_bbox_map=0",
        "run.target_segm_map=0",
        "run.seed=1234",
        tiny=False,  # TINY (with fp32) is in AMP already; the harness's last override would win
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    assert config.load(run / "config.yaml").run.precision == "amp"
    result = run_checker(run / "mlperf.log")
    assert "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr
    iters = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if r["type"] == "iter"]
    assert [r["iteration"] for r in iters] == [1, 2]
    assert all(torch.isfinite(torch.tensor(list(r["losses"].values()))).all() for r in iters)
    return run


@pytest.mark.slow
def test_amp_run_on_the_cpu_passes_the_checker(tmp_path, dataset):
    """`python -m harness.train` with run.precision=amp on the CPU (bf16 autocast): two steps at
    64 px and an evaluation; the open-division log passes the 3.1.0 checker."""
    run = _amp_run(tmp_path, dataset)
    # The CPU has no GradScaler (bf16 needs none): its saved state is the disabled scaler's.
    assert checkpoint.load_latest(run / "checkpoints")["scaler"] == {}


@pytest.mark.cuda
@pytest.mark.slow
def test_amp_run_on_cuda_passes_the_checker(tmp_path, dataset):
    """The closed configs' GPU path: fp16 autocast with a GradScaler, channels-last, DALI decoding
    on the GPU (mixed)."""
    run = _amp_run(
        tmp_path,
        dataset,
        "model.channels_last=true",
        "data.loader=dali",
        "data.decode_device=mixed",
    )
    scaler = checkpoint.load_latest(run / "checkpoints")["scaler"]
    assert scaler["scale"] > 0  # an enabled GradScaler's state; a disabled one saves {}
