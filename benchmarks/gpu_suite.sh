#!/usr/bin/env bash
# The one-script GPU check: on any machine with an NVIDIA GPU and PyTorch, within about 12 minutes,
#   1. builds harness._C for the local GPU (TORCH_CUDA_ARCH_LIST from its compute capability),
#   2. runs the cuda-marked tests,
#   3. benchmarks the ops on CUDA against torchvision's CUDA ops,
#   4. measures training throughput (images/s, peak memory) at 800x1333 with AMP, batch 2 and 8 per
#      GPU, this model vs torchvision's Mask R-CNN (benchmarks/train_throughput.py),
#   5. measures the DALI GPU loader's images/s (benchmarks/test_loader_bench.py),
#   6. counts the host syncs of one DGX-1-model training step under set_sync_debug_mode
#      (benchmarks/sync_count.py), 7. times the backbone + FPN captured as a CUDA graph against
#      eager, 8. times evaluation post-processing on the GPU (benchmarks/test_eval_bench.py),
# then writes summary.json + summary.md (and each part's log and JSON) into OUT_DIR and prints the
# table last. Each part runs under its own time limit; a failing or absent part is recorded and the
# others still run. Installs nothing: it uses $PY, else .venv/bin/python, else python3.
#
# Usage: benchmarks/gpu_suite.sh OUT_DIR
# Exit status: 0 when every available part passed, 1 when some part failed, 2 for bad usage or
# no usable GPU.
set -uo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: benchmarks/gpu_suite.sh OUT_DIR" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2

no_gpu() {
  echo "gpu_suite: no NVIDIA GPU is usable here ($1); this suite needs one, nothing was run" >&2
  exit 2
}
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found"
nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi -L failed"

if [[ -n "${PY:-}" ]]; then
  py="$PY"
elif [[ -x .venv/bin/python ]]; then
  py="$root/.venv/bin/python"
else
  py="$(command -v python3 || true)"
fi
[[ -n "$py" ]] || no_gpu "no Python found: set PY, or create .venv, or install python3"
# Prints GPU 0's compute capability as "major.minor", the arch the extension is built for, or on
# stdout too the reason there is none (stderr is dropped: import warnings must not reach the arch).
arch="$("$py" -c 'import sys
try:
    import torch
except ImportError as exc:
    print(f"{sys.executable} cannot import torch ({exc})")
    sys.exit(1)
if not torch.cuda.is_available():
    print(f"torch.cuda.is_available() is False for {sys.executable} "
          f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    sys.exit(1)
print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null)" || no_gpu "$arch"

mkdir -p "$1" || { echo "gpu_suite: cannot create OUT_DIR $1" >&2; exit 2; }
out="$(cd "$1" && pwd)"
results="$out/parts.tsv"
: >"$results"

# run_part NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, its output in OUT_DIR/NAME.log,
# and records NAME, status, seconds and exit code.
run_part() {
  local name="$1" limit="$2" start rc status
  shift 2
  echo "== $name (limit ${limit}s)" >&2
  start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="passed" ;;
    124 | 137) status="timed out" ;;
    5) status="failed (no tests collected)" ;;
    *) status="failed" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$rc" >>"$results"
  echo "   $status in $((SECONDS - start))s (log: $out/$name.log)" >&2
}

not_available() {
  printf '%s\t%s\t0\t\n' "$1" "not available: $2" >>"$results"
  echo "== $1: not available ($2)" >&2
}

export TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# This build is for GPU 0's arch only; scripts/setup_env.sh's stamp would still describe the build
# it made (e.g. all default archs) and let the next run use this one. Dropping the stamp makes
# setup_env.sh rebuild what it wants next time.
rm -f "$root/.build-stamp"
run_part build 140 "$py" setup.py -q build_ext --inplace
run_part cuda_tests 90 "$py" -m pytest -m cuda tests -q -p no:cacheprovider \
  --junitxml="$out/cuda_tests.xml"
run_part ops_bench 60 "$py" -m pytest benchmarks/test_ops_bench.py -q -p no:cacheprovider \
  --benchmark-only --bench-device cuda --benchmark-json "$out/ops_bench.json"
