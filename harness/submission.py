"""Build an MLPerf Training 3.1 submission package from finished runs, then check and score it.

    python -m harness.submission --runs RUN_DIR... --system NAME --out DIR
        [--submitter ORG] [--status onprem|cloud|preview|research] [--division open|closed]
        [--set FIELD=VALUE ...] [--no-check]

DIR becomes one submitter's folder in the layout the checkers walk (mlcommons/logging
package_checker, result_summarizer):

    DIR/results/<system>/maskrcnn/result_<i>.txt     each run's mlperf.log, in --runs order
    DIR/systems/<system>.json                        the system description (every required field)
    DIR/benchmarks/maskrcnn/implementations/<impl>/  this repository's tracked files (code, README)

The system description is filled from the machine this command runs on (CPU, memory, GPUs, OS,
framework and library versions); fields no machine can tell (submitter, status, division, storage,
networking, cooling, notes) come from the runs' logs and from options. Then the official checkers
run on the package: `python -m mlperf_logging.package_checker DIR training 3.1.0`,
`python -m mlperf_logging.result_summarizer DIR training 3.1.0` and, for the closed division,
`python -m mlperf_logging.rcp_checker` (reference convergence points exist for Mask R-CNN at
batch 8 to 272); the verdicts and the scored time are printed, their logs go to DIR.checks/.
Mask R-CNN needs 5 runs (mlperf_logging.benchmark_meta); the score is the olympic mean: the fastest
and the slowest run dropped, the other 3 averaged (result_summarizer._compute_olympic_average,
max_dropped_scores=1 for every benchmark but unet3d).
Exit status: 0 when the package checker passes, 1 when it finds errors, 2 for a bad run or option.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARK = "maskrcnn"
RULESET = "3.1.0"
REQUIRED_RUNS = 5  # mlperf_logging.benchmark_meta: 'maskrcnn': 5
STATUSES = ("onprem", "cloud", "preview", "research")  # training_3.1.0/common.yaml
ROOT = Path(__file__).resolve().parent.parent

# mlperf_logging/system_desc_checker: every field a training system description must have.
SYSTEM_FIELDS = (
    "submitter",
    "division",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processors_per_node",
    "host_processor_model_name",
    "host_processor_core_count",
    "host_processor_vcpu_count",
    "host_processor_frequency",
    "host_processor_caches",
    "host_processor_interconnect",
    "host_memory_capacity",
    "host_storage_type",
    "host_storage_capacity",
    "host_networking",
    "host_networking_topology",
    "host_memory_configuration",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_host_interconnect",
    "accelerator_frequency",
    "accelerator_on-chip_memories",
    "accelerator_memory_configuration",
    "accelerator_memory_capacity",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "cooling",
    "hw_notes",
    "framework",
    "other_software_stack",
    "operating_system",
    "sw_notes",
)


class SubmissionError(Exception):
    """A run or an option that cannot go into a package; the message names it."""


@dataclass(frozen=True)
class Run:
    """A finished run: its mlperf.log and what the package needs from it."""

    directory: Path
    log: Path
    org: str
    division: str
    status: str
    platform: str
    minutes: float  # run_stop - run_start


def read_run(directory: Path) -> Run:
    """Check that `directory` holds a complete, successful MLPerf Mask R-CNN run and read it."""
    log = directory / "mlperf.log"
    if not directory.is_dir():
        raise SubmissionError(f"run {directory}: no such directory")
    if not log.is_file():
        raise SubmissionError(f"run {directory}: no mlperf.log (not a run directory?)")
    values: dict[str, object] = {}
    times: dict[str, int] = {}
    stop_status = None
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.startswith(":::MLLOG "):
            continue
        try:
            record = json.loads(line[len(":::MLLOG ") :])
        except json.JSONDecodeError as err:
            raise SubmissionError(f"run {directory}: {log} line {number} is not JSON") from err
        values.setdefault(record["key"], record["value"])
        if record["key"] in ("run_start", "run_stop"):
            times[record["key"]] = record["time_ms"]
        if record["key"] == "run_stop":
            stop_status = record["metadata"].get("status")
    if "run_start" not in times:
        raise SubmissionError(f"run {directory}: {log} has no run_start (truncated?)")
    if "run_stop" not in times:
        raise SubmissionError(
            f"run {directory}: {log} has no run_stop (truncated or still running)"
        )
    if stop_status != "success":
        raise SubmissionError(
            f"run {directory}: run_stop status is {stop_status!r}, not 'success' (the run did not "
            "reach the target)"
        )
    if values.get("submission_benchmark") != BENCHMARK:
        raise SubmissionError(
            f"run {directory}: submission_benchmark is {values.get('submission_benchmark')!r}, "
            f"not {BENCHMARK!r}"
        )
    return Run(
        directory,
        log,
        str(values.get("submission_org", "")),
        str(values.get("submission_division", "")),
        str(values.get("submission_status", "")),
        str(values.get("submission_platform", "")),
        (times["run_stop"] - times["run_start"]) / 60_000,
    )


def olympic_minutes(runs: list[Run]) -> float:
    """The rules' score of the runs: drop the fastest and the slowest, average the rest."""
    minutes = sorted(run.minutes for run in runs)
    return sum(minutes[1:-1]) / (len(minutes) - 2)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_description() -> dict[str, str]:
    """Host CPU fields from /proc/cpuinfo and sysfs (Linux); "" where the machine does not say."""
    info: dict[str, set[str]] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), set()).add(value.strip())
    model = sorted(info.get("model name", {platform.processor()}))[0]
    sockets = len(info.get("physical id", set())) or 1
    cores = sorted(info.get("cpu cores", {""}))[0]
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind = _read(f"{index}/level").strip(), _read(f"{index}/type").strip()
        size = _read(f"{index}/size").strip()
        if level and size:
            name = {"Data": "d", "Instruction": "i"}.get(kind, "")
            caches.append(f"L{level}{name} {size}")
    return {
        "host_processors_per_node": str(sockets),
        "host_processor_model_name": model,
        "host_processor_core_count": cores,
        "host_processor_vcpu_count": str(os.cpu_count() or ""),
        "host_processor_frequency": f"{int(max_khz) // 1000} MHz" if max_khz.isdigit() else "",
        "host_processor_caches": ", ".join(caches),
    }


