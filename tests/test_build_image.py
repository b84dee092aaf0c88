"""scripts/build_image.sh, run here in --dry-run mode (no container engine on this machine)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.render_dockerfile import BASE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_image.sh"


def build(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        hadolint = Path(sys.executable).parent / "hadolint"
        env |= {"PATH": path, "PYTHON": sys.executable}
        env["HADOLINT"] = str(hadolint) if hadolint.exists() else shutil.which("hadolint") or ""
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def expected_tag(registry: str = "") -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    sha = git("rev-parse", "--short=8", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        sha += "-dirty"
    return f"{registry}mlperf/maskrcnn:{BASE.release}-{sha}"


def test_dry_run_prints_check_lint_and_build_with_a_tag_from_the_pins():
    proc = build("--dry-run", "--engine", "docker")
    assert proc.returncode == 0, proc.stderr
    check, lint, image = commands(proc.stdout)
    assert check[1:] == ["scripts/render_dockerfile.py", "--check"]
    assert Path(lint[0]).name == "hadolint"
    assert lint[1:] == ["--failure-threshold", "warning", "Dockerfile.backendai"]
    assert image == ["docker", "build", "-f", "Dockerfile.backendai", "-t", expected_tag(), "."]
    assert proc.stdout.splitlines()[-1] == f"image: {expected_tag()}"


def test_push_and_rescan_use_the_clients_options():
    proc = build(
        "--dry-run",
        "--engine",
        "podman",
        "--registry",
        "registry.example.com/",
        "--push",
        "--backendai-registry",
        "registry.example.com",
        "--project",
        "mlperf team",
    )
    assert proc.returncode == 0, proc.stderr
    *_, image, push, rescan = commands(proc.stdout)
    tag = expected_tag("registry.example.com/")
    assert image[:2] == ["podman", "build"] and image[-2] == tag
    assert push == ["podman", "push", tag]
    # lablup/backend.ai src/ai/backend/client/cli/admin/image.py (c0032c47): `rescan` has the
    # options -r/--registry and -p/--project and no positional argument.
    assert rescan == [
        "backend.ai",
        *("admin", "image", "rescan", "-r", "registry.example.com", "-p", "mlperf team"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--push"], "--push needs --registry"),
        (["--registry", "r.example.com", "--backendai-registry", "r"], "add --push"),
        (["--project", "p"], "add --backendai-registry"),
        (["--engine", "rkt"], "docker or podman"),
        (["--registry"], "--registry needs a value"),
        (["--tag", "x"], "unknown argument '--tag'"),
    ],
)
def test_bad_arguments_get_a_one_line_error(args, message):
    proc = build("--dry-run", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_a_missing_engine_is_named_after_the_checks_pass(tmp_path):
    # A PATH with git and bash but neither docker nor podman: the real (not dry) run checks
    # freshness and lints, then stops at the build, naming the missing engine.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "bash", "dirname", "sed"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bin_dir / tool).symlink_to(real.stdout.strip())
    proc = build(path=str(bin_dir))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [c[1:2] for c in commands(proc.stdout)][:2] == [
        ["scripts/render_dockerfile.py"],
        ["--failure-threshold"],
    ]
    assert "docker not found" in proc.stderr
