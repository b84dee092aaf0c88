#!/usr/bin/env bash
# The main job. Sets up the environment, then (until the training harness lands) reports it.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
"$PY" -m harness.collect_env
