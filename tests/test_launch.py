"""harness.launch: Backend.AI cluster variables onto torchrun's rendezvous options."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest

from harness.launch import (
    ClusterEnvError,
    _run_cluster,
    cluster_layout,
    command,
    sub_node_commands,
    torchrun_args,
)


def cluster_env(hosts: str, host: str, role: str, idx: int, rank: int, size: int | None = None):
    return {
        "BACKENDAI_CLUSTER_SIZE": str(size if size is not None else len(hosts.split(","))),
        "BACKENDAI_CLUSTER_HOSTS": hosts,
        "BACKENDAI_CLUSTER_HOST": host,
        "BACKENDAI_CLUSTER_ROLE": role,
        "BACKENDAI_CLUSTER_IDX": str(idx),
        "BACKENDAI_CLUSTER_LOCAL_RANK": str(rank),
    }


def test_single_node_without_cluster_variables():
    env = {"PATH": "/usr/bin", "HOME": "/home/work"}
    assert torchrun_args(env, nproc_per_node=8) == [
        "--nnodes=1",
        "--node_rank=0",
        "--nproc_per_node=8",
        "--master_addr=127.0.0.1",
        "--master_port=29500",
    ]


def test_one_container_session_runs_on_loopback():
    # Backend.AI sets the variables for a plain one-container session too.
    env = cluster_env("main1", "main1", "main", 1, 0)
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
def test_three_node_cluster_every_node_agrees_on_master(host, role, idx, rank):
    # The hosts list is not guaranteed to be in rank order.
    env = cluster_env("sub2,main1,sub1", host, role, idx, rank)
    assert cluster_layout(env) == (3, rank, "main1")


@pytest.mark.parametrize("missing", ["BACKENDAI_CLUSTER_HOSTS", "BACKENDAI_CLUSTER_LOCAL_RANK"])
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


def test_hosts_without_a_main_are_refused():
    env = cluster_env("head,sub1", "sub1", "sub", 1, 1)
    with pytest.raises(ClusterEnvError, match="exactly one main host"):
        cluster_layout(env)


@pytest.mark.parametrize(("nproc", "port"), [(0, 29500), (8, 0), (8, 70000)])
def test_bad_arguments(nproc, port):
    with pytest.raises(ValueError, match="nproc_per_node" if nproc < 1 else "port"):
        torchrun_args({}, nproc_per_node=nproc, port=port)


def test_command_runs_harness_train_with_the_training_args():
    cmd = command({}, 2, 29500, ["--config", "configs/x.yaml"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[-4:] == ["-m", "harness.train", "--config", "configs/x.yaml"]


def test_cli_prints_the_command():
    env = cluster_env("main1,sub1", "sub1", "sub", 1, 1)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.launch",
            "--print",
            "--nproc-per-node",
            "4",
            "--",
            "--x",
            "1",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    ).stdout
    assert "torch.distributed.run --nnodes=2 --node_rank=1 --nproc_per_node=4" in out
    assert out.strip().endswith("--master_addr=main1 --master_port=29500 -m harness.train --x 1")


def test_cli_reports_a_bad_environment_without_a_traceback():
    env = cluster_env("main1,sub1", "sub1", "sub", 1, 1, size=3)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.launch", "--print", "--nproc-per-node", "1"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert proc.returncode == 2
    assert "BACKENDAI_CLUSTER_SIZE=3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_main_starts_every_sub_with_a_consistent_environment():
    env = {**cluster_env("main1,sub2,sub1", "main1", "main", 1, 0), "DATADIR": "/home/work/my data"}
    commands = sub_node_commands(env, 8, 29500, ["--config", "c.yaml"], "/opt/x", ["DATADIR"])
    assert [cmd[:4] for cmd in commands] == [
        ["ssh", "-o", "BatchMode=yes", "sub2"],
        ["ssh", "-o", "BatchMode=yes", "sub1"],
    ]
    layouts = []
    for rank, cmd in enumerate(commands, start=1):
        cd, _, remote = cmd[4].partition(" && exec ")
        assert cd == "cd /opt/x"
        words = shlex.split(remote)
        assignments = dict(w.split("=", 1) for w in words[1 : words.index(sys.executable)])
        assert assignments["DATADIR"] == "/home/work/my data"
        assert words[words.index(sys.executable) + 1 :] == [
            "-m",
            "harness.launch",
            "--nproc-per-node=8",
            "--port=29500",
            "--",
            "--config",
            "c.yaml",
        ]
        # What each sub will compute from the variables it is given.
        layouts.append(cluster_layout(assignments))
        assert layouts[-1][1] == rank
    assert layouts == [(3, 1, "main1"), (3, 2, "main1")]


def test_no_subs_to_start_on_a_single_node():
    assert sub_node_commands({}, 8, 29500, [], "/opt/x") == []


def test_subs_are_started_only_from_the_main_container():
    env = cluster_env("main1,sub1", "sub1", "sub", 1, 1)
    with pytest.raises(ClusterEnvError, match="BACKENDAI_CLUSTER_HOST='sub1'"):
        sub_node_commands(env, 8, 29500, [], "/opt/x")


def test_forwarding_an_unset_variable_is_an_error():
    env = cluster_env("main1,sub1", "main1", "main", 1, 0)
    with pytest.raises(ValueError, match="DATADIR"):
        sub_node_commands(env, 8, 29500, [], "/opt/x", ["DATADIR"])


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_cluster_run_reports_the_first_failure_and_stops_waiting_subs():
    start = time.monotonic()
    status = _run_cluster(python("raise SystemExit(3)"), [python("import time; time.sleep(60)")])
    assert status == 3
    assert time.monotonic() - start < 30, "the waiting sub was not stopped"


@pytest.mark.parametrize(("sub_code", "expected"), [(0, 0), (4, 4)])
def test_cluster_run_waits_for_the_subs_after_success(sub_code, expected):
    assert _run_cluster(python("pass"), [python(f"raise SystemExit({sub_code})")]) == expected


@pytest.mark.parametrize(("extra", "expected_lines"), [([], 2), (["--no-spawn-subs"], 1)])
def test_cli_on_main_starts_the_subs_unless_told_not_to(extra, expected_lines):
    env = cluster_env("main1,sub1", "main1", "main", 1, 0)
    out = subprocess.run(
        [sys.executable, "-m", "harness.launch", "--print", "--nproc-per-node=2", *extra],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    ).stdout.splitlines()
    assert len(out) == expected_lines
    if expected_lines == 2:
        assert out[0].startswith("ssh -o BatchMode=yes sub1 ")
    assert "--node_rank=0" in out[-1] and "--master_addr=main1" in out[-1]
