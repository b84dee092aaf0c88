"""docker/service-defs: the definitions the kernel runner starts the advertised services from.

Backend.AI's kernel runner reads /etc/backend.ai/service-defs/<name>.json into its
ServiceDefinition and builds the command line in ServiceParser.start_service; both live in
lablup/backend.ai src/ai/backend/kernel/service.py (read at commit c0032c472e4b40e0eb012bdd1cd3f081854dd891,
2026-08-23). The runner's variables are runtime_path (the image's ai.backend.runtime-path) and
ports (the session's container ports of the service), set in src/ai/backend/kernel/base.py.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.metrics import MetricsWriter
from scripts.render_dockerfile import BASE, SERVICE_DEFS, SERVICES
from tests.test_dockerfile import dockerfile, labels

# ServiceDefinition's attributes; "prestart" is read as prestart_actions.
FIELDS = {
    "command",
    "shell",
    "noop",
    "url_template",
    "prestart_actions",
    "prestart",
    "env",
    "allowed_envs",
    "allowed_arguments",
    "default_arguments",
}
# ServiceArgumentInterpolator: ${{ expr }} or {expr} not preceded by $ or {.
_EXPR = re.compile(r"(\$\{\{\s*(?P<a>.*?)\s*\}\})|((?<![${])\{\s*(?P<b>.*?)\s*\})")


def definitions() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in SERVICE_DEFS.glob("*.json")}


def command_line(
    definition: dict, variables: dict, arguments: dict[str, str] | None = None
) -> list[str]:
    """The argv ServiceParser.start_service builds: the command, then default arguments
    overridden by the user's (each must be allowed), every {expression} interpolated."""
    command = definition["command"]
    argv = [definition.get("shell", "bash"), "-c", command] if isinstance(command, str) else command
    extra = dict(definition.get("default_arguments", {}))
    for name, value in (arguments or {}).items():
        if name not in definition.get("allowed_arguments", []):
            raise ValueError(f"argument {name} not allowed")
        extra[name] = value
    argv = list(argv)
    for name, value in extra.items():
        argv.append(name)
        argv += [value] if isinstance(value, str) else list(value or [])

    def interpolate(part: str) -> str:
        return _EXPR.sub(
            lambda m: ("{" + (m.group("a") or m.group("b")) + "}").format_map(variables), part
        )

    return [interpolate(part) for part in argv]


def test_every_advertised_service_has_a_definition_and_no_other():
    ports = labels(dockerfile())["ai.backend.service-ports"]
    advertised = {item.split(":")[0] for item in ports.split(",")}
    assert advertised == set(definitions()) == {name for name, _ in SERVICES}
    # The image copies the folder where the runner looks for it.
    copies = [a.split() for k, a in dockerfile() if k == "COPY"]
    assert ["docker/service-defs", "/etc/backend.ai/service-defs"] in copies
    # The build fails when the image cannot import a service it advertises.
    imports = [m.group(1) for k, a in dockerfile() if (m := re.search(r'-c "import ([^"]+)"', a))]
    assert any(set(i.replace(" ", "").split(",")) == advertised for i in imports), imports


@pytest.mark.parametrize("name", sorted(definitions()))
def test_definition_is_one_the_runner_accepts(name):
    definition = definitions()[name]
    assert set(definition) <= FIELDS, f"{name}.json: unknown keys {set(definition) - FIELDS}"
    argv = command_line(definition, {"runtime_path": BASE.python_path, "ports": [8090]})
    # Started with the image's Python, on the port Backend.AI maps, on every interface.
    assert argv[0] == BASE.python_path
    assert "8090" in " ".join(argv) and "0.0.0.0" in " ".join(argv)
    assert set(definition.get("default_arguments", {})) <= set(
        definition.get("allowed_arguments", [])
    )


def test_an_argument_the_definition_does_not_allow_is_refused():
    with pytest.raises(ValueError, match="--bind_all"):
        command_line(definitions()["tensorboard"], {}, {"--bind_all": ""})


def test_tensorboard_defaults_to_the_projects_runs_folder():
    argv = command_line(definitions()["tensorboard"], {"runtime_path": "py", "ports": [6006]})
    assert argv[argv.index("--logdir") + 1] == "/opt/mlperf-maskrcnn/runs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_service_serves_a_runs_scalars(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "demo-20260101-000000"
    run.mkdir(parents=True)
    with MetricsWriter(run, total_iters=20, stream=io.StringIO()) as writer:
        writer.log_iteration(10, 1, {"loss_mask": 0.5}, 0.01, 0.5, 0.01, 30.0)
        writer.log_eval(1, 10, {"BBOX": 0.2, "SEGM": 0.18}, 3.0)
    port = _free_port()
    # As a user would start it on a run folder in a vfolder: --arg "--logdir <folder>".
    argv = command_line(
        definitions()["tensorboard"],
        {"runtime_path": sys.executable, "ports": [port]},
        {"--logdir": str(runs)},
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, tags = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
                with urllib.request.urlopen(url, timeout=5) as response:
                    tags = json.load(response)
                if tags.get(run.name):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        assert tags and run.name in tags, f"tensorboard lists {tags}"
        assert {"train/loss", "train/loss_mask", "eval/box_mAP", "eval/mask_mAP"} <= set(
            tags[run.name]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_folder_default_is_where_run_and_time_writes():
    # run.output_dir defaults to "runs", relative to the project root run_and_time.sh cds into.
    from harness.config import RunConfig

    assert RunConfig().output_dir == "runs"
    assert 'cd "$(dirname "$0")"' in (Path(__file__).parents[1] / "run_and_time.sh").read_text()
