"""Start training under torchrun, on one node or across a Backend.AI cluster session.

`python -m harness.launch [--nproc-per-node N] [--port P] [--print] -- <training args>` runs
`torchrun <rendezvous args> -m harness.train <training args>` (as `python -m torch.distributed.run`,
which is what the `torchrun` script calls, so the same interpreter runs the job).

A Backend.AI cluster session sets, in every container:
  BACKENDAI_CLUSTER_SIZE        number of containers (nodes), e.g. "3"
  BACKENDAI_CLUSTER_HOSTS       all their hostnames, e.g. "main1,sub1,sub2" (order not guaranteed)
  BACKENDAI_CLUSTER_HOST        this container's hostname, e.g. "sub1"
  BACKENDAI_CLUSTER_ROLE        "main" (one container) or "sub"
  BACKENDAI_CLUSTER_IDX         1-based index within the role
  BACKENDAI_CLUSTER_LOCAL_RANK  0-based index over the whole cluster; the main container is 0
They map onto torchrun as --nnodes = SIZE, --node_rank = LOCAL_RANK, --master_addr = the main host.
Without these variables the job runs on this node alone.

A batch session runs its startup command in the main container only, so there the launcher also
starts the job on every sub container over the cluster's SSH (see sub_node_commands) and waits
for all of them; `--forward-env NAME` copies a variable to them, and `--no-spawn-subs` leaves the
subs alone (for one who starts every container's share by hand).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

CLUSTER_VARS = (
    "BACKENDAI_CLUSTER_SIZE",
    "BACKENDAI_CLUSTER_HOSTS",
    "BACKENDAI_CLUSTER_HOST",
    "BACKENDAI_CLUSTER_ROLE",
    "BACKENDAI_CLUSTER_IDX",
    "BACKENDAI_CLUSTER_LOCAL_RANK",
)
MAIN_ROLE = "main"
SUB_ROLE = "sub"
# A one-node job needs no name resolution: the rendezvous store listens on loopback.
LOCAL_ADDR = "127.0.0.1"


class ClusterEnvError(ValueError):
    """The BACKENDAI_CLUSTER_* variables are incomplete or contradict each other."""


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ClusterEnvError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ClusterEnvError(f"{name}={value} must be >= {minimum}")
    return value


def _hosts(env: Mapping[str, str], size: int) -> list[str]:
    raw = env["BACKENDAI_CLUSTER_HOSTS"]
    hosts = [h.strip() for h in raw.split(",")]
    if any(not h for h in hosts):
        raise ClusterEnvError(f"BACKENDAI_CLUSTER_HOSTS={raw!r} has an empty hostname")
    if len(set(hosts)) != len(hosts):
        raise ClusterEnvError(f"BACKENDAI_CLUSTER_HOSTS={raw!r} repeats a hostname")
    if len(hosts) != size:
        raise ClusterEnvError(
            f"BACKENDAI_CLUSTER_HOSTS={raw!r} lists {len(hosts)} hosts but "
            f"BACKENDAI_CLUSTER_SIZE={size}"
        )
    return hosts


def _main_host(hosts: Sequence[str]) -> str:
    """The main container's hostname: Backend.AI names containers `<role><idx>` (main1, sub1, ...)."""
    mains = [h for h in hosts if h.startswith(MAIN_ROLE)]
    if len(mains) != 1:
        raise ClusterEnvError(
            f"BACKENDAI_CLUSTER_HOSTS={','.join(hosts)!r} must name exactly one main host "
            f"(a name starting with {MAIN_ROLE!r}), found {mains}"
        )
    return mains[0]