def _memory_capacity() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GB"
    return ""


def _operating_system() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _software() -> tuple[str, dict[str, str]]:
    """The framework line and other_software_stack: versions of what the runs import."""
    import torch

    from harness.collect_env import _version

    stack = {"python": platform.python_version(), "kernel_version": platform.release()}
    if torch.version.cuda:
        stack["cuda_version"] = torch.version.cuda
    if torch.cuda.is_available():
        stack["cudnn_version"] = str(torch.backends.cudnn.version())
        stack["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    for dist in ("torchvision", "nvidia-dali-cuda130", "pycocotools", "faster-coco-eval"):
        version = _version(dist)
        if version != "not installed":
            stack[dist] = version
    return f"PyTorch {torch.__version__}", stack


def system_description(
    system: str, submitter: str, division: str, status: str, overrides: dict[str, str]
) -> dict[str, object]:
    """Every field of SYSTEM_FIELDS, detected where the machine can tell, from options otherwise.

    Values are strings, as in the published 3.1 descriptions (training_results_v3.1
    NVIDIA/systems/*.json), other_software_stack a mapping of versions."""
    from harness import platform as hw_platform

    hw = hw_platform.detect()
    framework, stack = _software()
    desc: dict[str, object] = dict.fromkeys(SYSTEM_FIELDS, "")
    desc.update(
        submitter=submitter,
        division=division,
        status=status,
        system_name=system,
        number_of_nodes="1",
        host_memory_capacity=_memory_capacity(),
        accelerators_per_node=str(hw.gpu_count),
        accelerator_model_name=hw.gpu_name,
        accelerator_memory_capacity=f"{hw.gpu_memory_gib:.0f} GB" if hw.gpu_count else "",
        framework=framework,
        other_software_stack=stack,
        operating_system=_operating_system(),
        **_cpu_description(),
    )
    unknown = sorted(set(overrides) - set(SYSTEM_FIELDS))
    if unknown:
        raise SubmissionError(f"--set: unknown system description field(s) {', '.join(unknown)}")
    desc.update(overrides)
    return desc


def _tracked_files() -> list[Path]:
    """This repository's files, tracked or not ignored (what a reviewer needs to rerun it)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SubmissionError(
            f"cannot list the implementation's files with git in {ROOT}: {err}"
        ) from err
    return [Path(name) for name in out.split("\0") if name and (ROOT / name).is_file()]


def build_package(
    runs: list[Run], out: Path, system: str, impl: str, description: dict[str, object]
) -> None:
    """Write the package tree under `out` (which must not exist yet)."""
    if out.exists():
        raise SubmissionError(f"--out {out} exists; give a new directory")
    results = out / "results" / system / BENCHMARK
    results.mkdir(parents=True)
    for index, run in enumerate(runs):
        shutil.copyfile(run.log, results / f"result_{index}.txt")
    (out / "systems").mkdir()
    (out / "systems" / f"{system}.json").write_text(json.dumps(description, indent=4) + "\n")
    code = out / "benchmarks" / BENCHMARK / "implementations" / impl
    for name in _tracked_files():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, code / name)


@dataclass(frozen=True)
class Verdict:
    passed: bool  # the package checker found no errors
    score_minutes: float | None  # result_summarizer's maskrcnn time to train
    rcp: str | None  # the RCP checker's last line (closed division only)
    logs: Path  # the checkers' logs and the summary tables


def _run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def check_package(out: Path, system: str, division: str) -> Verdict:
    """Run the official package checker and result summarizer (and for the closed division the
    RCP checker) on the package `out`; their logs and tables go to `<out>.checks/`, outside it."""
    logs = Path(f"{out}.checks")
    logs.mkdir(exist_ok=True)
    checker = _run_module(
        "mlperf_logging.package_checker",
        str(out),
        "training",
        RULESET,
        "--log_output",
        str(logs / "package_checker.log"),
    )
    # The checker exits 0 either way; its verdict is the last line it logs.
    output = checker.stdout + checker.stderr
    (logs / "package_checker.out").write_text(output)
    passed = checker.returncode == 0 and "PACKAGE CHECKER FOUND NO ERRORS" in output
    summary = logs / "summary.csv"
    summarizer = _run_module(
        "mlperf_logging.result_summarizer", str(out), "training", RULESET, "--csv", str(summary)
    )
    (logs / "result_summarizer.out").write_text(summarizer.stdout + summarizer.stderr)
    score = None
    if summarizer.returncode == 0 and summary.is_file():
        with summary.open() as f:
            for row in csv.DictReader(f):
                if row.get("system") and row.get(BENCHMARK):
                    score = float(row[BENCHMARK])
    rcp = None
    if division == "closed":
        # Reference convergence points: training_3.1.0/rcps_maskrcnn.json (batch 8 to 272).
        result = _run_module(
            "mlperf_logging.rcp_checker",
            str(out / "results" / system / BENCHMARK),
            "--rcp_usage",
            "training",
            "--rcp_version",
            RULESET,
            "--log_output",
            str(logs / "rcp_checker.log"),
        )
        lines = (result.stdout + result.stderr).strip().splitlines()
        rcp = next((line for line in reversed(lines) if "RCP" in line), "no output")
    return Verdict(passed, score, rcp, logs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m harness.submission",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", nargs="+", required=True, type=Path, help="run directories")
    p.add_argument("--system", required=True, help="system id: results/<system>, systems/<system>")
    p.add_argument("--out", required=True, type=Path, help="package directory to create")
    p.add_argument("--submitter", help="default: the runs' submission_org")
    p.add_argument("--status", choices=STATUSES, help="default: the runs' submission_status")
    p.add_argument("--division", choices=("open", "closed"), help="default: the runs' division")
    p.add_argument("--impl", default="pytorch", help="implementation folder name")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a system description field the machine cannot tell (e.g. host_storage_type=NVMe)",
    )
    p.add_argument("--no-check", action="store_true", help="build only; skip the checkers")
    return p.parse_args(argv)


def _one(runs: list[Run], field: str, option: str | None) -> str:
    values = {getattr(run, field) for run in runs}
    if option is not None:
        mismatched = [str(run.directory) for run in runs if getattr(run, field) != option]
        if mismatched:
            raise SubmissionError(
                f"--{field} {option}: run(s) {', '.join(mismatched)} logged another "
                f"submission_{field}"
            )
        return option
    if len(values) != 1:
        raise SubmissionError(f"the runs logged different submission_{field} values {values}")
    return values.pop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if len(args.runs) != REQUIRED_RUNS:
            raise SubmissionError(
                f"Mask R-CNN needs {REQUIRED_RUNS} runs (mlperf_logging benchmark_meta), "
                f"got {len(args.runs)}"
            )
        runs = [read_run(path) for path in args.runs]
        overrides = {}
        for item in args.set:
            field, sep, value = item.partition("=")
            if not sep:
                raise SubmissionError(f"--set {item!r}: expected FIELD=VALUE")
            overrides[field] = value
        division = _one(runs, "division", args.division)
        status = _one(runs, "status", args.status)
        submitter = args.submitter or _one(runs, "org", None)
        description = system_description(args.system, submitter, division, status, overrides)
        build_package(runs, args.out, args.system, args.impl, description)
    except SubmissionError as error:
        print(f"python -m harness.submission: {error}", file=sys.stderr)
        return 2
    print(f"package: {args.out} ({len(runs)} runs of {args.system}, {division} division)")
    print(f"olympic mean of the runs' logs: {olympic_minutes(runs):.4f} minutes")
    if args.no_check:
        return 0
    verdict = check_package(args.out, args.system, division)
    print(f"package_checker {RULESET}: {'PASSED' if verdict.passed else 'FAILED'}")
    if verdict.score_minutes is None:
        print(f"result_summarizer: no {BENCHMARK} score")
    else:
        print(f"result_summarizer: scored time {verdict.score_minutes:.4f} minutes")
    if verdict.rcp is not None:
        print(f"rcp_checker: {verdict.rcp}")
    print(f"checker logs: {verdict.logs}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
