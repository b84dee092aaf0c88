"""Start training under torchrun, on one node or across a Backend.AI cluster session.

`python -m harness.launch [options] -- <training args>` runs torchrun's elastic agent in this process
(`torch.distributed.run`, what the `torchrun` script calls) over `python -m harness.train <training
args>`, and exits with the training's own code on every node: 0 target reached, 2 configuration
error, 3 non-finite loss, 4 target missed, 130 stopped (torchrun alone turns any non-zero code into
a ChildFailedError traceback and exit 1).

A Backend.AI cluster session sets, in every container (lablup/backend.ai,
src/ai/backend/manager/sokovan/scheduler/launcher/launcher.py):
  BACKENDAI_CLUSTER_SIZE        number of containers (nodes), e.g. "3"
  BACKENDAI_CLUSTER_HOSTS       all their hostnames, e.g. "main1,sub1,sub2" (order not guaranteed);
                                host-network clusters name them "node-<kernel id>"
  BACKENDAI_CLUSTER_HOST        this container's hostname, e.g. "sub1"
  BACKENDAI_CLUSTER_ROLE        "main" (one container) or "sub"
  BACKENDAI_CLUSTER_IDX         1-based index within the role
  BACKENDAI_CLUSTER_LOCAL_RANK  0-based index over the whole cluster, the main container 0 (only
                                since lablup/backend.ai#826; without it main -> 0, subK -> K)
They map onto torchrun as --nnodes = SIZE, --node_rank = LOCAL_RANK, --master_addr = the main host.
Without these variables, or with SIZE=1, the job runs on this node alone.

A batch session runs its startup command in the main container only, so there the launcher also
starts the job on every sub container over the cluster's SSH and waits for all of them. Backend.AI's
dropbear keeps the container environment in SSH sessions (its build disables clearenv:
scripts/agent/build-dropbear.sh), so each sub reads its own BACKENDAI_CLUSTER_* variables; the
remote command carries only what the sub cannot know: the main host (a host-network sub cannot tell
it from the names), this launcher's options and the training arguments.

Stopping: SIGINT or SIGTERM goes to this node's worker processes (harness.train's ranks agree to
stop at the same step, rank 0 saves a checkpoint, all exit 130) and, over each SSH connection's
stdin, to the subs, which do the same; a sub whose connection closes stops too. Each worker runs
with OMP_NUM_THREADS = this node's cores / its workers, and multi-node jobs pin NCCL_SOCKET_IFNAME
and GLOO_SOCKET_IFNAME to the interface that reaches the main host (found on each node).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

REQUIRED_VARS = (
    "BACKENDAI_CLUSTER_SIZE",
    "BACKENDAI_CLUSTER_HOSTS",
    "BACKENDAI_CLUSTER_HOST",
    "BACKENDAI_CLUSTER_ROLE",
    "BACKENDAI_CLUSTER_IDX",
)
LOCAL_RANK_VAR = "BACKENDAI_CLUSTER_LOCAL_RANK"
CLUSTER_VARS = (*REQUIRED_VARS, LOCAL_RANK_VAR)
HOST_ADDRS_VAR = "HARNESS_HOST_ADDRS"
MAIN_ROLE = "main"
SUB_ROLE = "sub"
# Overlay-network clusters name the main container main1 (role + index).
_MAIN_NAME = re.compile(r"^main\d+$")
# A one-node job needs no name resolution: the rendezvous store listens on loopback.
LOCAL_ADDR = "127.0.0.1"

EXIT_USAGE = 2  # as argparse exits on a bad command line, and harness.train on a bad config
EXIT_STOPPED = 130  # harness.train's code after SIGINT/SIGTERM (EXIT_ABORTED)
EXIT_MEANINGS = {
    0: "target reached",
    2: "configuration error",
    3: "non-finite loss",
    4: "target not reached",
    EXIT_STOPPED: "stopped",
}
# After this node's workers end normally the subs are about to end too; a crash stops them at once.
SUB_GRACE_S = 60.0
# A sub's agent gives its workers 30 s (TORCH_ELASTIC_SHUTDOWN_TIMEOUT) before SIGKILL.
SUB_STOP_WAIT_S = 45.0
_STOP_WORDS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}


class ClusterEnvError(ValueError):
    """The BACKENDAI_CLUSTER_* variables are incomplete or contradict each other."""


class LaunchError(RuntimeError):
    """Something the launch needs is missing on this machine (ssh, an interface)."""


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


def _main_host(hosts: Sequence[str], host: str, role: str, main_host: str | None) -> str:
    """The main container's hostname. The main knows it is main from its role; a sub is told by
    the main that starts it (main_host), or finds the one `main<N>` name of an overlay cluster."""
    if role == MAIN_ROLE:
        if main_host is not None and main_host != host:
            raise ClusterEnvError(
                f"--main-host {main_host!r} but this is the main container "
                f"(BACKENDAI_CLUSTER_HOST={host!r})"
            )
        return host
    if main_host is not None:
        if main_host not in hosts or main_host == host:
            raise ClusterEnvError(
                f"--main-host {main_host!r} must be another host of "
                f"BACKENDAI_CLUSTER_HOSTS={','.join(hosts)!r}"
            )
        return main_host
    mains = [h for h in hosts if _MAIN_NAME.match(h)]
    if len(mains) != 1:
        raise ClusterEnvError(
            f"cannot tell the main container among BACKENDAI_CLUSTER_HOSTS={','.join(hosts)!r} "
            f"(host-network clusters name nodes node-<kernel id>): start the subs from the main "
            f"container (the default) or pass --main-host NAME"
        )
    return mains[0]


def cluster_layout(env: Mapping[str, str], main_host: str | None = None) -> tuple[int, int, str]:
    """(nnodes, node_rank, main host) of this container, from the BACKENDAI_CLUSTER_* variables.

    main_host: the main container's hostname when the caller knows it (the main passes it to the
    subs it starts); needed by a sub of a host-network cluster. Returns (1, 0, "127.0.0.1") when
    none of the variables is set or the session has one container. Raises ClusterEnvError naming
    the variable when some are missing or when they disagree.
    """
    present = [name for name in CLUSTER_VARS if name in env]
    if not present:
        return 1, 0, LOCAL_ADDR
    missing = [name for name in REQUIRED_VARS if name not in env]
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
    if LOCAL_RANK_VAR in env:
        rank = _int(env, LOCAL_RANK_VAR, minimum=0)
    else:
        # Releases before lablup/backend.ai#826 set no LOCAL_RANK; with one main, sub K is rank K.
        rank = 0 if role == MAIN_ROLE else idx
    if rank >= size:
        raise ClusterEnvError(f"{LOCAL_RANK_VAR}={rank} must be < BACKENDAI_CLUSTER_SIZE={size}")
    if size == 1:
        return 1, 0, LOCAL_ADDR

    main = _main_host(hosts, host, role, main_host)
    # torchrun's node 0 hosts the rendezvous store at --master_addr, so node 0 must be the main
    # container; a mismatch would leave every node waiting on a store nobody started.
    if role == MAIN_ROLE:
        if rank != 0 or idx != 1:
            raise ClusterEnvError(
                f"the main container must have {LOCAL_RANK_VAR}=0 and BACKENDAI_CLUSTER_IDX=1; "
                f"got LOCAL_RANK={rank}, IDX={idx}"
            )
    elif rank == 0 or idx >= size:
        raise ClusterEnvError(
            f"a sub container needs {LOCAL_RANK_VAR} >= 1 and BACKENDAI_CLUSTER_IDX < "
            f"BACKENDAI_CLUSTER_SIZE={size}; got LOCAL_RANK={rank}, IDX={idx}, HOST={host!r}"
        )
    return size, rank, main


def parse_host_addrs(pairs: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """Host name -> address from HARNESS_HOST_ADDRS ("main1=10.0.0.2,sub1=10.0.0.3") and then the
    `--host-addr NAME=ADDR` options (which win). Raises ValueError naming a malformed entry."""
    entries = [e for e in env.get(HOST_ADDRS_VAR, "").split(",") if e.strip()]
    mapping: dict[str, str] = {}
    for where, entry in [
        *((HOST_ADDRS_VAR, e) for e in entries),
        *(("--host-addr", p) for p in pairs),
    ]:
        name, sep, addr = (part.strip() for part in entry.partition("="))
        if not sep or not name or not addr:
            raise ValueError(f"{where}: {entry.strip()!r} is not NAME=ADDRESS")
        mapping[name] = addr
    return mapping


def torchrun_args(
    env: Mapping[str, str],
    nproc_per_node: int,
    port: int = 29500,
    main_host: str | None = None,
    host_addrs: Mapping[str, str] | None = None,
) -> list[str]:
    """torchrun's rendezvous options for this container.

    env: the process environment (os.environ), read for BACKENDAI_CLUSTER_*; nproc_per_node:
    worker processes on this node (one per GPU); port: the rendezvous TCP port on the main host;
    main_host: see cluster_layout; host_addrs: addresses for host names that do not resolve. Raises
    ClusterEnvError for an inconsistent cluster environment and ValueError for a bad nproc_per_node
    or port.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node} must be >= 1")
    if not 1 <= port <= 65535:
        raise ValueError(f"port={port} must be in 1..65535")
    nnodes, node_rank, main = cluster_layout(env, main_host)
    return [
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        f"--nproc_per_node={nproc_per_node}",
        f"--master_addr={(host_addrs or {}).get(main, main)}",
        f"--master_port={port}",
    ]


