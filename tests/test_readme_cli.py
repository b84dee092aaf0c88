"""Every `backend.ai ...` command in README.md, checked against the Backend.AI client's own CLI.

The table below is read off the click definitions of the client, lablup/backend.ai at commit
c0032c472e4b40e0eb012bdd1cd3f081854dd891 (VERSION 26.8.0rc1), under src/ai/backend/client/cli/:

- main.py: the root group (`--skip-sslcert-validation`, `--output`, `--version`, and `-h/--help`,
  whose names every subcommand inherits).
- session/args.py: START_OPTION, the options shared by `session create` and
  `session create-from-template`.
- session/lifecycle.py: `session create` (also `create`/`start` at the top level),
  `create-from-template` (also `start-from-template`), `destroy` (aliases `rm`, `kill`), `logs`,
  `status-history`, `events` (also at the top level; `--wait` exists since client 25.13,
  lablup/backend.ai#5650).
- admin/session.py: `session list` (also `ps`), `session info` (also `info`).
- admin/image.py: `admin image rescan` takes no argument, only `-r/--registry` and `-p/--project`.
- vfolder.py: `vfolder list-hosts`, `create`, `info`, `ls`, `mkdir`, `upload`, `download`.
- session_template.py: `session-template` (alias `sesstpl`) `create`, `list`, `get`, `update`,
  `delete`.
- logs.py: `task-logs` (a batch job's output as kept in the `.logs` vfolder).
- image.py: `image list`.

Click names a command after its function with `_` turned into `-` (`list_hosts` -> `list-hosts`);
aliases come from AliasGroupMixin in src/ai/backend/cli/extensions.py. The test takes each command
from the README's code blocks (line continuations joined, comments dropped, `&&`/`;`/`|` chains
split) and from its inline code spans, and checks the subcommand path, every option (known; takes a
value or not; the value among the allowed choices) and the number of positional arguments.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Cmd:
    """One click command: its options and how many positional arguments it takes."""

    values: frozenset[str]  # options that take a value, every spelling
    flags: frozenset[str]  # options that take none
    args: tuple[int, int | None]  # positional arguments: at least, at most (None: no limit)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # click.Choice values
    nocase: frozenset[str] = frozenset()  # Choice options with case_sensitive=False (lower case)


def _cmd(
    values: str = "",
    flags: str = "",
    args: tuple[int, int | None] = (0, 0),
    choices: dict[str, tuple[str, ...]] | None = None,
    nocase: str = "",
) -> Cmd:
    """A Cmd from space-separated spellings; every command also takes -h/--help."""
    return Cmd(
        frozenset(values.split()),
        frozenset(flags.split()) | {"-h", "--help"},
        args,
        choices or {},
        frozenset(nocase.split()),
    )


_OWNER = " -o --owner --owner-access-key"
_START_VALUES = (  # session/args.py START_OPTION
    " -t --name --client-token --type --priority --starts-at --max-wait --callback-url -e --env"
    " --tag -v --volume -m --mount --scaling-group --sgroup -r --resources --cluster-size"
    " --resource-opts -d --domain -g --group --network"
)
_START_FLAGS = " --enqueue-only --no-reuse"
_SESSION_TYPES = ("interactive", "batch", "inference", "system")  # common/types.py SessionTypes
_STATUSES = (  # admin/session.py, `--status` of `session list` (case-sensitive)
    "PENDING", "SCHEDULED", "PULLING", "PREPARED", "PREPARING", "CREATING", "RUNNING",
    "RESTARTING", "RUNNING_DEGRADED", "TERMINATING", "TERMINATED", "ERROR", "CANCELLED", "ALL",
)  # fmt: skip

MAIN = _cmd(
    values="--output",
    flags="--skip-sslcert-validation --version",
    choices={"--output": ("json", "console")},
)
_CREATE = _cmd(
    values=_START_VALUES + _OWNER + " -c --startup-command --timeout --batch-timeout --depends"
    " --bootstrap-script --arch --architecture --cluster-mode --preopen --assign-agent",
    flags=_START_FLAGS,
    args=(1, 1),  # IMAGE
    choices={"--type": _SESSION_TYPES, "--cluster-mode": ("single-node", "multi-node")},
    nocase="--type --cluster-mode",
)
_CREATE_FROM_TEMPLATE = _cmd(  # no --cluster-mode here
    values=_START_VALUES + _OWNER + " -i --image -c --startup-command --timeout --batch-timeout"
    " --depends",
    flags=_START_FLAGS + " --no-mount --no-env --no-resource",
    args=(1, 1),  # TEMPLATE_ID
    choices={"--type": _SESSION_TYPES},
    nocase="--type",
)
_DESTROY = _cmd(values=_OWNER, flags="-f --forced -s --stats -r --recursive", args=(0, None))
_EVENTS = _cmd(values=_OWNER + " --scope --wait", flags="-q --quiet", args=(1, 1))
_LIST = _cmd(
    values="-s --status --access-key -f --format --filter --order --offset --limit",
    flags="--name-only --dead --running --detail --plain -a --all",
    choices={"-s": _STATUSES, "--status": _STATUSES},
)

COMMANDS: dict[tuple[str, ...], Cmd] = {
    ("session", "create"): _CREATE,
    ("create",): _CREATE,
    ("session", "create-from-template"): _CREATE_FROM_TEMPLATE,
    ("create-from-template",): _CREATE_FROM_TEMPLATE,
    ("session", "destroy"): _DESTROY,
    ("destroy",): _DESTROY,
    ("session", "events"): _EVENTS,
    ("events",): _EVENTS,
    ("session", "logs"): _cmd(values="-k --kernel --kernel-id", args=(1, 1)),
    ("session", "status-history"): _cmd(args=(1, 1)),
    ("session", "list"): _LIST,
    ("ps",): _LIST,
    ("session", "info"): _cmd(args=(1, 1)),
    ("info",): _cmd(args=(1, 1)),
    ("task-logs",): _cmd(args=(1, 1)),
    ("admin", "image", "rescan"): _cmd(values="-r --registry -p --project"),
    ("admin", "image", "list"): _cmd(flags="--operation"),
    ("image", "list"): _cmd(flags="--customized"),
    ("vfolder", "list-hosts"): _cmd(),
    ("vfolder", "create"): _cmd(
        values="-g --group --unmanaged-path -m --usage-mode -p --permission",
        flags="--unmanaged --cloneable --allow-clone",
        args=(1, 2),  # NAME [HOST]
    ),
    ("vfolder", "info"): _cmd(args=(1, 1)),
    ("vfolder", "ls"): _cmd(args=(1, 2)),  # NAME [PATH]
    ("vfolder", "mkdir"): _cmd(flags="-p --parents -e --exist-ok", args=(1, None)),
    ("vfolder", "upload"): _cmd(
        values="-b --base-dir -d --dst-dir --chunk-size --override-storage-proxy",
        flags="-r --recursive",
        args=(1, None),
    ),
    ("vfolder", "download"): _cmd(
        values="-b --base-dir --chunk-size --override-storage-proxy --max-retries", args=(1, None)
    ),
    ("session-template", "create"): _cmd(values="-f --file -d --domain -g --group" + _OWNER),
    ("session-template", "list"): _cmd(flags="-a --list-all"),
    ("session-template", "get"): _cmd(values="-f --format" + _OWNER, args=(1, 1)),
    ("session-template", "update"): _cmd(values="-f --file" + _OWNER, args=(1, 1)),
    ("session-template", "delete"): _cmd(values=_OWNER, flags="-f --force", args=(1, 1)),
}
ALIASES: dict[tuple[str, ...], str] = {  # (group path..., alias) -> the command's name
    ("sesstpl",): "session-template",
    ("start",): "create",
    ("start-from-template",): "create-from-template",
    ("rm",): "destroy",
    ("kill",): "destroy",
    ("session", "rm"): "destroy",
    ("session", "kill"): "destroy",
}
GROUPS = {path[:i] for path in COMMANDS for i in range(1, len(path))}


def _options(cmd: Cmd, argv: list[str], where: str, errors: list[str]) -> list[str]:
    """Parse `argv` against `cmd` as click does (options anywhere, `--` ends them); return the
    positional arguments and append a message to `errors` for each problem."""
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            positionals += argv[i:]
            break
        if not tok.startswith("-") or tok == "-":
            positionals.append(tok)
            continue
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            attached: str | None = value if eq else None
        else:
            name, attached = tok[:2], (tok[2:] or None)
            # -qs, -qo VALUE: letters after a flag are further short options (click bundles them)
            while attached and name in cmd.flags and f"-{attached[0]}" in cmd.flags | cmd.values:
                name, attached = f"-{attached[0]}", (attached[1:] or None)
        if name in cmd.flags:
            if attached is not None:
                errors.append(f"{where}: option '{name}' is a flag and takes no value")
            continue
        if name not in cmd.values:
            errors.append(f"{where}: no such option '{name}'")
            continue
        if attached is None:
            if i == len(argv):
                errors.append(f"{where}: option '{name}' needs a value")
                break
            attached = argv[i]
            i += 1
        allowed = cmd.choices.get(name)
        if allowed and (attached.lower() if name in cmd.nocase else attached) not in allowed:
            errors.append(f"{where}: '{attached}' is not a value of {name} ({', '.join(allowed)})")
    return positionals


def split_command(argv: list[str]) -> tuple[tuple[str, ...], list[str], list[str]]:
    """A command line as (command path with aliases resolved, root options, the command's own
    arguments). Click takes root options before the first subcommand and each group's subcommand
    from the next positional token."""
    rest = argv[1:]
    i = 0
    while i < len(rest) and rest[i].startswith("-"):
        i += 2 if rest[i] in MAIN.values else 1
    root = rest[:i]
    path: tuple[str, ...] = ()
    while (
        path not in COMMANDS
        and (not path or path in GROUPS)
        and i < len(rest)
        and not rest[i].startswith("-")
    ):
        path = (*path, ALIASES.get((*path, rest[i]), rest[i]))
        i += 1
    return path, root, rest[i:]


def check(argv: list[str]) -> list[str]:
    """The problems of one command line `argv` (starting with `backend.ai`); [] when it is valid."""
    assert argv[0] == "backend.ai"
    errors: list[str] = []
    path, root, own = split_command(argv)
    _options(MAIN, root, "backend.ai", errors)
    if path not in COMMANDS:
        if path and path not in GROUPS:
            where = " ".join(("backend.ai", *path[:-1]))
            errors.append(f"{where}: no such command '{path[-1]}'")
        else:
            errors.append(f"{' '.join(('backend.ai', *path))}: a subcommand is missing")
        return errors
    cmd = COMMANDS[path]
    where = " ".join(("backend.ai", *path))
    positionals = _options(cmd, own, where, errors)
    low, high = cmd.args
    if len(positionals) < low or (high is not None and len(positionals) > high):
        wanted = f"{low}" if low == high else f"{low} to {'any' if high is None else high}"
        errors.append(
            f"{where}: takes {wanted} positional argument(s), got {len(positionals)}: {positionals}"
        )
    return errors


_OPERATOR = re.compile(r"^[;&|]+$")


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet: continuations joined, comments dropped, split at
    `&&`, `||`, `;` and `|`; leading VAR=value assignments removed."""
    joined = re.sub(r"\\\n", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current: list[str] = []
        for tok in [*lexer, ";"]:
            if _OPERATOR.match(tok):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(tok)
    return commands


def readme_commands(markdown: str) -> list[list[str]]:
    """Every `backend.ai ...` command of a Markdown text, from code blocks and inline code."""
    found: list[list[str]] = []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)
    for block in fenced:
        found += [c for c in shell_commands(block) if c[0] == "backend.ai"]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if span.startswith("backend.ai "):
            found += [c for c in shell_commands(span) if c[0] == "backend.ai"]
    return found


