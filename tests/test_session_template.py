"""backendai/session-template.yaml, checked against the Backend.AI manager's task-template schema.

The schema is read off lablup/backend.ai at commit c0032c472e4b40e0eb012bdd1cd3f081854dd891:

- src/ai/backend/manager/api/rest/session_template/handler.py, `create`: the payload is JSON, or
  else YAML read with `yaml.safe_load_all`; each document is a mapping with `template` and an
  optional `name` (`group_id`, `user_uuid`).
- src/ai/backend/manager/models/session_template.py, `task_template_v1` (trafaret): the template.
  Only the top level allows extra keys (`.allow_extra("*")`); a nested `t.Dict` rejects unknown
  keys, and `t.String` rejects empty strings. `check_task_template` then refuses mount paths that
  name a reserved vfolder (src/ai/backend/common/defs/__init__.py: RESERVED_VFOLDERS and
  RESERVED_VFOLDER_PATTERNS, after removing a leading /home/work/).
- src/ai/backend/manager/services/session/service.py, `create_from_template`: mount paths are
  measured with `len(value)`, so each must be a string.

The schema is mirrored here in plain Python so that the test needs neither trafaret nor the manager.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_readme_cli import README, option_value, readme_commands, split_command

TEMPLATE = Path(__file__).resolve().parents[1] / "backendai" / "session-template.yaml"

Check = Callable[[Any, str, list[str]], None]


def _string(value: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, str) or not value:
        errors.append(f"{where}: must be a non-empty string, not {value!r}")


def _anything(value: Any, where: str, errors: list[str]) -> None:
    pass


def _nullable(check: Check) -> Check:
    def nullable(value: Any, where: str, errors: list[str]) -> None:
        if value is not None:
            check(value, where, errors)

    return nullable


def _enum(*allowed: str) -> Check:
    def enum(value: Any, where: str, errors: list[str]) -> None:
        if value not in allowed:
            errors.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")

    return enum


def _mapping(key: Check, value: Check) -> Check:
    def mapping(data: Any, where: str, errors: list[str]) -> None:
        if not isinstance(data, dict):
            errors.append(f"{where}: must be a mapping")
            return
        for k, v in data.items():
            key(k, f"{where} key {k!r}", errors)
            value(v, f"{where}.{k}", errors)

    return mapping


def _list(item: Check) -> Check:
    def list_(data: Any, where: str, errors: list[str]) -> None:
        if not isinstance(data, list):
            errors.append(f"{where}: must be a list")
            return
        for i, v in enumerate(data):
            item(v, f"{where}[{i}]", errors)

    return list_


def _dict(keys: list[tuple[tuple[str, ...], bool, Check]], extra: bool = False) -> Check:
    """A trafaret Dict: (aliases, required, check) per key; unknown keys are errors unless extra."""

    def dict_(data: Any, where: str, errors: list[str]) -> None:
        if not isinstance(data, dict):
            errors.append(f"{where}: must be a mapping")
            return
        known = set()
        for aliases, required, check in keys:
            known.update(aliases)
            given = next((a for a in aliases if a in data), None)
            if given is None:
                if required:
                    errors.append(f"{where}.{aliases[0]}: is required")
                continue
            check(data[given], f"{where}.{given}", errors)
        if not extra:
            for k in data.keys() - known:
                errors.append(f"{where}.{k}: is not allowed")

    return dict_


REQUIRED, OPTIONAL = True, False
_SESSION_TYPES = ("interactive", "batch", "inference", "system")  # common/types.py SessionTypes
TASK_TEMPLATE_V1 = _dict(
    [
        (("api_version", "apiVersion"), REQUIRED, _string),
        (("kind",), REQUIRED, _enum("taskTemplate", "task_template")),
        (
            ("metadata",),
            REQUIRED,
            _dict([(("name",), REQUIRED, _string), (("tag",), OPTIONAL, _nullable(_string))]),
        ),
        (
            ("spec",),
            REQUIRED,
            _dict(
                [
                    (("type", "session_type", "sessionType"), OPTIONAL, _enum(*_SESSION_TYPES)),
                    (
                        ("kernel",),
                        REQUIRED,
                        _dict(
                            [
                                (("image",), REQUIRED, _string),
                                (("architecture",), OPTIONAL, _nullable(_string)),
                                (("environ",), OPTIONAL, _nullable(_mapping(_string, _string))),
                                (
                                    ("run",),
                                    OPTIONAL,
                                    _nullable(
                                        _dict(
                                            [
                                                (("bootstrap",), OPTIONAL, _nullable(_string)),
                                                (
                                                    (
                                                        "startup",
                                                        "startup_command",
                                                        "startupCommand",
                                                    ),
                                                    OPTIONAL,
                                                    _nullable(_string),
                                                ),
                                            ]
                                        )
                                    ),
                                ),
                                (
                                    ("git",),
                                    OPTIONAL,
                                    _nullable(
                                        _dict(
                                            [
                                                (("repository",), REQUIRED, _string),
                                                (("commit",), OPTIONAL, _nullable(_string)),
                                                (("branch",), OPTIONAL, _nullable(_string)),
                                                (
                                                    ("credential",),
                                                    OPTIONAL,
                                                    _nullable(
                                                        _dict(
                                                            [
                                                                (("username",), REQUIRED, _string),
                                                                (("password",), REQUIRED, _string),
                                                            ]
                                                        )
                                                    ),
                                                ),
                                                (
                                                    ("destination_dir", "destinationDir"),
                                                    OPTIONAL,
                                                    _nullable(_string),
                                                ),
                                            ]
                                        )
                                    ),
                                ),
                            ]
                        ),
                    ),
                    (("scaling_group",), OPTIONAL, _nullable(_string)),
                    (("mounts",), OPTIONAL, _nullable(_mapping(_string, _anything))),
                    (("resources",), OPTIONAL, _nullable(_mapping(_string, _anything))),
                    (("agent_list", "agentList"), OPTIONAL, _nullable(_list(_string))),
                ]
            ),
        ),
    ],
    extra=True,
)
RESERVED_VFOLDERS = {
    ".terminfo", ".jupyter", ".tmux.conf", ".ssh", "/home/work", "/bin", "/boot", "/dev", "/etc",
    "/lib", "/lib64", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
    "/tmp", "/usr", "/var", "/home",
}  # fmt: skip
RESERVED_VFOLDER_PATTERNS = [re.compile(r"^\.[a-z0-9]+rc$"), re.compile(r"^\.[a-z0-9]+_profile$")]


def check_document(doc: Any) -> list[str]:
    """The problems the manager would find in one YAML document of a `session-template create`."""
    errors: list[str] = []
    _dict(
        [
            (("template",), REQUIRED, TASK_TEMPLATE_V1),
            (("name",), OPTIONAL, _nullable(_string)),
            (("group_id",), OPTIONAL, _anything),
            (("user_uuid",), OPTIONAL, _anything),
        ]
    )(doc, "document", errors)
    if errors:
        return errors
    for name, path in (doc["template"]["spec"].get("mounts") or {}).items():
        if not isinstance(path, str):
            errors.append(f"spec.mounts.{name}: the mount path must be a string, not {path!r}")
            continue
        folder = path.removeprefix("/home/work/")
        if folder in RESERVED_VFOLDERS or any(p.match(folder) for p in RESERVED_VFOLDER_PATTERNS):
            errors.append(f"spec.mounts.{name}: path {path} is reserved for internal operations")
    return errors


@pytest.fixture(scope="module")
def documents() -> list[Any]:
    return list(yaml.safe_load_all(TEMPLATE.read_text()))


@pytest.fixture(scope="module")
def template(documents) -> dict[str, Any]:
    assert len(documents) == 1
    return documents[0]["template"]


def test_template_passes_the_manager_schema(documents):
    assert [check_document(d) for d in documents] == [[]]


def test_template_is_the_mlperf_batch_job(template):
    spec, kernel = template["spec"], template["spec"]["kernel"]
    assert spec["type"] == "batch"
    assert spec["resources"]["cuda.device"] == "8"
    mounts = spec["mounts"]
    assert mounts == {"mlperf-data": "/home/work/mlperf-data"}
    assert kernel["environ"]["DATADIR"].startswith(mounts["mlperf-data"] + "/")
    startup = kernel["run"]["startup"]
    # sessions start in /home/work: change to the project before running the job
    assert startup.startswith("cd /opt/mlperf-maskrcnn && ./run_and_time.sh ")
    output = re.search(r"run\.output_dir=(\S+)", startup)
    assert output and output.group(1).startswith(mounts["mlperf-data"] + "/"), startup


def test_readme_starts_the_template_with_what_it_cannot_hold(template):
    """README's `create-from-template` gives what a task template has no key for (shmem) and what
    the client and manager replace with the request's value (session type, startup command,
    mounts): the same values as the template."""
    commands = readme_commands(README.read_text())
    images = [
        c[-1] for c in commands if split_command(c)[0] == ("session", "create") and "--type" in c
    ]
    assert template["spec"]["kernel"]["image"] in images
    starts = [c for c in commands if split_command(c)[0] == ("session", "create-from-template")]
    assert starts, "README starts no session from the template"
    for c in starts:
        assert option_value(c, "--type") == "batch"
        assert (option_value(c, "--resource-opts") or "").startswith("shmem=")
        assert (
            option_value(c, "-c", "--startup-command")
            == template["spec"]["kernel"]["run"]["startup"]
        )
        assert option_value(c, "-m", "--mount") in template["spec"]["mounts"]


def _broken(path: str, value: Any) -> dict[str, Any]:
    """The shipped template's document with `value` put at the dotted `path` (None deletes)."""
    doc = copy.deepcopy(yaml.safe_load(TEMPLATE.read_text()))
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("template", None, "document.template: is required"),
        ("template/spec/kernel/image", None, "kernel.image: is required"),
        ("template/kind", "sessionTemplate", "is not one of taskTemplate"),
        ("template/metadata/name", "", "must be a non-empty string"),
        ("template/spec/type", "training", "'training' is not one of"),
        # shmem is a resource option; a task template has no key for it
        ("template/spec/resource_opts", {"shmem": "16g"}, "spec.resource_opts: is not allowed"),
        ("template/spec/kernel/environ", {"OMP_NUM_THREADS": 5}, "environ.OMP_NUM_THREADS"),
        ("template/spec/mounts", {"mlperf-data": None}, "the mount path must be a string"),
        ("template/spec/mounts", {"keys": "/home/work/.ssh"}, "is reserved"),
        ("template/spec/mounts", {"rc": ".bashrc"}, "is reserved"),
    ],
)
def test_check_rejects_what_the_manager_rejects(path, value, problem):
    errors = check_document(_broken(path, value))
    assert any(problem in e for e in errors), errors
