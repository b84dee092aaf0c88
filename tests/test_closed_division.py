"""The closed-division guard, the page-cache drop, and a closed DGX-1-config run on tiny data: the
clock starts before the data is touched, the log has the key set of NVIDIA's accepted logs and
passes the 3.1.0 closed checker except for the quality target a CPU cannot reach."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import cache, closed_division, config, train
from harness.data.synthetic import generate
from harness.mlperf_log import MLPerfLogger
from tests.model.test_weights import caffe2_blobs, write_python2_pickle
from tests.test_mlperf_log import records, run_checker

ROOT = Path(__file__).resolve().parent.parent
DGX1 = ROOT / "configs" / "dgx1_v100x8.yaml"
KEYS = json.loads((ROOT / "tests" / "fixtures" / "nvidia_maskrcnn_v3.1_keys.json").read_text())


@pytest.fixture(scope="module")
def r50_pkl(tmp_path_factory) -> Path:
    """A Caffe2 pickle shaped as Detectron's R-50.pkl (random values): the reference's format."""
    path = tmp_path_factory.mktemp("weights") / "R-50.pkl"
    write_python2_pickle({"blobs": caffe2_blobs(50, np.random.default_rng(0))}, path)
    return path


# The DGX-1 config with only the rules' tunables (and the free keys) changed, for 1 CPU process.
CLOSED_TINY = [
    "run.gpus=0",
    "run.precision=fp32",
    "run.platform=test-1xCPU",
    "run.log_every_iters=1",
    "solver.ims_per_batch=2",
    "solver.base_lr=0.0025",  # 0.02 / 8
    "solver.steps=[480000,640000]",  # (60000, 80000) * 16 / 2
    "solver.warmup_factor=0.000004",  # 0.0025 / 625
    "solver.max_iter=1",
    "model.rpn.post_nms_top_n_train=2000",  # 1000 * 2 images per chip
    "data.loader=pytorch",
    "data.num_workers=0",
    "data.aspect_ratio_grouping=false",
]


def dgx1(weights: Path, *overrides: str) -> config.Config:
    return config.load(DGX1, (f"model.backbone.weights={weights}", *overrides))


def test_the_closed_configs_are_closed(r50_pkl):
    assert closed_division.problems(dgx1(r50_pkl), world_size=8) == []
    single = config.load(
        ROOT / "configs" / "single_gpu.yaml", (f"model.backbone.weights={r50_pkl}",)
    )
    assert closed_division.problems(single, world_size=1) == []


# One case per group of hyperparameters the rules fix to the reference, and per tunable rule.
DEVIATIONS = [
    ("model.backbone.depth=34", "model.backbone.depth=34"),
    ("model.backbone.norm=gn", "model.backbone.norm='gn'"),
    ("model.backbone.freeze_at=0", "model.backbone.freeze_at=0"),
    ("model.fpn.out_channels=128", "model.fpn.out_channels=128"),
    ("model.num_classes=91", "model.num_classes=91"),
    ("model.rpn.aspect_ratios=[1.0]", "model.rpn.aspect_ratios=(1.0,)"),
    ("model.rpn.anchor_sizes=[16,32,64,128,256]", "model.rpn.anchor_sizes"),
    ("model.rpn.fg_iou_thresh=0.6", "model.rpn.fg_iou_thresh=0.6"),
    ("model.rpn.pre_nms_top_n_train=1000", "model.rpn.pre_nms_top_n_train=1000"),
    ("model.rpn.nms_thresh=0.6", "model.rpn.nms_thresh=0.6"),
    ("model.rpn.nms_legacy=false", "model.rpn.nms_legacy=False"),
    ("model.roi_heads.nms_legacy=false", "model.roi_heads.nms_legacy=False"),
    ("model.rpn.post_nms_top_n_test=300", "model.rpn.post_nms_top_n_test=300"),
    ("model.roi_heads.batch_size_per_image=256", "model.roi_heads.batch_size_per_image=256"),
    ("model.roi_heads.mask_resolution=14", "model.roi_heads.mask_resolution=14"),
    ("model.roi_heads.detections_per_img=50", "model.roi_heads.detections_per_img=50"),
    ("model.roi_heads.score_thresh=0.0", "model.roi_heads.score_thresh=0.0"),
    ("data.min_size=640", "data.min_size=640"),
    ("data.max_size=1024", "data.max_size=1024"),
    ("data.flip_prob=0.0", "data.flip_prob=0.0"),
    ("solver.grad_clip=10", "solver.grad_clip=10.0"),
    ("solver.momentum=0.95", "solver.momentum=0.95"),
    ("solver.weight_decay=0.0002", "solver.weight_decay=0.0002"),
    ("solver.bias_lr_factor=1", "solver.bias_lr_factor=1.0"),
    ("solver.gamma=0.2", "solver.gamma=0.2"),
    ("solver.base_lr=0.07", "solver.base_lr=0.07"),  # above 625 * 0.000096: warmup starts >= 0
    ("solver.steps=[24000,30000]", "solver.steps=[24000, 30000]"),
    ("solver.steps=[24000]", "solver.steps=[24000]"),
    ("model.rpn.post_nms_top_n_train=4000", "model.rpn.post_nms_top_n_train=4000"),
    ("run.eval_every_epochs=2", "run.eval_every_epochs=2"),
    ("run.target_bbox_map=0.3", "run.target_bbox_map=0.3"),
    ("data.val_split=train2017", "data.val_split='train2017'"),
]


@pytest.mark.parametrize(("override", "named"), DEVIATIONS, ids=[d[0] for d in DEVIATIONS])
def test_each_fixed_or_tunable_deviation_is_named(r50_pkl, override, named):
    problems = closed_division.problems(dgx1(r50_pkl, override), world_size=8)
    assert len(problems) == 1, problems
    assert problems[0].startswith(named), problems


def test_tunables_within_the_rules_are_accepted(r50_pkl):
    # batch 16, K=0 for the steps; batch 8 with 0.02/2; candidates 1000 at any per-chip batch
    for overrides, world in [
        (
            (
                "solver.ims_per_batch=16",
                "solver.base_lr=0.02",
                "solver.warmup_factor=0.000032",  # 0.02 / 625: mlperf_linear warmup from 0
                "solver.steps=[60000,80000]",
                "model.rpn.post_nms_top_n_train=2000",
            ),
            8,
        ),
        (
            (
                "solver.ims_per_batch=8",
                "solver.base_lr=0.01",
                "solver.warmup_factor=0.000016",
                "solver.steps=[120000,160000]",
                "model.rpn.post_nms_top_n_train=8000",
            ),
            1,
        ),
        (("model.rpn.post_nms_top_n_train=1000",), 8),
        (("solver.warmup_iters=0", "solver.warmup_factor=0.5", "solver.warmup_method=linear"), 8),
        (("data.loader=pytorch", "data.size_divisibility=64", "model.channels_last=false"), 8),
    ]:
        assert closed_division.problems(dgx1(r50_pkl, *overrides), world) == [], overrides
    # 6000 candidates are 1000 * 6 images per chip on 8 chips, not on 4 (12 per chip)
    assert closed_division.problems(dgx1(r50_pkl), world_size=4)[0].startswith(
        "model.rpn.post_nms_top_n_train=6000"
    )
    # 48 images do not split over 5 chips: named once, by the batch split's one owner
    assert closed_division.problems(dgx1(r50_pkl), world_size=5) == [
        "solver.ims_per_batch=48: the images of a step must split evenly over the world size "
        "(world_size=5)"
    ]


def test_weights_must_be_the_reference_pickle(tmp_path, r50_pkl):
    missing = closed_division.problems(dgx1(tmp_path / "nope.pkl"), 8)
    assert missing == [f"model.backbone.weights={str(tmp_path / 'nope.pkl')!r}: file not found"]
    cfg = dgx1(r50_pkl)
    none = replace(cfg, model=replace(cfg.model, backbone=replace(cfg.model.backbone, weights="")))
    assert "pretrained backbone" in closed_division.problems(none, 8)[0]
    torchvision_file = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, torchvision_file)
    (problem,) = closed_division.problems(dgx1(torchvision_file), 8)
    assert "is a torchvision file" in problem


def closed_cli(tmp_path: Path, weights: Path, *overrides: str) -> int:
    """harness.train's exit code for the closed tiny config with `overrides`, run in-process."""
    return train.cli(
        [
            "--config",
            str(DGX1),
            *CLOSED_TINY,
            f"model.backbone.weights={weights}",
            f"run.output_dir={tmp_path / 'runs'}",
            *overrides,
        ]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.backbone.depth=34",), "model.backbone.depth=34"),
        (("solver.gradient_accumulation_steps=2",), "gradient_accumulation_steps=2"),
    ],
)
def test_train_refuses_before_anything_is_created(tmp_path, r50_pkl, capsys, overrides, message):
    """exit 2 with one line naming the key, before init_start: no run folder, no log."""
    code = closed_cli(tmp_path, r50_pkl, *overrides)
    assert code == train.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_page_cache_drop_reports_what_happened(tmp_path):
    writable = tmp_path / "drop_caches"
    done = cache.drop_page_cache({}, drop_caches=writable)
    assert done.done and writable.read_text() == "3\n"
    unwritable = tmp_path / "no_such_dir" / "drop_caches"
    assert not cache.drop_page_cache({}, unwritable).done
    assert cache.drop_page_cache({"HARNESS_DROP_CACHES_CMD": "true"}, unwritable).done
    failed = cache.drop_page_cache({"HARNESS_DROP_CACHES_CMD": "echo no >&2; false"}, unwritable)
    assert not failed.done and "exited 1: no" in failed.how
    assert cache.drop_page_cache({"HARNESS_CACHES_DROPPED": "1"}, unwritable).done
    assert cache.wanted("closed", {}) and not cache.wanted("open", {})
    assert cache.wanted("open", {"HARNESS_DROP_CACHES": "1"})


