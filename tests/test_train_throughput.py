"""benchmarks/train_throughput.py: a CPU smoke run writes the report its GPU users read."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.train_throughput import main, parse_args

TINY = ["--device", "cpu", "--batch-sizes", "1", "--image-size", "128", "160"]


def test_cpu_smoke_run_writes_both_models_report(tmp_path, capsys):
    out = tmp_path / "nested" / "throughput.json"
    main([*TINY, "--iters", "1", "--warmup", "0", "--no-amp", "--json", str(out)])

    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    assert report["amp"] is False and report["precision"] == "fp32"
    assert report["image_size"] == [128, 160]
    assert (report["iters"], report["warmup"]) == (1, 0)
    assert report["torch"] == torch.__version__
    by_model = {r["model"]: r for r in report["results"]}
    assert sorted(by_model) == ["ours", "peer"]
    for r in by_model.values():
        assert r["batch_size"] == 1 and r["error"] is None
        assert r["images_per_s"] > 0
        assert r["s_per_iter"] == pytest.approx(1 / r["images_per_s"])
        # Peak memory is a CUDA allocator statistic: absent on the CPU rather than a made-up 0.
        assert r["peak_memory_bytes"] is None
    ratio = by_model["ours"]["images_per_s"] / by_model["peer"]["images_per_s"]
    assert report["speedup"] == {"1": pytest.approx(ratio)}

    table = capsys.readouterr().out
    assert "ours" in table and "peer" in table and "fp32" in table


@pytest.mark.parametrize(
    "bad",
    [
        ["--batch-sizes", "0"],
        ["--image-size", "16", "160"],
        ["--iters", "0"],
        ["--warmup", "-1"],
        ["--device", "tpu"],
        ["--models", "detectron2"],
    ],
)
def test_bad_arguments_exit_with_usage_error(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*TINY, "--json", str(tmp_path / "r.json"), *bad])
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--json", str(tmp_path / "r.json")])
    assert "no GPU is visible" in capsys.readouterr().err
