#!/usr/bin/env bash
# Run N seeds of `python -m harness.train` back to back, each in its own run directory, clearing the
# page cache before each (harness.train does), and optionally package them for submission.
#
# Usage: scripts/run_n.sh N [--dir RUNS_DIR] [--package SYSTEM OUT_DIR] [--] TRAIN_ARGS...
#   N              number of runs (Mask R-CNN submissions need 5)
#   --dir          parent of the N run directories (default runs/run_n-<UTC time>); each run's
#                  directory is created in it by harness.train
#   --package      afterwards, `python -m harness.submission --runs <the N runs> --system SYSTEM
#                  --out OUT_DIR` (its exit status becomes this script's)
#   TRAIN_ARGS     passed to harness.train, e.g. --config configs/dgx1_v100x8.yaml key=value ...
#
# Seeds: run i gets run.seed=SEED0+i, SEED0 from $RUN_N_SEED (default: from the clock), so that no
# two runs share a seed (the closed division's seed checker requires it).
# Cache: each run drops the page cache itself before its clock starts (harness/cache.py: as root
# through /proc/sys/vm/drop_caches, or with the command in HARNESS_DROP_CACHES_CMD, e.g. one that
# asks the host, as NVIDIA's run scripts drop it from outside the container) and logs cache_clear
# truthfully; HARNESS_DROP_CACHES defaults to 1 here so that open-division runs do it too.
# Exit status: 0 when every run reached its target (and the package passed its checks), 1 when some
# run did not, 2 for bad usage; with --package, harness.submission's status.
set -uo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
runs=$1
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/runs/run_n-$(date -u +%Y%m%d-%H%M%S)"
system="" out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) [[ $# -ge 2 ]] || usage; dir=$2; shift 2 ;;
    --package) [[ $# -ge 3 ]] || usage; system=$2; out=$3; shift 3 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage

if [[ -n "${PY:-}" ]]; then
  py="$PY"
elif [[ -x "$root/.venv/bin/python" ]]; then
  py="$root/.venv/bin/python"
else
  py="$(command -v python3)"
fi
seed0="${RUN_N_SEED:-$(($(date +%s) % 100000 * 10))}"
export HARNESS_DROP_CACHES="${HARNESS_DROP_CACHES:-1}"
mkdir -p "$dir" || { echo "run_n: cannot create $dir" >&2; exit 2; }

failed=0
for ((i = 0; i < runs; i++)); do
  seed=$((seed0 + i))
  echo "run_n: run $((i + 1))/$runs, seed $seed, in $dir"
  (cd "$root" && "$py" -m harness.train "$@" "run.output_dir=$dir" "run.seed=$seed")
  status=$?
  if [[ $status -ne 0 ]]; then
    echo "run_n: run $((i + 1)) (seed $seed) exited with status $status" >&2
    failed=1
  fi
done

mapfile -t made < <(find "$dir" -mindepth 1 -maxdepth 1 -type d | sort)
echo "run_n: ${#made[@]} run directories in $dir"
if [[ -n "$system" ]]; then
  (cd "$root" && "$py" -m harness.submission --runs "${made[@]}" --system "$system" --out "$out")
  exit $?
fi
exit $failed
