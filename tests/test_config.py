"""The config schema: what load accepts, refuses (one line naming the key) and warns about, and
that `python -m harness.train` refuses a mistake with exit 2 before it creates a run directory."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from harness import config
from harness.config import ConfigError
from harness.data.synthetic import generate
from harness.train import EXIT_CONFIG_ERROR, cli

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_load(path):
    cfg = config.load(path)
    assert config.load(None, _as_overrides(config.to_dict(cfg))) == cfg


def _as_overrides(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _as_overrides(value, f"{prefix}{key}.")
        else:
            text = "" if value == "" else repr(value).replace("'", '"')
            out.append(f"{prefix}{key}={text.replace('True', 'true').replace('False', 'false')}")
    return out


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("1E-4", 1e-4), ("+2.5e-3", 2.5e-3), ("1.e-4", 1e-4), ("0.0001", 1e-4)],
)
def test_floats_as_yaml_1_1_users_write_them(tmp_path, text, value):
    assert config.load(None, [f"solver.weight_decay={text}"]).solver.weight_decay == value
    path = tmp_path / "c.yaml"
    path.write_text(f"solver:\n  weight_decay: {text}\n")
    assert config.load(path).solver.weight_decay == value


def test_choices_are_typed_and_checked_at_load():
    cfg = config.load(None, ["run.precision=auto", "model.compile=true", "model.fpn.norm="])
    assert (cfg.run.precision, cfg.model.compile, cfg.model.fpn.norm) == ("auto", True, "")
    with pytest.raises(ConfigError, match=r"model\.backbone\.norm: .* got 'bm'; did you mean 'bn'"):
        config.load(None, ["model.backbone.norm=bm"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.depth: expected one of 10, 18"):
        config.load(None, ["model.backbone.depth=true"])


MISTAKES = [
    # (overrides, what the one line must say)
    (["solver.base_lr=-0.02"], "solver.base_lr must be positive, got -0.02"),
    (["solver.base_lr=0"], "solver.base_lr must be positive, got 0.0"),
    (["solver.steps=[1800,900]"], "solver.steps must be in increasing order, got [1800, 900]"),
    (["solver.steps=[-1]"], "solver.steps must not be negative"),
    (["solver.gamma=0"], "solver.gamma must be positive"),
    (["solver.gamma=-0.1"], "solver.gamma must be positive"),
    (["solver.warmup_iters=-1"], "solver.warmup_iters must be at least 0, got -1"),
    (["solver.warmup_method=cosine"], "solver.warmup_method: expected one of"),
    (
        ["solver.warmup_method=mlperf_linear", "solver.warmup_factor=0.1"],
        "mlperf_linear warmup starts at the negative learning rate",
    ),
    (["solver.weight_decay=1e-4x"], "solver.weight_decay: expected a number, got '1e-4x'"),
    (["solver.momentum=1.5"], "solver.momentum must be in [0, 1)"),
    (["data.loader=tf"], "data.loader: expected one of 'auto', 'dali', 'pytorch', got 'tf'"),
    (["data.decode_device=gpu"], "data.decode_device: expected one of"),
    (["data.flip_prob=2"], "data.flip_prob must be in [0, 1], got 2.0"),
    (["data.max_size=10"], "data.max_size=10 must be at least data.min_size=256"),
    (["run.division=closedd"], "run.division: expected one of 'closed', 'open', got 'closedd'"),
    (["run.precision=fp16"], "run.precision: expected one of 'auto', 'amp', 'fp32'"),
    (["run.name=../escape"], "run.name '../escape' must be letters, digits"),
    (["model.backbone.depth=51"], "model.backbone.depth: expected one of 10, 18, 34, 50, got 51"),
    (["model.num_classes=1"], "model.num_classes must be at least 2"),
    (["model.backbone.gn_groups=48"], "model.backbone.gn_groups=48 must divide 64"),
    (["model.rpn.anchor_strides=[4,8]"], "model.rpn.anchor_sizes"),
    (["model.rpn.fg_iou_thresh=0.2"], "model.rpn.bg_iou_thresh=0.3 must not exceed"),
    (["run.log_every_iters=0"], "run.log_every_iters must be at least 1, got 0"),
    (["run.target_segm_map=33.9"], "run.target_segm_map must be in [0, 1], got 33.9"),
    (["solver.steps=[1,"], "override 'solver.steps=[1,': the value is not YAML"),
]


@pytest.mark.parametrize(("overrides", "message"), MISTAKES, ids=lambda v: str(v)[:40])
def test_load_refuses_what_cannot_be_meant(overrides, message):
    with pytest.raises(ConfigError) as caught:
        config.load(ROOT / "configs" / "cpu_demo.yaml", overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unusual_values_are_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="harness.config")
    cfg = config.load(
        None,
        ["solver.steps=[]", "solver.gamma=2", "solver.max_iter=100", "solver.warmup_iters=100"],
    )
    assert cfg.solver.steps == ()
    text = caplog.text
    assert "solver.steps is empty: the learning rate never decays" in text
    assert "solver.gamma=2.0 does not decay the learning rate" in text
    assert "solver.warmup_iters=100 is not before solver.max_iter=100" in text
    caplog.clear()
    config.load(None, ["solver.steps=[60000,95000]"])
    assert "solver.steps [95000] are not before solver.max_iter=90000" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00binary", "not a YAML file (not UTF-8 text)"),
        (b"solver: [1, 2\n", "not valid YAML"),
        (b"- a list\n- of things\n", "top level must be a mapping of sections"),
        (b"solver:\n  base_lr: 0.02\n  base_lr: -1\n  steps: {a: 1}\n", "expected a list"),
    ],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), train=4, val=2, seed=3, size=64)


def _refused(tmp_path: Path, capsys, *args: str) -> str:
    """Run harness.train.cli in-process; assert exit 2, one stderr line, no run directory."""
    runs = tmp_path / "runs"
    code = cli([*args, f"run.output_dir={runs}"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CONFIG_ERROR, err
    assert "\n" not in err and "Traceback" not in err, err
    assert not runs.exists() or not any(runs.iterdir())
    return err


@pytest.mark.parametrize(("overrides", "message"), MISTAKES, ids=lambda v: str(v)[:40])
def test_train_refuses_each_mistake_before_creating_a_run(
    tmp_path, capsys, dataset, overrides, message
):
    args = ["--config", "configs/cpu_demo.yaml", f"data.root={dataset}", *overrides]
    assert message in _refused(tmp_path, capsys, *args)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.root={tmp}/nowhere"], "data.root: dataset directory not found: {tmp}/nowhere"),
        (["data.val_split=test2017"], "data.root: image directory not found: {data}/test2017"),
        (["data.train_split=none"], "data.root: image directory not found: {data}/none"),
        (["model.backbone.weights={tmp}/R-50.pkl"], "weights: file not found: {tmp}/R-50.pkl"),
    ],
)
def test_train_refuses_data_that_does_not_fit_before_creating_a_run(
    tmp_path, capsys, dataset, overrides, message
):
    fill = {"tmp": tmp_path, "data": dataset}
    args = ["--config", "configs/cpu_demo.yaml", f"data.root={dataset}"]
    args += [o.format(**fill) for o in overrides]
    assert message.format(**fill) in _refused(tmp_path, capsys, *args)


def test_a_binary_config_file_exits_2_from_the_command_line(tmp_path, dataset):
    bad = tmp_path / "weights.yaml"
    bad.write_bytes(bytes(range(256)))
    overrides = [f"data.root={dataset}", f"run.output_dir={tmp_path / 'runs'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.train", "--config", str(bad), *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"python -m harness.train: config error: {bad}: not a YAML file (not UTF-8 text)"
    )
    assert not (tmp_path / "runs").exists()