def cluster_layout(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(nnodes, node_rank, master_addr) of this container, from the BACKENDAI_CLUSTER_* variables.

    Returns (1, 0, "127.0.0.1") when none of them is set. Raises ClusterEnvError naming the
    variable when only some are set or when they disagree.
    """
    present = [name for name in CLUSTER_VARS if name in env]
    if not present:
        return 1, 0, LOCAL_ADDR
    missing = [name for name in CLUSTER_VARS if name not in env]
    if missing:
        raise ClusterEnvError(
            f"incomplete Backend.AI cluster environment: {', '.join(missing)} missing "
            f"while {', '.join(present)} set"
        )

    size = _int(env, "BACKENDAI_CLUSTER_SIZE", minimum=1)
    hosts = _hosts(env, size)
    host = env["BACKENDAI_CLUSTER_HOST"].strip()
    if host not in hosts:
        raise ClusterEnvError(
            f"BACKENDAI_CLUSTER_HOST={host!r} is not in BACKENDAI_CLUSTER_HOSTS={','.join(hosts)!r}"
        )
    role = env["BACKENDAI_CLUSTER_ROLE"].strip()
    if role not in (MAIN_ROLE, SUB_ROLE):
        raise ClusterEnvError(
            f"BACKENDAI_CLUSTER_ROLE={role!r} must be {MAIN_ROLE!r} or {SUB_ROLE!r}"
        )
    idx = _int(env, "BACKENDAI_CLUSTER_IDX", minimum=1)
    rank = _int(env, "BACKENDAI_CLUSTER_LOCAL_RANK", minimum=0)
    if rank >= size:
        raise ClusterEnvError(
            f"BACKENDAI_CLUSTER_LOCAL_RANK={rank} must be < BACKENDAI_CLUSTER_SIZE={size}"
        )

    main = _main_host(hosts)
    # torchrun's node 0 hosts the rendezvous store at --master_addr, so node 0 must be the main
    # container; a mismatch would leave every node waiting on a store nobody started.
    if role == MAIN_ROLE:
        if rank != 0 or idx != 1 or host != main:
            raise ClusterEnvError(
                f"the main container must have BACKENDAI_CLUSTER_LOCAL_RANK=0, "
                f"BACKENDAI_CLUSTER_IDX=1 and BACKENDAI_CLUSTER_HOST={main!r}; got "
                f"LOCAL_RANK={rank}, IDX={idx}, HOST={host!r}"
            )
    elif rank == 0 or idx >= size or host == main:
        raise ClusterEnvError(
            f"a sub container needs BACKENDAI_CLUSTER_LOCAL_RANK >= 1, "
            f"BACKENDAI_CLUSTER_IDX < BACKENDAI_CLUSTER_SIZE={size} and a host other than "
            f"{main!r}; got LOCAL_RANK={rank}, IDX={idx}, HOST={host!r}"
        )
    if size == 1:
        return 1, 0, LOCAL_ADDR
    return size, rank, main


def torchrun_args(env: Mapping[str, str], nproc_per_node: int, port: int = 29500) -> list[str]:
    """torchrun's rendezvous options for this container.

    env: the process environment (os.environ), read for BACKENDAI_CLUSTER_*;
    nproc_per_node: worker processes on this node (one per GPU); port: the rendezvous TCP port
    on the main host. Raises ClusterEnvError for an inconsistent cluster environment and
    ValueError for a bad nproc_per_node or port.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node} must be >= 1")
    if not 1 <= port <= 65535:
        raise ValueError(f"port={port} must be in 1..65535")
    nnodes, node_rank, master_addr = cluster_layout(env)
    return [
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        f"--nproc_per_node={nproc_per_node}",
        f"--master_addr={master_addr}",
        f"--master_port={port}",
    ]