def test_a_closed_run_that_cannot_drop_the_cache_is_refused(tmp_path, r50_pkl, monkeypatch, capsys):
    monkeypatch.setattr(cache, "DROP_CACHES", tmp_path / "no_such_dir" / "drop_caches")
    for name in ("HARNESS_DROP_CACHES_CMD", "HARNESS_CACHES_DROPPED"):
        monkeypatch.delenv(name, raising=False)
    code = closed_cli(tmp_path, r50_pkl)
    assert code == train.EXIT_CONFIG_ERROR
    assert "must start from a dropped page cache" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _eighty_categories(root: Path) -> None:
    """The closed model has 81 classes: give the synthetic set COCO's count of 80 categories."""
    for split in ("train2017", "val2017"):
        path = root / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        used = {c["id"] for c in data["categories"]}
        extra = [i for i in range(1, 200) if i not in used][: 80 - len(used)]
        data["categories"] += [{"id": i, "name": f"unused{i}", "supercategory": "x"} for i in extra]
        path.write_text(json.dumps(data))


@pytest.mark.slow
def test_closed_run_touches_no_data_before_run_start_and_logs_nvidias_keys(
    tmp_path, r50_pkl, monkeypatch
):
    data_root = generate(tmp_path / "coco", train=2, val=1, seed=5, size=64)
    _eighty_categories(data_root)
    # The test must not drop this machine's cache: the direct way fails, the host "attests" it.
    monkeypatch.setattr(cache, "DROP_CACHES", tmp_path / "no_such_dir" / "drop_caches")
    monkeypatch.setenv("HARNESS_CACHES_DROPPED", "1")

    clock = {"started": False}
    touched_early: list[str] = []
    real_run_start = MLPerfLogger.run_start

    def run_start(self):
        clock["started"] = True
        real_run_start(self)

    def audit(event, args):
        # Audit hooks cannot be removed: this one only records while the test runs.
        if clock.get("active") and not clock["started"] and event in ("open", "os.scandir"):
            path = args[0]
            if isinstance(path, str | bytes | Path) and str(Path(str(path)).resolve()).startswith(
                str(data_root.resolve())
            ):
                touched_early.append(f"{event} {path}")

    monkeypatch.setattr(MLPerfLogger, "run_start", run_start)
    sys.addaudithook(audit)
    clock["active"] = True
    try:
        code = train.main(
            [
                "--config",
                str(DGX1),
                *CLOSED_TINY,
                f"data.root={data_root}",
                f"model.backbone.weights={r50_pkl}",
                f"run.output_dir={tmp_path / 'runs'}",
            ]
        )
    finally:
        clock["active"] = False
    assert code == train.EXIT_TARGET_MISSED
    assert clock["started"]
    assert touched_early == [], "the dataset was touched before run_start"

    (run,) = sorted((tmp_path / "runs").iterdir())
    log = records(run / "mlperf.log")
    keys = [r["key"] for r in log]
    markers = {m: keys.index(m) for m in KEYS["markers"]}
    expected = set(KEYS["before_init_start"]) | set(KEYS["init"]) | set(KEYS["run"])
    assert set(keys) - set(KEYS["markers"]) == expected
    phase = {
        **{k: (0, markers["init_start"]) for k in KEYS["before_init_start"]},
        **{k: (markers["init_start"], markers["init_stop"]) for k in KEYS["init"]},
        **{k: (markers["run_start"], len(keys)) for k in KEYS["run"]},
    }
    for i, key in enumerate(keys):
        if key in phase:
            low, high = phase[key]
            assert low <= i <= high, f"{key} logged outside its phase"
    assert keys.count("weights_initialization") == KEYS["weights_initialization_count"]
    values = {r["key"]: r["value"] for r in log}
    assert values["submission_division"] == "closed" and values["cache_clear"] is True
    assert values["gradient_accumulation_steps"] == 1 and values["d_batch_size"] == 2

    result = run_checker(run / "mlperf.log")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output  # a CPU step cannot reach the target ...
    failed = [line for line in output.splitlines() if "Failed checks" in line]
    errors = [line for line in output.splitlines() if "ERROR" in line and "FAILED" not in line]
    # ... and that is the only rule the closed log breaks
    assert len(failed) == 1 and "Failed checks for eval_accuracy" in failed[0], output
    assert "BBOX'] >= 0.377" in failed[0] and errors == [], output
