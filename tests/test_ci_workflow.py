""".github/workflows/image.yml: parses, checks the image on every change, builds it on a tag."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "image.yml"


def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def run_lines(job: dict) -> list[str]:
    return [line for step in job["steps"] for line in step.get("run", "").splitlines()]


def test_every_change_to_the_image_inputs_is_checked():
    on = workflow()["on"]
    inputs = on["push"]["paths"]
    assert on["pull_request"]["paths"] == inputs
    # What the image is made of: the renderer's inputs and outputs, the build script, the
    # service definitions (under docker/), the context filter and the workflow itself.
    for path in ("Dockerfile.backendai", "docker/**", "requirements.txt", ".dockerignore"):
        assert path in inputs
    for script in ("render_dockerfile.py", "container_requirements.py", "build_image.sh"):
        assert f"scripts/{script}" in inputs
    assert ".github/workflows/image.yml" in inputs
    check = run_lines(workflow()["jobs"]["check"])
    assert "python scripts/render_dockerfile.py --check" in check
    assert "hadolint --failure-threshold warning Dockerfile.backendai" in check


def test_a_tag_builds_pushes_and_rescans_through_build_image_sh():
    data = workflow()
    assert "v*" in data["on"]["push"]["tags"]
    build = data["jobs"]["build"]
    assert build["needs"] == "check" and "refs/tags/v" in build["if"]
    calls = [line for line in run_lines(build) if "scripts/build_image.sh" in line]
    assert len(calls) == 1
    script = " ".join(run_lines(build))
    for option in ("--registry", "--push", "--backendai-registry", "--project"):
        assert option in script
    assert shlex.split(calls[0])[0] == "scripts/build_image.sh"
    assert (ROOT / "scripts" / "build_image.sh").stat().st_mode & 0o111
    # The backend.ai client reads its endpoint and keys from BACKEND_* variables.
    step_env = {k for step in build["steps"] for k in step.get("env", {})}
    assert {"BACKEND_ENDPOINT", "BACKEND_ACCESS_KEY", "BACKEND_SECRET_KEY"} <= step_env
