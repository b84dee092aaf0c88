"""harness.launch: Backend.AI cluster variables onto torchrun, the subs over SSH, exit codes and
stops through torchrun's agent."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness import launch
from harness.launch import (
    ClusterEnvError,
    cluster_layout,
    command,
    parse_host_addrs,
    route_interface,
    sub_node_commands,
    torchrun_args,
    worker_env,
)
from harness.train import EXIT_ABORTED
from tests.test_train import ROOT


def cluster_env(hosts: str, host: str, role: str, idx: int, rank: int | None, size=None):
    env = {
        "BACKENDAI_CLUSTER_SIZE": str(size if size is not None else len(hosts.split(","))),
        "BACKENDAI_CLUSTER_HOSTS": hosts,
        "BACKENDAI_CLUSTER_HOST": host,
        "BACKENDAI_CLUSTER_ROLE": role,
        "BACKENDAI_CLUSTER_IDX": str(idx),
    }
    if rank is not None:
        env["BACKENDAI_CLUSTER_LOCAL_RANK"] = str(rank)
    return env


def test_single_node_without_cluster_variables():
    env = {"PATH": "/usr/bin", "HOME": "/home/work"}
    assert torchrun_args(env, nproc_per_node=8) == [
        "--nnodes=1",
        "--node_rank=0",
        "--nproc_per_node=8",
        "--master_addr=127.0.0.1",
        "--master_port=29500",
    ]


@pytest.mark.parametrize("rank", [0, None], ids=["local-rank", "no-local-rank"])
def test_one_container_session_runs_on_loopback(rank):
    # Backend.AI sets the variables for a plain one-container session too.
    env = cluster_env("main1", "main1", "main", 1, rank)
    assert cluster_layout(env) == (1, 0, "127.0.0.1")


@pytest.mark.parametrize(
    ("host", "role", "idx", "rank"),
    [("main1", "main", 1, 0), ("sub1", "sub", 1, 1)],
)
def test_two_node_cluster(host, role, idx, rank):
    env = cluster_env("main1,sub1", host, role, idx, rank)
    assert torchrun_args(env, nproc_per_node=8, port=29600) == [
        "--nnodes=2",
        f"--node_rank={rank}",
        "--nproc_per_node=8",
        "--master_addr=main1",
        "--master_port=29600",
    ]


@pytest.mark.parametrize(
    ("host", "role", "idx", "rank"),
    [("main1", "main", 1, 0), ("sub1", "sub", 1, 1), ("sub2", "sub", 2, 2)],
)
@pytest.mark.parametrize("with_local_rank", [True, False])
def test_three_node_cluster_every_node_agrees_on_master(host, role, idx, rank, with_local_rank):
    # The hosts list is not in rank order; releases before lablup/backend.ai#826 set no
    # LOCAL_RANK, and then the main is rank 0 and sub K is rank K.
    env = cluster_env("sub2,main1,sub1", host, role, idx, rank if with_local_rank else None)
    assert cluster_layout(env) == (3, rank, "main1")


def test_host_network_cluster_main_is_known_by_its_role():
    # Host-network clusters name nodes node-<kernel id>: no name says which one is the main.
    hosts = "node-7f3a,node-01bc"
    assert cluster_layout(cluster_env(hosts, "node-7f3a", "main", 1, 0)) == (2, 0, "node-7f3a")
    sub = cluster_env(hosts, "node-01bc", "sub", 1, 1)
    with pytest.raises(ClusterEnvError, match="--main-host"):
        cluster_layout(sub)
    assert cluster_layout(sub, main_host="node-7f3a") == (2, 1, "node-7f3a")
    with pytest.raises(ClusterEnvError, match="--main-host 'node-01bc'"):
        cluster_layout(sub, main_host="node-01bc")


@pytest.mark.parametrize("missing", ["BACKENDAI_CLUSTER_HOSTS", "BACKENDAI_CLUSTER_ROLE"])
def test_partial_environment_names_the_missing_variable(missing):
    env = cluster_env("main1,sub1", "sub1", "sub", 1, 1)
    del env[missing]
    with pytest.raises(ClusterEnvError, match=missing):
        cluster_layout(env)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"BACKENDAI_CLUSTER_SIZE": "3"}, "BACKENDAI_CLUSTER_SIZE=3"),
        ({"BACKENDAI_CLUSTER_SIZE": "two"}, "BACKENDAI_CLUSTER_SIZE"),
        ({"BACKENDAI_CLUSTER_HOST": "sub7"}, "BACKENDAI_CLUSTER_HOST='sub7'"),
        ({"BACKENDAI_CLUSTER_ROLE": "worker"}, "BACKENDAI_CLUSTER_ROLE='worker'"),
        ({"BACKENDAI_CLUSTER_LOCAL_RANK": "2"}, "BACKENDAI_CLUSTER_LOCAL_RANK=2"),
        ({"BACKENDAI_CLUSTER_LOCAL_RANK": "-1"}, "BACKENDAI_CLUSTER_LOCAL_RANK"),
        ({"BACKENDAI_CLUSTER_IDX": "0"}, "BACKENDAI_CLUSTER_IDX"),
        ({"BACKENDAI_CLUSTER_HOSTS": "main1,main1"}, "repeats"),
        ({"BACKENDAI_CLUSTER_HOSTS": "main1,"}, "empty hostname"),
        # A sub that claims rank 0 would start a second rendezvous store.
        ({"BACKENDAI_CLUSTER_LOCAL_RANK": "0"}, "sub container"),
        ({"BACKENDAI_CLUSTER_ROLE": "main"}, "main container"),
    ],
)
def test_inconsistent_environment_is_refused(change, named):
    env = {**cluster_env("main1,sub1", "sub1", "sub", 1, 1), **change}
    with pytest.raises(ClusterEnvError, match=named.replace("(", r"\(")):
        cluster_layout(env)


@pytest.mark.parametrize(("nproc", "port"), [(0, 29500), (8, 0), (8, 70000)])
def test_bad_arguments(nproc, port):
    with pytest.raises(ValueError, match="nproc_per_node" if nproc < 1 else "port"):
        torchrun_args({}, nproc_per_node=nproc, port=port)


def test_host_addresses_from_the_variable_and_the_options():
    env = {"HARNESS_HOST_ADDRS": "main1=10.0.0.2, sub1=10.0.0.3"}
    assert parse_host_addrs(["main1=127.0.0.1"], env) == {"main1": "127.0.0.1", "sub1": "10.0.0.3"}
    with pytest.raises(ValueError, match="--host-addr: 'main1' is not NAME=ADDRESS"):
        parse_host_addrs(["main1"], {})
    with pytest.raises(ValueError, match=r"HARNESS_HOST_ADDRS: '=1\.2\.3\.4'"):
        parse_host_addrs([], {"HARNESS_HOST_ADDRS": "=1.2.3.4"})
    sub = cluster_env("main1,sub1", "sub1", "sub", 1, 1)
    args = torchrun_args(sub, 1, host_addrs={"main1": "127.0.0.1"})
    assert "--master_addr=127.0.0.1" in args


def test_command_runs_harness_train_with_the_training_args():
    cmd = command(torchrun_args({}, 2), ["--config", "configs/x.yaml"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[-4:] == ["-m", "harness.train", "--config", "configs/x.yaml"]


def launcher(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.launch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        **kwargs,
    )


def test_cli_prints_the_command():
    env = {"PATH": "/usr/bin:/bin", **cluster_env("main1,sub1", "sub1", "sub", 1, 1)}
    proc = launcher("--print", "--nproc-per-node", "4", "--", "--x", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "torch.distributed.run --nnodes=2 --node_rank=1 --nproc_per_node=4" in proc.stdout
    assert proc.stdout.strip().endswith(
        "--master_addr=main1 --master_port=29500 -m harness.train --x 1"
    )


def test_cli_reports_a_bad_environment_without_a_traceback():
    env = {"PATH": "/usr/bin:/bin", **cluster_env("main1,sub1", "sub1", "sub", 1, 1, size=3)}
    proc = launcher("--print", "--nproc-per-node", "1", env=env)
    assert proc.returncode == 2
    assert "BACKENDAI_CLUSTER_SIZE=3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_without_ssh_names_what_is_missing():
    env = {"PATH": "/nonexistent", **cluster_env("main1,sub1", "main1", "main", 1, 0)}
    proc = launcher("--nproc-per-node", "1", "--host-addr", "main1=127.0.0.1", env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "no `ssh` on PATH" in proc.stderr and "--no-spawn-subs" in proc.stderr


def test_subs_read_their_own_environment_and_learn_only_the_main_host():
    main = {
        **cluster_env("main1,sub2,sub1", "main1", "main", 1, 0),
        "DATADIR": "/home/work/my data",
    }
    commands = sub_node_commands(
        main, ["--port=29600"], ["--config", "c.yaml"], "/opt/x", ["DATADIR"]
    )
    assert [cmd[:4] for cmd in commands] == [
        ["ssh", "-o", "BatchMode=yes", "sub2"],
        ["ssh", "-o", "BatchMode=yes", "sub1"],
    ]
    for host, cmd in zip(["sub2", "sub1"], commands, strict=True):
        cd, _, remote = cmd[4].partition(" && exec ")
        assert cd == "cd /opt/x"
        words = shlex.split(remote)
        assert not any(w.startswith("BACKENDAI_") for w in words)
        assert words[:2] == ["env", "DATADIR=/home/work/my data"]
        assert words[2:] == [
            sys.executable,
            "-m",
            "harness.launch",
            "--from-main",
            "--main-host=main1",
            "--port=29600",
            "--",
            "--config",
            "c.yaml",
        ]
        # The sub's rank is its own LOCAL_RANK (dropbear keeps the container environment),
        # whatever the order of the hosts list.
        own = cluster_env("main1,sub2,sub1", host, "sub", int(host[-1]), int(host[-1]))
        assert cluster_layout(own, main_host="main1") == (3, int(host[-1]), "main1")


def test_cli_on_main_passes_its_options_to_the_subs():
    env = {
        "PATH": "/usr/bin:/bin",
        **cluster_env("node-a,node-b", "node-a", "main", 1, 0),
        "HARNESS_HOST_ADDRS": "node-a=10.1.0.5",
    }
    proc = launcher(
        "--print",
        "--nproc-per-node=2",
        "--port=29601",
        "--socket-ifname=eth1",
        "--",
        "x=1",
        env=env,
    )
    ssh, run = proc.stdout.splitlines()
    assert ssh.startswith("ssh -o BatchMode=yes node-b ")
    for option in ["--main-host=node-a", "--host-addr=node-a=10.1.0.5", "--socket-ifname=eth1"]:
        assert option in ssh
    assert "--node_rank=0" in run and "--master_addr=10.1.0.5 --master_port=29601" in run
    spawn_none = launcher("--print", "--nproc-per-node=2", "--no-spawn-subs", env=env)
    assert len(spawn_none.stdout.splitlines()) == 1


def test_no_subs_to_start_on_a_single_node():
    assert sub_node_commands({}, [], [], "/opt/x") == []


def test_subs_are_started_only_from_the_main_container():
    env = cluster_env("main1,sub1", "sub1", "sub", 1, 1)
    with pytest.raises(ClusterEnvError, match="BACKENDAI_CLUSTER_HOST='sub1'"):
        sub_node_commands(env, [], [], "/opt/x")


def test_forwarding_an_unset_variable_is_an_error():
    env = cluster_env("main1,sub1", "main1", "main", 1, 0)
    with pytest.raises(ValueError, match="DATADIR"):
        sub_node_commands(env, [], [], "/opt/x", ["DATADIR"])


def test_worker_threads_and_the_interface_that_reaches_the_main():
    assert route_interface("127.0.0.1") == "lo"
    local = worker_env({"OMP_NUM_THREADS": "64"}, 4, main_addr=None, socket_ifname=None)
    assert local == {"OMP_NUM_THREADS": "4"}  # Backend.AI's core count is replaced
    found = worker_env({}, 1, main_addr="127.0.0.1", socket_ifname=None)
    assert found["NCCL_SOCKET_IFNAME"] == found["GLOO_SOCKET_IFNAME"] == "lo"
    preset = worker_env({"NCCL_SOCKET_IFNAME": "ib0"}, 1, "127.0.0.1", None)
    assert preset["GLOO_SOCKET_IFNAME"] == "ib0"
    assert (
        worker_env({"NCCL_SOCKET_IFNAME": "ib0"}, 1, "127.0.0.1", "eth1")["NCCL_SOCKET_IFNAME"]
        == "eth1"
    )
    cores = len(os.sched_getaffinity(0))
    assert launch.threads_per_rank(1) == cores and launch.threads_per_rank(cores * 8) == 1


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def subs_after(local_code: int, *sub_codes: str) -> tuple[list[int], float]:
    stop = launch._StopForwarder()
    stop.subs = [subprocess.Popen(python(c), stdin=subprocess.PIPE) for c in sub_codes]
    start = time.monotonic()
    return launch._finish_subs(stop, local_code), time.monotonic() - start


# A sub that ends when the main tells it to stop (one word on stdin), with the code a stop gives.
OBEDIENT = "import sys; sys.exit(130 if sys.stdin.readline().strip() in ('INT', 'TERM') else 1)"


def test_subs_get_their_time_after_a_normal_end_and_are_stopped_after_a_crash():
    codes, _ = subs_after(
        4, "raise SystemExit(4)", "import time; time.sleep(1); raise SystemExit(4)"
    )
    assert codes == [4, 4]
    codes, seconds = subs_after(1, OBEDIENT)
    assert codes == [130] and seconds < 20


def torchrun_node(worker: str, port: int, subs: list[list[str]] | None = None) -> str:
    """A script running launch.run_node over one worker (`python -c worker`) and given subs."""
    torchrun = torchrun_args({}, 1, port)
    entry = ["--no-python", sys.executable, "-c", textwrap.dedent(worker)]
    return (
        "import sys\nfrom harness import launch\n"
        f"sys.exit(launch.run_node({torchrun!r}, {entry!r}, {{}}, {subs or []!r}))\n"
    )


@pytest.mark.parametrize("code", [0, 4])
def test_the_training_code_passes_through_torchrun_without_a_traceback(code):
    script = torchrun_node(f"raise SystemExit({code})", 29613 + code)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr


def test_sigint_reaches_the_workers_and_the_subs_but_not_the_workers_children(tmp_path):
    heard, child_heard = tmp_path / "sub-heard", tmp_path / "child-heard"
    # The worker's child stands for a DataLoader worker: killed under the training loop it would
    # fail the step before the loop can stop and save.
    child = f"""
        import signal, time
        signal.signal(signal.SIGINT, lambda *_: open({str(child_heard)!r}, "w").write("INT"))
        time.sleep(60)
    """
    worker = f"""
        import signal, subprocess, sys, time
        stop = []
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        subprocess.Popen([sys.executable, "-c", {textwrap.dedent(child)!r}])
        print("ready", flush=True)
        while not stop:
            time.sleep(0.05)
        sys.exit(130)  # what harness.train exits with after saving
    """
    sub = python(
        f"import sys; open({str(heard)!r}, 'w').write(sys.stdin.readline()); sys.exit(130)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", torchrun_node(worker, 29619, [sub])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child installs its handler
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_ABORTED == launch.EXIT_STOPPED, err[-3000:]
    assert heard.read_text() == "INT\n"
    assert not child_heard.exists()
    assert "Traceback" not in err


def test_a_sub_stops_when_the_main_says_so_or_its_connection_closes():
    script = """
        import os, signal, sys, threading, time
        from harness import launch
        heard = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _: heard.append(signal.Signals(s).name))
        threading.Thread(target=launch._watch_main, args=(0,), daemon=True).start()
        while len(heard) < 2:
            time.sleep(0.05)
        print(" ".join(heard))
    """
    proc = subprocess.run(
        python(script), input="INT\n", cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # The word, then the closing of stdin (the main's SSH connection gone).
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SIGINT", "SIGTERM"]
