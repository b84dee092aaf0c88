"""Platform auto selection: which config `--config auto` picks for the hardware found, the check
that a config fits the machine, and the MLPerf platform name, on fake Hardware values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness import config, platform
from harness.config import ConfigError
from harness.platform import Hardware

V100 = "Tesla V100-SXM2-16GB"
A100 = "NVIDIA A100-SXM4-80GB"
CPU = Hardware("", 0, 0.0)


def _config(name: str) -> config.Config:
    return config.load(platform.CONFIG_DIR / f"{name}.yaml")


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        (Hardware(V100, 8, 16.0), "dgx1_v100x8"),
        (Hardware("Tesla V100-SXM2-32GB", 8, 32.0), "dgx1_v100x8"),
        (Hardware(V100, 1, 16.0), "single_gpu"),
        (Hardware(A100, 1, 80.0), "single_gpu"),
        (Hardware(A100, 8, 80.0), "dgx1_v100x8"),  # its hyperparameters fit any 8-GPU node
        (CPU, "cpu_demo"),
    ],
)
def test_auto_config_path(hw, expected):
    path = platform.auto_config_path(hw)
    assert path == platform.CONFIG_DIR / f"{expected}.yaml"
    assert path.is_file()
    assert _config(expected).run.name == expected


@pytest.mark.parametrize(
    ("hw", "world_size"),
    [
        (Hardware(V100, 8, 16.0), 8),
        (Hardware(V100, 8, 16.0), 16),  # two DGX-1 nodes
        (Hardware(A100, 1, 80.0), 1),
        (CPU, 1),
        (Hardware(A100, 8, 80.0), 8),
        (Hardware(A100, 8, 80.0), 16),
    ],
)
def test_auto_selected_config_fits_its_hardware(hw, world_size):
    cfg = config.load(platform.auto_config_path(hw))
    platform.check_matches(cfg, hw, world_size)


@pytest.mark.parametrize("count", [2, 4, 7, 16])
def test_auto_names_the_choices_where_no_recipe_fits(count):
    with pytest.raises(ConfigError) as error:
        platform.auto_config_path(Hardware(A100, count, 80.0))
    message = str(error.value)
    assert f"no recipe for {count} GPUs per node" in message
    assert "dgx1_v100x8.yaml" in message and "single_gpu.yaml" in message
    assert f"run.gpus={count}" in message


def test_check_matches_refuses_a_mismatch():
    dgx1, single = _config("dgx1_v100x8"), _config("single_gpu")
    with pytest.raises(ConfigError, match=r"'dgx1_v100x8' needs 8 GPU\(s\); none is visible"):
        platform.check_matches(dgx1, CPU, 1)
    with pytest.raises(ConfigError, match=r"'single_gpu' is for 1 GPU\(s\) per node .* has 8 "):
        platform.check_matches(single, Hardware(V100, 8, 16.0), 8)
    with pytest.raises(ConfigError, match=r"'dgx1_v100x8' is for 8 .* has 4 \(Tesla V100"):
        platform.check_matches(dgx1, Hardware(V100, 4, 16.0), 4)
    with pytest.raises(ConfigError, match=r"world size 12 is not a multiple of run\.gpus=8"):
        platform.check_matches(dgx1, Hardware(V100, 8, 16.0), 12)
    # The CPU demo needs no GPU, so it may run anywhere (e.g. a smoke test on a GPU node).
    platform.check_matches(_config("cpu_demo"), Hardware(V100, 8, 16.0), 1)


def test_platform_name():
    assert Hardware(V100, 8, 16.0).platform == "8xTesla V100-SXM2-16GB"
    assert Hardware(A100, 1, 80.0).platform == "1xNVIDIA A100-SXM4-80GB"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert CPU.platform == "3xCPU"
    finally:
        torch.set_num_threads(threads)


def test_detect(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert platform.detect() == CPU
    props = SimpleNamespace(name=A100, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert platform.detect() == Hardware(A100, 4, 80.0)


def test_train_refuses_auto_on_an_unsupported_gpu_count(monkeypatch, tmp_path, capsys):
    from harness import train

    monkeypatch.setattr(platform, "detect", lambda: Hardware(A100, 4, 80.0))
    code = train.cli(["--config", "auto", f"run.output_dir={tmp_path / 'runs'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no recipe for 4 GPUs per node" in err[0]
    assert not (tmp_path / "runs").exists()
