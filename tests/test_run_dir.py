"""Run folders: timestamped name, config.yaml that loads back to the same config, no clobbering."""

from __future__ import annotations

import datetime

import pytest

from harness import config
from harness.run_dir import make_run_dir

WHEN = datetime.datetime(2026, 11, 28, 9, 5, 7, tzinfo=datetime.timezone.utc)


def test_layout_and_config_round_trip(tmp_path):
    cfg = config.load(None, ("solver.base_lr=0.04", "run.name=demo"))
    run_dir = make_run_dir(tmp_path / "runs", "demo", cfg, now=WHEN)
    assert run_dir == tmp_path / "runs" / "demo-20261128-090507"
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "plots").is_dir()
    assert config.load(run_dir / "config.yaml") == cfg


def test_same_second_gets_a_new_folder(tmp_path):
    cfg = config.load()
    first = make_run_dir(tmp_path, "demo", cfg, now=WHEN)
    second = make_run_dir(tmp_path, "demo", cfg, now=WHEN)
    third = make_run_dir(tmp_path, "demo", cfg, now=WHEN)
    assert [first.name, second.name, third.name] == [
        "demo-20261128-090507",
        "demo-20261128-090507-2",
        "demo-20261128-090507-3",
    ]


def test_timestamp_is_utc(tmp_path):
    local = WHEN.astimezone(datetime.timezone(datetime.timedelta(hours=9)))
    assert make_run_dir(tmp_path, "demo", config.load(), now=local).name == "demo-20261128-090507"


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-flag"])
def test_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="run name"):
        make_run_dir(tmp_path, name, config.load())
