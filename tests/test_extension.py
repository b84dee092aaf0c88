"""The built extension imports and reports how it was built."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import collect_env, extension

ROOT = Path(__file__).resolve().parents[1]
# Evaluation post-processing on the host (harness/ops/mask_rle.py): it encodes COCO strings from
# CPU tensors, one copy per batch, in the training process or its workers; no CUDA kernel exists.
HOST_ONLY_OPS = {"harness::mask_rle", "harness::resize_bilinear"}


def test_extension_imports_and_matches_torch():
    ext = extension.load()
    assert ext.torch_version() == torch.__version__


def _elf_section_names(path: Path) -> set[str]:
    """Section names of a 64-bit little-endian ELF file, read from its section header table."""
    data = path.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", f"{path} is not a 64-bit little-endian ELF file"

    def field(offset: int, size: int) -> int:
        return int.from_bytes(data[offset : offset + size], "little")

    # The ELF64 header: e_shoff (0x28), e_shentsize (0x3A), e_shnum (0x3C), e_shstrndx (0x3E);
    # a section header holds the offset of its name at 0 and that of its contents at 0x18.
    table, entry_size = field(0x28, 8), field(0x3A, 2)
    count, names_index = field(0x3C, 2), field(0x3E, 2)
    names_offset = field(table + names_index * entry_size + 0x18, 8)
    names = set()
    for i in range(count):
        start = names_offset + field(table + i * entry_size, 4)
        names.add(data[start : data.index(b"\0", start)].decode())
    return names


def test_cuda_compiled_agrees_with_what_the_library_holds():
    """cuda_compiled() (set by the build's WITH_CUDA macro) agrees with what the built .so holds:
    a CUDA kernel registered for every harness op next to its CPU kernel, and the section of
    device code nvcc embeds (.nv_fatbin); or neither of them."""
    ext = extension.load()
    compiled = ext.cuda_compiled()
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("harness::"))
    assert {"harness::nms", "harness::roi_align", "harness::mask_targets"} <= set(ops)
    assert set(ops) >= HOST_ONLY_OPS
    for op in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
        assert has_cuda == (compiled and op not in HOST_ONLY_OPS), op
    sections = _elf_section_names(Path(ext.__file__))
    assert ".text" in sections and ".dynsym" in sections
    assert (".nv_fatbin" in sections) == compiled, sorted(sections)


def test_cuda_archs_follow_the_build():
    ext = extension.load()
    archs = ext.cuda_archs()
    if not ext.cuda_compiled():
        assert archs == []
        return
    assert archs, "a CUDA build must record its archs"
    assert {a.removesuffix("+PTX") for a in archs} <= {"7.0", "8.0", "9.0", "10.0", "12.0"} | set(
        os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";")
    )


def _setup_module():
    spec = importlib.util.spec_from_file_location("harness_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_archs_carry_ptx_for_the_newest():
    """Without PTX, a GPU newer than every listed arch (e.g. sm_100) cannot load the kernels."""
    default = _setup_module()._default_arch_list
    assert default(["8.0", "9.0"]) == "8.0;9.0+PTX"
    assert default(["9.0", "7.0", "10.0"]) == "9.0;7.0;10.0+PTX"
    assert default([]) == ""


def test_nms_avx2_clones_are_x86_only():
    """target_clones("avx2") is an x86 attribute: GCC rejects it when building for aarch64
    (GH200). Preprocess nms_cpu.cpp as an aarch64 compiler would see it (no __x86_64__)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    source = (ROOT / "csrc" / "nms" / "nms_cpu.cpp").read_text()
    macros = "".join(
        line + "\n"
        for line in source.splitlines()
        if line.startswith("#if")
        or line.startswith("#define HARNESS_AVX2")
        or line.startswith("#else")
        or line.startswith("#endif")
    )
    for defines, expected in ((["-U__x86_64__", "-U__i386__", "-D__aarch64__"], False), ([], True)):
        out = subprocess.run(
            [gxx, "-E", "-P", *defines, "-x", "c++", "-"],
            input=macros + "HARNESS_AVX2_CLONES\n",
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert ("target_clones" in out) == expected, (defines, out)


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
