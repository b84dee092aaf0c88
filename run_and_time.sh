#!/usr/bin/env bash
# The main job: train Mask R-CNN to its quality target and report the time, as the MLPerf reference's
# run_and_time.sh does.
#
#   ./run_and_time.sh [--config FILE|auto] [--resume RUN_DIR] [section.key=value ...]
#
# - DATADIR (default ./data/coco) holds COCO 2017 (train2017/, val2017/, annotations/) and GPUs are
#   present: the MLPerf run on all local GPUs through torchrun (across a Backend.AI cluster session when
#   its BACKENDAI_CLUSTER_* variables are set), with the config matching the detected platform.
#   The backbone weights are read from $WEIGHTS (default $DATADIR/../R-50.pkl).
# - No COCO at DATADIR and no GPU: the CPU demo. The synthetic COCO-layout set is generated into
#   $SYNTH_DIR (default ./data/synthetic) when absent, and configs/cpu_demo.yaml trains on it.
# Both run through `python -m harness.launch` (see its --help); LAUNCH_ARGS adds options to it, e.g.
#   LAUNCH_ARGS="--port 29600 --socket-ifname eth1 --host-addr main1=10.0.0.2".
# SIGINT/SIGTERM stop every rank: rank 0 saves a checkpoint, continue with --resume RUN_DIR.
# Prints start and end timestamps and `RESULT,OBJECT_DETECTION,<seed>,<seconds>,<user>,<start>`;
# exits with the training's code: 0 target reached, 2 configuration, 3 non-finite loss, 4 target
# missed, 130 stopped.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

config=""
resume=()
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --config) [[ $# -ge 2 ]] || { echo "run_and_time.sh: --config needs a value" >&2; exit 2; }
      config="$2"; shift 2 ;;
    --resume) [[ $# -ge 2 ]] || { echo "run_and_time.sh: --resume needs a run directory" >&2; exit 2; }
      resume=(--resume "$2"); shift 2 ;;
    --*) echo "run_and_time.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run_and_time.sh: unexpected argument '$1': overrides are section.key=value (see --help)" >&2
      exit 2 ;;
  esac
done

source scripts/setup_env.sh

DATADIR="${DATADIR:-./data/coco}"
SEED="${SEED:-$(( (RANDOM << 15) | RANDOM ))}"
gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
have_coco=0
[[ -f "$DATADIR/annotations/instances_train2017.json" && -d "$DATADIR/train2017" ]] && have_coco=1

start=$(date +%s)
start_fmt=$(date +%Y-%m-%d\ %r)
echo "STARTING TIMING RUN AT $start_fmt"

# The launcher runs in the background so that this shell, waiting on it, can pass on a stop: a
# batch session's stop signal reaches this script, not its children.
launch() {
  "$PY" -m harness.launch "$@" &
  child=$!
  trap 'kill -INT "$child" 2>/dev/null' INT
  trap 'kill -TERM "$child" 2>/dev/null' TERM
  # wait returns early when a trapped signal arrives; wait again until the launcher has exited.
  while :; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  trap - INT TERM
}

rc=0
# shellcheck disable=SC2206  # LAUNCH_ARGS is a list of options, split on purpose
launch_args=(${LAUNCH_ARGS:-})
if [[ $have_coco -eq 1 && $gpus -gt 0 ]]; then
  weights="${WEIGHTS:-$DATADIR/../R-50.pkl}"
  launch --nproc-per-node "$gpus" "${launch_args[@]}" -- --config "${config:-auto}" "${resume[@]}" \
    run.seed="$SEED" data.root="$DATADIR" model.backbone.weights="$weights" "${overrides[@]}"
elif [[ $have_coco -eq 1 && -z "$config" ]]; then
  echo "run_and_time.sh: COCO found at $DATADIR but no GPU is visible; the MLPerf configs need GPUs." >&2
  echo "  Run the CPU demo on it explicitly with --config configs/cpu_demo.yaml data.root=$DATADIR" >&2
  rc=2
else
  synth="${SYNTH_DIR:-./data/synthetic}"
  if [[ -z "$config" && ! -f "$synth/annotations/instances_val2017.json" ]]; then
    echo "generating the synthetic COCO set into $synth"
    "$PY" -m harness.data.synthetic --out "$synth" --train 800 --val 100 --seed 1 --size 256
  fi
  launch --nproc-per-node 1 "${launch_args[@]}" -- --config "${config:-configs/cpu_demo.yaml}" \
    "${resume[@]}" run.seed="$SEED" data.root="$synth" "${overrides[@]}"
fi

end=$(date +%s)
echo "ENDING TIMING RUN AT $(date +%Y-%m-%d\ %r)"
echo "RESULT,OBJECT_DETECTION,$SEED,$((end - start)),${USER:-$(id -un)},$start_fmt"
exit $rc
