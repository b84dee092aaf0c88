"""Checkpoints: round trip with RNG, atomic writes, corrupt-newest fallback, pruning."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness import checkpoint, config
from harness.checkpoint import (
    list_checkpoints,
    load_latest,
    restore_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)


def _trained_objects(init_scale: float = 1024.0):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer, scaler


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _names(path_dir) -> list[str]:
    return sorted(p.name for p in path_dir.iterdir())


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scaler = _trained_objects()
    cfg = config.load(None, ("solver.base_lr=0.04",))
    state = training_state(model, optimizer, scaler, 1234, 3, 96, cfg)
    after_save = _draws()
    path = save_checkpoint(tmp_path, state)
    assert path.name == "ckpt_00001234.pt"

    fresh_model, fresh_optimizer, fresh_scaler = _trained_objects(init_scale=2.0)
    assert not torch.equal(fresh_model[0].weight, model[0].weight)
    loaded = load_latest(tmp_path)
    restore_training_state(loaded, fresh_model, fresh_optimizer, fresh_scaler)
    for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    momentum = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    restored = [s["momentum_buffer"] for s in fresh_optimizer.state_dict()["state"].values()]
    for a, b in zip(momentum, restored, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fresh_scaler.get_scale() == 1024.0
    assert (loaded["iteration"], loaded["epoch"], loaded["sampler_position"]) == (1234, 3, 96)
    assert loaded["config"]["solver"]["base_lr"] == 0.04
    assert config.to_dict(config._build(config.Config, loaded["config"])) == config.to_dict(cfg)
    # Generators continue exactly where they were when the state was taken.
    assert _draws() == after_save


def test_rng_state_round_trip():
    state = rng_state()
    first = [_draws() for _ in range(3)]
    set_rng_state(state)
    assert [_draws() for _ in range(3)] == first
    with pytest.raises(KeyError, match="numpy"):
        set_rng_state({"python": state["python"], "torch": state["torch"]})


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"iteration": 1, "w": torch.ones(3)})
    before = _names(tmp_path)

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 partial zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert _names(tmp_path) == before == ["ckpt_00000001.pt", "ckpt_00000001.pt.sha256"]
    torch.testing.assert_close(load_latest(tmp_path)["w"], torch.ones(3))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_digest"])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, {"iteration": 10, "w": torch.full((1000,), 1.0)})
    newest = save_checkpoint(tmp_path, {"iteration": 20, "w": torch.full((1000,), 2.0)})
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        # Inside the tensor payload, where torch.load itself would not notice.
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    else:
        newest.with_name(newest.name + ".sha256").unlink()
    with pytest.warns(RuntimeWarning, match=r"ckpt_00000020\.pt"):
        state = load_latest(tmp_path)
    assert state["iteration"] == 10
    torch.testing.assert_close(state["w"], torch.full((1000,), 1.0))


def test_keep_prunes_oldest(tmp_path):
    for iteration in (5, 100, 7, 300, 42):
        save_checkpoint(tmp_path, {"iteration": iteration}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_00000042.pt",
        "ckpt_00000100.pt",
        "ckpt_00000300.pt",
    ]
    assert len(list(tmp_path.glob("*.sha256"))) == 3
    assert load_latest(tmp_path)["iteration"] == 300


def test_empty_and_bad_arguments(tmp_path):
    assert load_latest(tmp_path / "not_there") is None
    assert load_latest(tmp_path) is None
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, {"iteration": 1}, keep=0)
    with pytest.raises(KeyError, match="iteration"):
        save_checkpoint(tmp_path, {"epoch": 1})
    save_checkpoint(tmp_path, {"iteration": 1, "bad": object()})
    with pytest.raises(RuntimeError, match=r"ckpt_00000001\.pt verified but could not be loaded"):
        load_latest(tmp_path)