def _path_of(argv: list[str]) -> tuple[str, ...]:
    path = split_command(argv)[0]
    assert path in COMMANDS, argv
    return path


def option_value(argv: list[str], *names: str) -> str | None:
    """The value given to the first of `names` in `argv` (as a separate token), or None."""
    for k, tok in enumerate(argv[:-1]):
        if tok in names:
            return argv[k + 1]
    return None


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    return readme_commands(README.read_text())


def test_readme_commands_exist_in_the_client(commands):
    problems = [f"{shlex.join(c)}\n    {e}" for c in commands for e in check(c)]
    assert not problems, "README commands the Backend.AI client would reject:\n" + "\n".join(
        problems
    )


def test_readme_covers_the_backendai_workflow(commands):
    """The README walks a user from the image to the result; the check above saw each step."""
    paths = {_path_of(c) for c in commands}
    for step in [
        ("admin", "image", "rescan"),
        ("vfolder", "create"),
        ("session", "create"),
        ("session", "events"),
        ("session", "logs"),
        ("vfolder", "download"),
        ("task-logs",),
        ("session-template", "create"),
        ("session", "create-from-template"),
        ("session", "destroy"),
    ]:
        assert step in paths, f"README shows no `backend.ai {' '.join(step)}` command"
    waits = [c for c in commands if _path_of(c) == ("session", "events") and "--wait" in c]
    assert waits, "README shows no `session events ... --wait` to follow a batch job"