if [[ -f benchmarks/train_throughput.py ]]; then
  run_part train_throughput 120 "$py" benchmarks/train_throughput.py --device cuda \
    --batch-sizes 2 8 --image-size 800 1333 --iters 10 --json "$out/train_throughput.json"
else
  not_available train_throughput "benchmarks/train_throughput.py is absent"
fi
if [[ -f benchmarks/test_loader_bench.py ]] && grep -q bench_device benchmarks/test_loader_bench.py; then
  run_part loader_bench 40 "$py" -m pytest benchmarks/test_loader_bench.py -q -p no:cacheprovider \
    --benchmark-only --bench-device cuda --benchmark-json "$out/loader_bench.json"
else
  not_available loader_bench "benchmarks/test_loader_bench.py is absent or has no --bench-device case"
fi

# One DGX-1-model step under torch.cuda.set_sync_debug_mode (the count of host syncs per step),
# the backbone + FPN captured as a CUDA graph against eager (images/s), and COCO-scale evaluation
# post-processing on the GPU against the old full-size paste.
run_part sync_count 90 "$py" -c "from benchmarks.sync_count import cuda_sync_count as f
print('host syncs per step:', f('configs/dgx1_v100x8.yaml', (800, 1333), 2))"
run_part cuda_graphs 120 "$py" -c "from benchmarks.sync_count import cuda_graph_core_speed as f
print(f('configs/dgx1_v100x8.yaml', (800, 1333), 2))"
run_part eval_bench 60 env EVAL_BENCH_IMAGES=200 "$py" -m pytest benchmarks/test_eval_bench.py -q \
  -p no:cacheprovider --benchmark-only --bench-device cuda --benchmark-json "$out/eval_bench.json"

# Summary: JSON for machines, markdown for people; the table is the last thing printed.
"$py" - "$out" <<'PY'
import json, platform, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
parts = []
for line in (out / "parts.tsv").read_text().splitlines():
    name, status, seconds, rc = line.split("\t")
    parts.append({"part": name, "status": status, "seconds": int(seconds),
                  "exit_code": int(rc) if rc else None, "log": f"{name}.log"})


def bench_medians(path):
    """pytest-benchmark JSON -> [(group, name, median ms)]."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [(b.get("group") or "", b["name"], b["stats"]["median"] * 1e3) for b in data["benchmarks"]]


props = torch.cuda.get_device_properties(0)
summary = {
    "gpu": props.name,
    "capability": f"{props.major}.{props.minor}",
    "gpu_memory_gib": round(props.total_memory / 2**30, 1),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "python": platform.python_version(),
    "parts": parts,
    "ops_bench": bench_medians(out / "ops_bench.json"),
    "loader_bench": bench_medians(out / "loader_bench.json"),
    "eval_bench": bench_medians(out / "eval_bench.json"),
}
throughput = out / "train_throughput.json"
summary["train_throughput"] = json.loads(throughput.read_text()) if throughput.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

lines = [f"# GPU suite: {props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}", "",
         "| part | status | seconds |", "|---|---|---|"]
lines += [f"| {p['part']} | {p['status']} | {p['seconds']} |" for p in parts]
for title, rows in (("Ops (median ms)", summary["ops_bench"]),
                    ("DALI loader (median ms per batch)", summary["loader_bench"]),
                    ("evaluation post-processing (median ms)", summary["eval_bench"])):
    if rows:
        lines += ["", f"| {title} group | benchmark | median ms |", "|---|---|---|"]
        lines += [f"| {g} | {n} | {m:.3f} |" for g, n, m in rows]
if summary["train_throughput"] is not None:
    lines += ["", "Training throughput (train_throughput.json):", "```",
              json.dumps(summary["train_throughput"], indent=1), "```"]
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text, end="")
PY

summary_rc=$?

# The verdict: failed when any part failed or ran out of time, or the summary could not be made.
[[ $summary_rc -eq 0 ]] && ! grep -qE $'\t(failed|timed out)' "$results"