def command(torchrun: Sequence[str], training_args: Sequence[str]) -> list[str]:
    """The equivalent command line: torchrun (as `python -m torch.distributed.run`) over
    harness.train, as --print shows it."""
    return [sys.executable, "-m", "torch.distributed.run", *torchrun, *train_entry(training_args)]


def train_entry(training_args: Sequence[str]) -> list[str]:
    return ["-m", "harness.train", *training_args]


def sub_node_commands(
    env: Mapping[str, str],
    launcher_args: Sequence[str],
    training_args: Sequence[str],
    workdir: str,
    forward_env: Sequence[str] = (),
) -> list[list[str]]:
    """The ssh command lines, one per sub container, that start this job there; run on the main.

    Backend.AI runs a batch session's startup command in the main container only and sets up
    password-less SSH between the containers of a cluster session (BACKENDAI_CLUSTER_HOSTS, in
    any order), so the main container starts the others. Each sub reads its own BACKENDAI_CLUSTER_*
    variables (dropbear keeps the container environment); the remote command adds --from-main,
    --main-host and launcher_args (this launcher's options to repeat there). forward_env names
    variables set only in this shell (e.g. DATADIR) to copy into every remote command. Returns []
    for a one-node job.
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
    remote = shlex.join(
        [
            *(["env", *(f"{name}={env[name]}" for name in forward_env)] if forward_env else []),
            sys.executable,
            "-m",
            "harness.launch",
            "--from-main",
            f"--main-host={main_host}",
            *launcher_args,
            "--",
            *training_args,
        ]
    )
    hosts = [h.strip() for h in env["BACKENDAI_CLUSTER_HOSTS"].split(",")]
    # BatchMode: fail at once instead of prompting when the cluster keys are not in place.
    return [
        ["ssh", "-o", "BatchMode=yes", host, f"cd {shlex.quote(workdir)} && exec {remote}"]
        for host in hosts
        if host != main_host
    ]


def _interface_addresses() -> dict[str, str]:
    """IPv4 address of each interface that has one (SIOCGIFADDR; Linux)."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            found[name] = socket.inet_ntoa(packed[20:24])
    return found


