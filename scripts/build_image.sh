#!/usr/bin/env bash
# Build the Backend.AI image: check that Dockerfile.backendai is the rendered one, lint it, build it,
# and optionally push it and have Backend.AI rescan the registry.
#
#   scripts/build_image.sh [--dry-run] [--registry HOST[/NAMESPACE]] [--push]
#                          [--backendai-registry NAME] [--project PROJECT] [--engine docker|podman]
#
# The tag comes from the pins: <registry>/mlperf/maskrcnn:<NGC release>-<git short sha>, with -dirty
# when the checkout has uncommitted changes (e.g. registry.example.com/mlperf/maskrcnn:24.12-1a2b3c4d).
#   --registry            where the image is pushed (default: none, a local tag mlperf/maskrcnn:...)
#   --push                push the tag to --registry
#   --backendai-registry  after the push, run `backend.ai admin image rescan -r NAME` so Backend.AI
#                         registers the image; NAME is the registry as Backend.AI's configuration
#                         names it (often the hostname)
#   --project             limit the rescan to that project's registry (`-p PROJECT`)
#   --engine              container engine (default: docker if installed, else podman)
#   --dry-run             print the commands instead of running them
# Environment: PYTHON (default: the checkout's .venv/bin/python, else python3), HADOLINT (default:
# hadolint next to PYTHON, else on PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build_image.sh: $1" >&2; exit 2; }

dry_run=0 push=0 registry="" bai_registry="" project="" engine=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --push) push=1; shift ;;
    --registry | --backendai-registry | --project | --engine)
      [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
      case "$1" in
        --registry) registry="${2%/}" ;;
        --backendai-registry) bai_registry="$2" ;;
        --project) project="$2" ;;
        --engine) engine="$2" ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $push -eq 0 || -n "$registry" ]] || die "--push needs --registry"
[[ -z "$bai_registry" || $push -eq 1 ]] || die "--backendai-registry rescans after a push: add --push"
[[ -z "$project" || -n "$bai_registry" ]] || die "--project limits the rescan: add --backendai-registry"

if [[ -z "$engine" ]]; then
  engine=docker
  command -v docker >/dev/null || ! command -v podman >/dev/null || engine=podman
fi
[[ "$engine" == docker || "$engine" == podman ]] || die "--engine must be docker or podman, not '$engine'"

python="${PYTHON:-}"
[[ -n "$python" ]] || { [[ -x .venv/bin/python ]] && python=.venv/bin/python || python=python3; }
hadolint="${HADOLINT:-}"
if [[ -z "$hadolint" ]]; then
  hadolint="$(dirname "$(command -v "$python")")/hadolint"
  [[ -x "$hadolint" ]] || hadolint=hadolint
fi

release="$("$python" scripts/render_dockerfile.py --print release)" || die "cannot read the NGC release"
sha="$(git rev-parse --short=8 HEAD 2>/dev/null)" || die "not a git checkout: the tag needs the commit"
[[ -z "$(git status --porcelain --untracked-files=no)" ]] || sha="$sha-dirty"
tag="${registry:+$registry/}mlperf/maskrcnn:$release-$sha"

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ $dry_run -eq 1 ]] && return
  command -v "$1" >/dev/null || die "$1 not found (needed for: $*)"
  "$@"
}

run "$python" scripts/render_dockerfile.py --check
run "$hadolint" --failure-threshold warning Dockerfile.backendai
run "$engine" build -f Dockerfile.backendai -t "$tag" .
if [[ $push -eq 1 ]]; then
  run "$engine" push "$tag"
fi
if [[ -n "$bai_registry" ]]; then
  # lablup/backend.ai src/ai/backend/client/cli/admin/image.py: rescan takes -r/--registry and
  # -p/--project, no positional argument.
  rescan=(backend.ai admin image rescan -r "$bai_registry")
  [[ -z "$project" ]] || rescan+=(-p "$project")
  run "${rescan[@]}"
fi
echo "image: $tag"