def test_session_commands_start_in_the_project(commands):
    """Sessions start in /home/work (the agent's WorkingDir), so each startup command changes to
    the project first."""
    starts = [
        option_value(c, "-c", "--startup-command")
        for c in commands
        if _path_of(c) in {("session", "create"), ("session", "create-from-template")}
    ]
    assert len(starts) >= 3
    for start in starts:
        assert start is not None and re.match(r"cd /\S+ && \S", start), start


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # the README's old rescan: the registry is an option, not an argument
        ("backend.ai admin image rescan registry.example.com", "takes 0 positional argument(s)"),
        ("backend.ai session create --gpus 8 -c true img", "no such option '--gpus'"),
        ("backend.ai session create --type batch -c true", "takes 1 positional argument(s), got 0"),
        ("backend.ai session create --cluster-mode multinode img", "not a value of --cluster-mode"),
        ("backend.ai session create --enqueue-only=yes img", "is a flag and takes no value"),
        ("backend.ai session create img -r", "option '-r' needs a value"),
        ("backend.ai session events job --wait", "option '--wait' needs a value"),
        ("backend.ai session events job extra", "takes 1 positional argument(s), got 2"),
        ("backend.ai session start-job img", "no such command 'start-job'"),
        ("backend.ai vfolder", "a subcommand is missing"),
        ("backend.ai --output yaml ps", "not a value of --output"),
        ("backend.ai ps --status all", "not a value of --status"),
        ("backend.ai session create-from-template --cluster-mode multi-node t", "'--cluster-mode'"),
        ("backend.ai session-template create registry.yaml", "takes 0 positional argument(s)"),
    ],
)
def test_check_rejects_what_the_client_rejects(line, problem):
    errors = check(shlex.split(line))
    assert any(problem in e for e in errors), errors


