"""The built extension imports and reports how it was built."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from harness import collect_env, extension


def test_extension_imports_and_matches_torch():
    ext = extension.load()
    assert ext.torch_version() == torch.__version__
    assert isinstance(ext.cuda_compiled(), bool)


def test_cuda_archs_follow_the_build():
    ext = extension.load()
    archs = ext.cuda_archs()
    if not ext.cuda_compiled():
        assert archs == []
        return
    assert archs, "a CUDA build must record its archs"
    assert set(archs) <= {"7.0", "8.0", "9.0", "10.0", "12.0"} | set(
        os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";")
    )


@pytest.mark.skipif(
    os.environ.get("FORCE_CUDA") == "0" or shutil.which("nvcc") is None,
    reason="CUDA objects are compiled only where nvcc exists and FORCE_CUDA is not 0",
)
def test_cuda_objects_compiled_where_nvcc_exists():
    assert extension.load().cuda_compiled()


def test_collect_env_reports_extension_build():
    out = subprocess.run(
        [sys.executable, "-m", "harness.collect_env"], capture_output=True, text=True, check=True
    ).stdout
    for field in ("Python:", "torch:", "DALI:", "pycocotools:", "mlperf-logging:", "apex:"):
        assert field in out
    expected = "CUDA, archs" if extension.load().cuda_compiled() else "CPU only"
    assert f"harness._C: {expected}" in out


def test_collect_env_names_a_stale_build(monkeypatch):
    class Stale:
        __file__ = "stale.so"

        @staticmethod
        def torch_version():
            return "0.0.1"

    monkeypatch.setitem(sys.modules, "harness._C", Stale)
    monkeypatch.setattr("harness._C", Stale, raising=False)
    extension.load.cache_clear()
    try:
        lines = collect_env._extension_lines()
    finally:
        extension.load.cache_clear()
    assert "PROBLEM" in lines[0] and "built against torch 0.0.1" in lines[0]
