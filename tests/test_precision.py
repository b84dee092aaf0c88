"""run.precision: amp, fp32 and auto (bf16 only on CPUs that compute it natively)."""

from __future__ import annotations

import pytest
import torch

from harness import config, train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def precision(name: str) -> config.Config:
    return config.load("configs/cpu_demo.yaml", [f"run.precision={name}"])


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx2 avx512f", False), ("fpu avx2 avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)],
)
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert train.native_bf16(cpuinfo) is native
    assert train.native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_fp16_on_cuda_and_bf16_only_on_native_cpus(monkeypatch, native):
    monkeypatch.setattr(train, "native_bf16", lambda: native)
    assert train.autocast_dtype(precision("auto"), CUDA) == torch.float16
    assert train.autocast_dtype(precision("auto"), CPU) == (torch.bfloat16 if native else None)
    assert train.autocast_dtype(precision("amp"), CPU) == torch.bfloat16
    assert train.autocast_dtype(precision("amp"), CUDA) == torch.float16
    assert train.autocast_dtype(precision("fp32"), CUDA) is None


def test_unknown_precision_is_refused_at_load():
    with pytest.raises(config.ConfigError, match=r"run\.precision.*'bf16'"):
        config.load(None, ("run.precision=bf16",))