@pytest.mark.parametrize(
    "line",
    [
        "backend.ai admin image rescan -r registry.example.com -p mlperf",
        "backend.ai --output json ps --status ALL",
        "backend.ai sesstpl list -a",
        "backend.ai rm -fs job",
        "backend.ai session create -rcpu=4 --type=BATCH -m data -- img",
        "backend.ai session events job --wait batch_session_result -q",
        "backend.ai vfolder create data",
    ],
)
def test_check_accepts_what_the_client_accepts(line):
    assert check(shlex.split(line)) == []


def test_extraction_joins_continuations_and_splits_chains():
    markdown = (
        "Run `backend.ai ps` first.\n\n"
        "```bash\n"
        "backend.ai session create --type batch \\\n"
        "    -c 'cd /opt/x && ./run.sh a=1' img   # the job; `backend.ai ps` lists it\n"
        "FOO=1 backend.ai events job --wait session_success && echo done\n"
        "ls | backend.ai vfolder ls data\n"
        "```\n"
    )
    assert readme_commands(markdown) == [
        [
            "backend.ai",
            "session",
            "create",
            "--type",
            "batch",
            "-c",
            "cd /opt/x && ./run.sh a=1",
            "img",
        ],
        ["backend.ai", "events", "job", "--wait", "session_success"],
        ["backend.ai", "vfolder", "ls", "data"],
        ["backend.ai", "ps"],
    ]
