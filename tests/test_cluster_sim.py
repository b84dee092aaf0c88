"""A simulated two-node Backend.AI cluster session on this machine: run, stop, resume.

Two "containers" are two process groups with the BACKENDAI_CLUSTER_* variables Backend.AI gives
main1 and sub1 (lablup/backend.ai, src/ai/backend/manager/sokovan/scheduler/launcher/launcher.py).
run_and_time.sh starts in main1; the launcher reaches sub1 through tests/fixtures/ssh_shim/ssh,
first on PATH, which runs the remote command in a new session with sub1's environment only. Both
nodes train through torchrun (Gloo, one worker each) on a tiny synthetic set. main1 does not
resolve here, so the launcher is given its address (--host-addr), as on a host-network cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import checkpoint
from tests.test_mlperf_log import run_checker
from tests.test_train import ROOT, TINY

SHIM = ROOT / "tests" / "fixtures" / "ssh_shim"
HOSTS = ("main1", "sub1")
SYNTH_ARGS = ["--train", "8", "--val", "4", "--size", "64", "--seed", "3"]
BUILD_SWITCHES = ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST")
REBUILD_NOTICE = "setup_env: building harness._C"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_vars(host: str, with_local_rank: bool = True) -> dict[str, str]:
    role, idx = host[:-1], int(host[-1])
    env = {
        "BACKENDAI_CLUSTER_SIZE": str(len(HOSTS)),
        "BACKENDAI_CLUSTER_REPLICAS": "main:1,sub:1",
        "BACKENDAI_CLUSTER_HOSTS": ",".join(HOSTS),
        "BACKENDAI_CLUSTER_HOST": host,
        "BACKENDAI_CLUSTER_ROLE": role,
        "BACKENDAI_CLUSTER_IDX": str(idx),
    }
    if with_local_rank:  # added in lablup/backend.ai#826; older releases leave it out
        env["BACKENDAI_CLUSTER_LOCAL_RANK"] = str(HOSTS.index(host))
    return env


class Cluster:
    """main1's environment for run_and_time.sh, sub1's in the shim's node folder."""

    def __init__(self, tmp_path: Path, dataset: Path, with_local_rank: bool = True) -> None:
        self.nodes = tmp_path / "nodes"
        self.nodes.mkdir()
        self.runs = tmp_path / "runs"
        container = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
        }
        # run_and_time.sh sources setup_env.sh, whose build stamp hashes these switches: pass on
        # the ones this checkout was built with (scripts/test.sh's), or it would rebuild harness._C
        # in place, under the test session that has it loaded (a FORCE_CUDA=0 here once replaced
        # CI's CUDA build with a CPU-only one).
        for switch in BUILD_SWITCHES:
            if switch in os.environ:
                container[switch] = os.environ[switch]
        sub = {**container, **cluster_vars("sub1", with_local_rank)}
        (self.nodes / "sub1.env").write_text("".join(f"{k}={v}\n" for k, v in sub.items()))
        self.main_env = {
            **container,
            **cluster_vars("main1", with_local_rank),
            "PATH": f"{SHIM}:{os.environ['PATH']}",
            "SSH_SHIM_NODES": str(self.nodes),
            "DATADIR": str(tmp_path / "no-coco"),
            "SEED": "7",
            "LAUNCH_ARGS": f"--port {_free_port()} --host-addr main1=127.0.0.1",
        }
        self.common = [
            "--config",
            "configs/cpu_demo.yaml",
            *TINY,
            f"data.root={dataset}",
            f"run.output_dir={self.runs}",
        ]

    def start(self, *args: str) -> subprocess.Popen:
        # Its own session: main1's process group, apart from pytest's.
        return subprocess.Popen(
            ["bash", str(ROOT / "run_and_time.sh"), *self.common, *args],
            cwd=ROOT,
            env=self.main_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str) -> tuple[int, str, str]:
        proc = self.start(*args)
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            self.kill(proc)
        assert REBUILD_NOTICE not in err, "run_and_time.sh rebuilt the checkout's harness._C"
        return proc.returncode, out, err

    def sub_code(self) -> int:
        return int((self.nodes / "sub1.rc").read_text())

    def run_dirs(self) -> list[Path]:
        return sorted(p for p in self.runs.iterdir() if p.is_dir())

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """Leave nothing behind when a test fails half-way (main1's group; sub1 dies with it)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run(
        [sys.executable, "-m", "harness.data.synthetic", "--out", str(out), *SYNTH_ARGS],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(autouse=True)
def _tools():
    if shutil.which("setsid") is None:
        pytest.skip("the ssh shim needs util-linux setsid")


@pytest.mark.parametrize("with_local_rank", [True, False], ids=["local-rank", "no-local-rank"])
def test_two_node_session_trains_in_sync_and_logs_a_compliant_run(
    tmp_path, dataset, with_local_rank
):
    cluster = Cluster(tmp_path, dataset, with_local_rank)
    rc, out, err = cluster.run(
        "solver.max_iter=2", "run.target_bbox_map=0", "run.target_segm_map=0"
    )
    # 0 on both nodes: harness.train ends with its parameters_in_sync check across the two nodes
    # (a mismatch raises, exit 1), and the sub's status came back through the ssh stand-in.
    assert rc == 0, err[-4000:]
    assert cluster.sub_code() == 0
    assert "Traceback" not in err
    assert "RESULT,OBJECT_DETECTION,7," in out
    (run,) = cluster.run_dirs()
    assert run_checker(run / "mlperf.log").returncode == 0
    state = checkpoint.load_latest(run / "checkpoints")
    assert state["iteration"] == 2


def test_sigint_stops_both_nodes_saves_and_resumes(tmp_path, dataset):
    cluster = Cluster(tmp_path, dataset)
    proc = cluster.start("solver.max_iter=100000", "run.target_bbox_map=1", "run.target_segm_map=1")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            logged = list(cluster.runs.glob("*/metrics.jsonl"))
            if logged and logged[0].stat().st_size > 0:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        # What a batch session's stop delivers: SIGINT to the startup command's process only.
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        cluster.kill(proc)
    assert REBUILD_NOTICE not in err, "run_and_time.sh rebuilt the checkout's harness._C"
    assert proc.returncode == 130, err[-4000:]
    assert cluster.sub_code() == 130
    assert "Traceback" not in err
    (run,) = cluster.run_dirs()
    last = (run / "mlperf.log").read_text().strip().splitlines()[-1]
    assert '"run_stop"' in last and '"aborted"' in last
    stopped = checkpoint.load_latest(run / "checkpoints")
    assert stopped is not None and stopped["iteration"] >= 1

    resumed_to = stopped["iteration"] + 1
    # The resumed run keeps its seed and targets (harness/resume.py); only its length grows.
    rc, _, err = cluster.run(
        "--resume",
        str(run),
        f"solver.max_iter={resumed_to}",
        "run.target_bbox_map=1",  # as started: --config and these must give the run's config
        "run.target_segm_map=1",
    )
    assert rc == 4, err[-4000:]  # the targets of 1 stay unreached: a normal miss on both nodes
    assert cluster.sub_code() == 4
    assert checkpoint.load_latest(run / "checkpoints")["iteration"] == resumed_to