def route_interface(host: str) -> str:
    """The local network interface this machine uses to reach `host` (a name or an address).

    Raises LaunchError naming the host when it does not resolve or no interface holds the source
    address the kernel picks for it.
    """
    try:
        addr = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))  # UDP: no packet is sent, the kernel only picks a route
            source = s.getsockname()[0]
    except OSError as err:
        raise LaunchError(
            f"cannot find the network interface that reaches the main host {host!r}: {err}; "
            f"map it with --host-addr {host}=ADDRESS or name the interface with --socket-ifname"
        ) from None
    names = [name for name, a in _interface_addresses().items() if a == source]
    if not names:
        raise LaunchError(
            f"no interface holds {source}, the address used to reach the main host {host!r}; "
            f"name the interface with --socket-ifname"
        )
    return names[0]


def threads_per_rank(nproc_per_node: int) -> int:
    """This node's usable cores (its CPU affinity: the cores Backend.AI allots) over its workers."""
    return max(1, len(os.sched_getaffinity(0)) // nproc_per_node)


def worker_env(
    env: Mapping[str, str], threads: int, main_addr: str | None, socket_ifname: str | None
) -> dict[str, str]:
    """The variables the launcher sets for its workers: OMP_NUM_THREADS (Backend.AI sets it to the
    session's cores, which nproc workers would oversubscribe), and on a multi-node job the
    interface NCCL and Gloo must use (they otherwise pick one by themselves, e.g. docker_gwbridge).
    An explicit socket_ifname wins over one already in env, which wins over detection."""
    updates = {"OMP_NUM_THREADS": str(threads)}
    if main_addr is not None:
        ifname = socket_ifname or env.get("NCCL_SOCKET_IFNAME") or env.get("GLOO_SOCKET_IFNAME")
        ifname = ifname or route_interface(main_addr)
        updates["NCCL_SOCKET_IFNAME"] = updates["GLOO_SOCKET_IFNAME"] = ifname
    return updates


def _exit_code(failure_exitcode: int) -> int:
    # A worker killed by a signal reports -signum; a shell reports 128 + signum.
    return 128 - failure_exitcode if failure_exitcode < 0 else failure_exitcode


def _children(parent: int) -> list[int]:
    """Process ids whose parent is `parent` (Linux /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if ppid == parent:
            found.append(int(entry.name))
    return found


class _StopForwarder:
    """SIGINT/SIGTERM handler. Tells the subs (one word on each SSH connection's stdin) and passes
    the signal to this node's workers: to the worker processes themselves, not to their process
    groups as torchrun's agent would, which would also kill their DataLoader workers under the
    training loop before it can save. The workers then exit with their own code (130) and the agent
    reports it. With no worker running yet, or on a second signal, it raises torchrun's
    SignalException: the agent then stops its workers' groups (SIGKILL after 30 s) and gives up."""

    def __init__(self) -> None:
        self.subs: list[subprocess.Popen] = []
        self.signum: int | None = None
        self.in_agent = False

    def install(self) -> None:
        for sig in _STOP_WORDS.values():
            signal.signal(sig, self._handle)

    def tell_subs(self, signum: int) -> None:
        word = signal.Signals(signum).name.removeprefix("SIG")
        for p in self.subs:
            if p.poll() is None and p.stdin is not None:
                with contextlib.suppress(OSError):  # that sub's connection is already gone
                    p.stdin.write(f"{word}\n".encode())
                    p.stdin.flush()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        name = signal.Signals(signum).name
        if first:
            print(f"harness.launch: {name} received: stopping every rank", file=sys.stderr)
            self.tell_subs(signum)
        if not self.in_agent:
            return
        subs = {p.pid for p in self.subs}
        workers = [pid for pid in _children(os.getpid()) if pid not in subs]
        if first and workers:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, signum)
            return
        from torch.distributed.elastic.multiprocessing.api import SignalException

        raise SignalException(name, sigval=signal.Signals(signum))


def _watch_main(fd: int) -> None:
    """On a sub started over SSH: a word from the main (INT/TERM) on stdin, or stdin closing (the
    main is gone), becomes a signal to this launcher. Reads the raw descriptor: a daemon thread
    blocked in sys.stdin's buffered reader would abort the interpreter at exit."""
    pending = b""
    while chunk := os.read(fd, 64):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            sig = _STOP_WORDS.get(line.decode(errors="replace").strip())
            if sig is not None:
                os.kill(os.getpid(), sig)
    os.kill(os.getpid(), signal.SIGTERM)


def run_torchrun(torchrun: Sequence[str], entry: Sequence[str], stop: _StopForwarder) -> int:
    """Run torchrun's elastic agent in this process and return the training's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()
    own_signals = []
    # This launcher handles INT/TERM itself (to reach the subs at once); torchrun >= 2.7 can be
    # told to leave them alone. Older ones install their handler, and the subs hear after.
    if "--signals-to-handle" in parser._option_string_actions:
        own_signals = ["--signals-to-handle=SIGHUP,SIGQUIT"]
    args = parser.parse_args([*torchrun, *own_signals, *entry])
    stop.in_agent = True
    try:
        run(args)
        return 0
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return _exit_code(failure.exitcode)
    except SignalException as err:
        if stop.signum is None:  # torchrun's own handler caught it: the subs still need telling
            stop.signum = int(err.sigval)
            stop.tell_subs(stop.signum)
        return EXIT_STOPPED
    finally:
        stop.in_agent = False


def _finish_subs(stop: _StopForwarder, local_code: int) -> list[int]:
    """Wait for the subs after this node's share ended; stop them when they outlast the grace."""
    subs = stop.subs
    normal = local_code in EXIT_MEANINGS
    deadline = time.monotonic() + (SUB_GRACE_S if normal else 0.0)
    while any(p.poll() is None for p in subs) and time.monotonic() < deadline:
        time.sleep(0.1)
    if any(p.poll() is None for p in subs):
        if stop.signum is None:
            stop.tell_subs(signal.SIGTERM)
        deadline = time.monotonic() + SUB_STOP_WAIT_S
        while any(p.poll() is None for p in subs) and time.monotonic() < deadline:
            time.sleep(0.1)
    codes = []
    for p in subs:
        if p.poll() is None:
            p.kill()
        codes.append(p.wait())
        if p.stdin is not None:
            p.stdin.close()
    return codes


def _report(where: str, code: int) -> None:
    meaning = EXIT_MEANINGS.get(code, "failed")
    print(f"harness.launch: {where} exited {code} ({meaning})", file=sys.stderr, flush=True)


def run_node(
    torchrun: Sequence[str],
    entry: Sequence[str],
    env_updates: Mapping[str, str],
    sub_commands: Sequence[Sequence[str]] = (),
    from_main: bool = False,
) -> int:
    """This node's share (and, on the main, the subs' over SSH); returns the exit code to use:
    this node's training code, else the first failing sub's."""
    stop = _StopForwarder()
    stop.install()
    os.environ.update(env_updates)
    if from_main:
        threading.Thread(target=_watch_main, args=(sys.stdin.fileno(),), daemon=True).start()
    code = EXIT_STOPPED
    try:
        sys.stdout.flush()
        stop.subs = [subprocess.Popen(cmd, stdin=subprocess.PIPE) for cmd in sub_commands]
        if stop.signum is None:
            code = run_torchrun(torchrun, entry, stop)
    finally:
        sub_codes = _finish_subs(stop, code)
    if code != 0:
        _report("this node's training", code)
    for cmd, sub_code in zip(sub_commands, sub_codes, strict=True):
        if sub_code != code:
            _report(f"the job on {cmd[3]} (over ssh)", sub_code)
    return next((c for c in (code, *sub_codes) if c != 0), 0)


def _default_nproc() -> int:
    import torch

    # One worker per visible GPU; a CPU-only machine runs a single worker.
    return max(torch.cuda.device_count(), 1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.launch",
        description="Run harness.train under torchrun; arguments after `--` go to harness.train.",
        epilog="Exits with the training's code on every node: 0 target reached, 2 configuration "
        "error (also a bad cluster setup), 3 non-finite loss, 4 target missed, 130 stopped.",
    )
    p.add_argument(
        "--nproc-per-node", type=int, default=None, help="workers on this node (default: GPUs)"
    )
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the main host")
    p.add_argument(
        "--host-addr",
        action="append",
        default=[],
        metavar="NAME=ADDR",
        help=f"address of a host name that does not resolve (repeatable; also {HOST_ADDRS_VAR}="
        "NAME=ADDR,...); passed on to the subs",
    )
    p.add_argument(
        "--socket-ifname",
        default=None,
        metavar="IFACE",
        help="network interface for NCCL/Gloo on every node (default: the one that reaches the "
        "main host, found on each node)",
    )
    p.add_argument(
        "--threads-per-rank",
        type=int,
        default=None,
        metavar="N",
        help="OMP_NUM_THREADS of each worker (default: this node's cores / its workers)",
    )
    p.add_argument(
        "--no-spawn-subs",
        action="store_true",
        help="in a cluster's main container, do not start the job on the subs over SSH",
    )
    p.add_argument(
        "--forward-env",
        action="append",
        default=[],
        metavar="NAME",
        help="copy this variable to the sub containers started over SSH (repeatable)",
    )
    p.add_argument(
        "--main-host",
        default=None,
        metavar="NAME",
        help="the main container's hostname, for a sub of a host-network cluster started by hand "
        "(the main passes it to the subs it starts)",
    )
    p.add_argument("--from-main", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--print", action="store_true", help="print the command(s) instead of running them"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, training = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = _parser()
    args = parser.parse_args(own)
    if args.threads_per_rank is not None and args.threads_per_rank < 1:
        parser.error(f"--threads-per-rank={args.threads_per_rank} must be >= 1")
    nproc = args.nproc_per_node if args.nproc_per_node is not None else _default_nproc()
    try:
        host_addrs = parse_host_addrs(args.host_addr, os.environ)
        torchrun = torchrun_args(os.environ, nproc, args.port, args.main_host, host_addrs)
        nnodes, node_rank, main_host = cluster_layout(os.environ, args.main_host)
        # What a sub must repeat: its own workers are counted there, the rest is the job's.
        repeat = [f"--port={args.port}", *(f"--host-addr={n}={a}" for n, a in host_addrs.items())]
        if args.nproc_per_node is not None:
            repeat.append(f"--nproc-per-node={args.nproc_per_node}")
        if args.socket_ifname:
            repeat.append(f"--socket-ifname={args.socket_ifname}")
        if args.threads_per_rank is not None:
            repeat.append(f"--threads-per-rank={args.threads_per_rank}")
        subs = (
            sub_node_commands(os.environ, repeat, training, os.getcwd(), args.forward_env)
            if node_rank == 0 and not (args.no_spawn_subs or args.from_main)
            else []
        )
    except ValueError as exc:
        parser.error(str(exc))
    entry = train_entry(training)
    if args.print:
        for line in [*subs, command(torchrun, training)]:
            print(shlex.join(line))
        return 0
    if subs and shutil.which("ssh") is None:
        print(
            f"harness.launch: no `ssh` on PATH: the main container starts the job on its "
            f"{len(subs)} sub container(s) over SSH; install an ssh client (openssh-client) or "
            f"start each container's share yourself with --no-spawn-subs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        threads = args.threads_per_rank or threads_per_rank(nproc)
        main_addr = host_addrs.get(main_host, main_host) if nnodes > 1 else None
        env_updates = worker_env(os.environ, threads, main_addr, args.socket_ifname)
    except LaunchError as exc:
        print(f"harness.launch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_node(torchrun, entry, env_updates, subs, args.from_main)


if __name__ == "__main__":
    sys.exit(main())
