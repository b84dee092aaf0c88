"""Metrics: jsonl records, plain and tqdm progress, PNG plots from the file."""

from __future__ import annotations

import io
import json
import struct
import time

import pytest

from harness.metrics import PLOTS, MetricsWriter, read_metrics, write_plots

LOSSES = {"loss_objectness": 0.7, "loss_classifier": 1.5, "loss_mask": 0.6}


def _log_run(writer: MetricsWriter, iters: int = 3) -> None:
    for k in range(1, iters + 1):
        losses = {key: value / k for key, value in LOSSES.items()}
        writer.log_iteration(
            iteration=10 * k,
            epoch=1,
            losses=losses,
            lr=0.02 * k / iters,
            step_time=0.5,
            data_time=0.01,
            images_per_sec=32.0,
        )
    writer.log_eval(
        epoch=1, iteration=10 * iters, scores={"BBOX": 0.21, "SEGM": 0.19}, eval_time=12.5
    )


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_jsonl_records(tmp_path):
    with MetricsWriter(tmp_path, total_iters=100, stream=io.StringIO()) as writer:
        _log_run(writer)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == ["iter", "iter", "iter", "eval"]
    first = records[0]
    assert first["iteration"] == 10 and first["epoch"] == 1
    assert first["losses"] == LOSSES
    assert first["loss"] == pytest.approx(2.8)
    assert first["lr"] == pytest.approx(0.02 / 3)
    assert (first["step_time"], first["data_time"], first["img_per_s"]) == (0.5, 0.01, 32.0)
    assert records[-1] == {**records[-1], "epoch": 1, "iteration": 30, "BBOX": 0.21, "SEGM": 0.19}
    assert records[-1]["eval_time"] == 12.5
    # A second writer (a resumed run) appends.
    with MetricsWriter(tmp_path, total_iters=100, start_iter=30, stream=io.StringIO()) as writer:
        _log_run(writer, iters=1)
    assert len(read_metrics(tmp_path)) == 6


def test_plain_lines(tmp_path):
    stream = io.StringIO()
    with MetricsWriter(tmp_path, total_iters=100, stream=stream) as writer:
        _log_run(writer)
        writer.log_iteration(40, 2, {"loss_mask": 0.5}, 0.02, 0.5, 0.02, 30.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(
        "it 10/100 ep 1 | loss 2.800 (objectness 0.700 classifier 1.500 mask 0.600)"
    )
    assert "lr 0.00667 | 32.0 img/s | data 10 ms | eta ?" in lines[0]
    assert "eta " in lines[1] and "eta ?" not in lines[1]
    assert lines[3] == "eval epoch 1: box mAP 0.2100, mask mAP 0.1900 (12.5 s)"
    assert lines[4].endswith("| mAP 0.210/0.190 (ep 1)")


def test_tqdm_on_a_terminal(tmp_path):
    stream = io.StringIO()
    with MetricsWriter(tmp_path, total_iters=100, stream=stream, tty=True) as writer:
        _log_run(writer)
    text = stream.getvalue()
    assert "\r" in text and "30/100" in text and "img/s" in text
    assert "eval epoch 1: box mAP 0.2100" in text


def test_plots_are_pngs(tmp_path):
    with MetricsWriter(tmp_path, total_iters=100, stream=io.StringIO()) as writer:
        _log_run(writer, iters=5)
    paths = write_plots(tmp_path, targets={"BBOX": 0.377, "SEGM": 0.339})
    assert [p.name for p in paths] == list(PLOTS)
    for path in paths:
        assert path.parent == tmp_path / "plots"
        width, height = _png_size(path)
        assert width >= 400 and height >= 200
        assert path.stat().st_size > 5000  # axes, curves and labels, not a blank image


def test_plots_without_evaluations_and_with_a_torn_line(tmp_path):
    with MetricsWriter(tmp_path, total_iters=100, stream=io.StringIO()) as writer:
        writer.log_iteration(1, 1, {"loss_mask": 0.5}, 0.01, 0.5, 0.01, 30.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "iter", "iter')
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl:2"):
        paths = write_plots(tmp_path)
    for path in paths:
        _png_size(path)


def test_non_main_rank_is_silent(tmp_path):
    stream = io.StringIO()
    writer = MetricsWriter(tmp_path / "absent", total_iters=10, is_main=False, stream=stream)
    _log_run(writer)
    writer.close()
    assert stream.getvalue() == "" and not (tmp_path / "absent").exists()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        MetricsWriter(tmp_path / "absent", total_iters=10)
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        write_plots(tmp_path)
    with (
        MetricsWriter(tmp_path, total_iters=10, stream=io.StringIO()) as writer,
        pytest.raises(KeyError, match="SEGM"),
    ):
        writer.log_eval(1, 10, {"BBOX": 0.1}, 1.0)


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the TensorBoard events in run_dir, read as TensorBoard does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_events_carry_the_records(tmp_path):
    with MetricsWriter(tmp_path, total_iters=100, stream=io.StringIO()) as writer:
        _log_run(writer)
    assert list(tmp_path.glob("events.out.tfevents.*")), "no event file beside metrics.jsonl"
    scalars = _scalars(tmp_path)
    terms = {f"train/{key}" for key in LOSSES}
    assert set(scalars) == terms | {
        "train/loss",
        "train/lr",
        "train/img_per_s",
        "train/step_time",
        "train/data_time",
        "eval/box_mAP",
        "eval/mask_mAP",
        "eval/time",
    }
    for record in read_metrics(tmp_path):
        if record["type"] == "iter":
            step = record["iteration"]
            expected = {"train/loss": record["loss"], "train/lr": record["lr"]}
            expected["train/img_per_s"] = record["img_per_s"]
            expected |= {f"train/{k}": v for k, v in record["losses"].items()}
        else:
            step = record["iteration"]
            expected = {"eval/box_mAP": record["BBOX"], "eval/mask_mAP": record["SEGM"]}
        for tag, value in expected.items():
            # Events store float32.
            assert dict(scalars[tag])[step] == pytest.approx(value, rel=1e-6), tag
    assert [step for step, _ in scalars["train/loss"]] == [10, 20, 30]
    assert scalars["eval/box_mAP"] == [(30, pytest.approx(0.21))]


def test_tensorboard_hides_what_a_resumed_run_repeats(tmp_path):
    # The first process logged up to iteration 30; the run resumes from a checkpoint at 20.
    with MetricsWriter(tmp_path, total_iters=100, stream=io.StringIO()) as writer:
        _log_run(writer)
    # TensorBoard reads event files in name order, and names start with the creation second: a
    # resumed process starts later, as here.
    time.sleep(1.1)
    with MetricsWriter(tmp_path, total_iters=100, start_iter=20, stream=io.StringIO()) as writer:
        writer.log_iteration(30, 1, {"loss_mask": 0.25}, 0.01, 0.5, 0.01, 30.0)
        writer.log_iteration(40, 1, {"loss_mask": 0.2}, 0.01, 0.5, 0.01, 30.0)
    scalars = _scalars(tmp_path)
    assert [step for step, _ in scalars["train/loss"]] == [10, 20, 30, 40]
    assert dict(scalars["train/loss"])[30] == pytest.approx(0.25)
    # The evaluation at 30 belonged to the abandoned stretch.
    assert "eval/box_mAP" not in scalars or scalars["eval/box_mAP"] == []