def command(
    env: Mapping[str, str], nproc_per_node: int, port: int, training_args: Sequence[str]
) -> list[str]:
    """The full command line: torchrun (as `python -m torch.distributed.run`) over harness.train."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *torchrun_args(env, nproc_per_node, port),
        "-m",
        "harness.train",
        *training_args,
    ]


def sub_node_commands(
    env: Mapping[str, str],
    nproc_per_node: int,
    port: int,
    training_args: Sequence[str],
    workdir: str,
    forward_env: Sequence[str] = (),
) -> list[list[str]]:
    """The ssh command lines, one per sub container, that start this job there; run on main1.

    Backend.AI runs a batch session's startup command in the main container only and sets up
    password-less SSH between the containers of a cluster session, so the main container starts
    the others. Their node ranks are assigned here (1..N-1 in BACKENDAI_CLUSTER_HOSTS order) and
    passed on the remote command line with the other BACKENDAI_CLUSTER_* values, because a login
    over SSH need not carry the container's environment. forward_env names further variables
    (e.g. DATADIR) copied from env into every remote command. Returns [] for a one-node job.
    """
    nnodes, node_rank, main_host = cluster_layout(env)
    if nnodes == 1:
        return []
    if node_rank != 0:
        raise ClusterEnvError(
            "sub nodes are started from the main container, but this is "
            f"BACKENDAI_CLUSTER_HOST={env['BACKENDAI_CLUSTER_HOST']!r} "
            f"(BACKENDAI_CLUSTER_ROLE={env['BACKENDAI_CLUSTER_ROLE']!r})"
        )
    missing = [name for name in forward_env if name not in env]
    if missing:
        raise ValueError(f"variables to forward are not set: {', '.join(missing)}")
    hosts = [h.strip() for h in env["BACKENDAI_CLUSTER_HOSTS"].split(",")]
    commands = []
    for rank, host in enumerate((h for h in hosts if h != main_host), start=1):
        assignments = {
            "BACKENDAI_CLUSTER_SIZE": str(nnodes),
            "BACKENDAI_CLUSTER_HOSTS": ",".join(hosts),
            "BACKENDAI_CLUSTER_HOST": host,
            "BACKENDAI_CLUSTER_ROLE": SUB_ROLE,
            "BACKENDAI_CLUSTER_IDX": str(rank),
            "BACKENDAI_CLUSTER_LOCAL_RANK": str(rank),
            **{name: env[name] for name in forward_env},
        }
        remote = shlex.join(
            [
                "env",
                *(f"{k}={v}" for k, v in assignments.items()),
                sys.executable,
                "-m",
                "harness.launch",
                f"--nproc-per-node={nproc_per_node}",
                f"--port={port}",
                "--",
                *training_args,
            ]
        )
        # BatchMode: fail at once instead of prompting when the cluster keys are not in place.
        commands.append(
            ["ssh", "-o", "BatchMode=yes", host, f"cd {shlex.quote(workdir)} && exec {remote}"]
        )
    return commands


def _run_cluster(local: list[str], subs: list[list[str]], grace_s: float = 600.0) -> int:
    """Start the sub nodes, run this node's share, and return the first failing exit status.

    When this node fails (or is interrupted) the subs are stopped: they would otherwise wait on a
    rendezvous that cannot complete. After a success they get grace_s to finish their side.
    """
    remote = [subprocess.Popen(cmd) for cmd in subs]
    status = 1
    try:
        status = subprocess.run(local).returncode
    finally:
        codes = []
        for p in remote:
            try:
                codes.append(p.wait(timeout=grace_s if status == 0 else 0))
            except subprocess.TimeoutExpired:
                p.terminate()
                codes.append(p.wait())
    return next((c for c in (status, *codes) if c != 0), 0)


def _default_nproc() -> int:
    import torch

    # One worker per visible GPU; a CPU-only machine runs a single worker.
    return max(torch.cuda.device_count(), 1)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, training = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(
        prog="python -m harness.launch",
        description="Run harness.train under torchrun; arguments after `--` go to harness.train.",
    )
    parser.add_argument(
        "--nproc-per-node", type=int, default=None, help="workers on this node (default: GPUs)"
    )
    parser.add_argument("--port", type=int, default=29500, help="rendezvous port on the main host")
    parser.add_argument(
        "--no-spawn-subs",
        action="store_true",
        help="in a cluster's main container, do not start the job on the subs over SSH",
    )
    parser.add_argument(
        "--forward-env",
        action="append",
        default=[],
        metavar="NAME",
        help="copy this variable to the sub containers started over SSH (repeatable)",
    )
    parser.add_argument(
        "--print", action="store_true", help="print the command(s) instead of running them"
    )
    args = parser.parse_args(own)
    nproc = args.nproc_per_node if args.nproc_per_node is not None else _default_nproc()
    try:
        cmd = command(os.environ, nproc, args.port, training)
        # Only the main container (node 0) starts the others; a sub runs its own share.
        is_main = cluster_layout(os.environ)[1] == 0
        subs = (
            sub_node_commands(os.environ, nproc, args.port, training, os.getcwd(), args.forward_env)
            if is_main and not args.no_spawn_subs
            else []
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.print:
        for line in [*subs, cmd]:
            print(shlex.join(line))
        return
    sys.stdout.flush()
    if subs:
        sys.exit(_run_cluster(cmd, subs))
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
