#!/usr/bin/env bash
# Set up (or reuse) the environment the project runs in, then build harness._C when its sources changed.
# Source it: `source scripts/setup_env.sh`; afterwards $PY is the Python to use.
#
# - Inside a container whose python3 already has a CUDA-enabled torch (NGC / Backend.AI images), that
#   Python is used and its torch is never replaced; the other pins are installed beside it.
# - Elsewhere a virtual environment .venv is created from requirements.txt (exact pins) and reused while
#   requirements.txt is unchanged.
# - HARNESS_VENV=DIR: a checkout run from a vfolder on a stock NGC image, without rebuilding an image.
#   Inside a container whose python3 has a CUDA-enabled torch, a virtual environment at DIR (put it in
#   the vfolder too) is created with --system-site-packages, so the image's torch, torchvision and numpy
#   stay; the other pins are installed into it once and reused by later sessions while
#   requirements.txt and the image's Python and torch are unchanged (stamp DIR/.harness-stamp).
# HARNESS_PYTHON=/path/to/python forces a given interpreter (its packages are then the caller's concern).
# Quiet on success; on failure it names the step and shows the end of .setup.log.

_harness_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_harness_log="$_harness_root/.setup.log"

_harness_fail() {
  echo "setup_env: FAILED at step: $1 (full log: $_harness_log)" >&2
  grep -v "^WARNING: Location" "$_harness_log" | tail -n 40 >&2
  return 1
}

_harness_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

_harness_container_python() {
  # A python3 with a CUDA build of torch that sees a GPU: an NGC-style image.
  command -v python3 >/dev/null || return 1
  python3 - <<'PY' 2>/dev/null
import sys, torch
sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)
PY
}

_harness_venv() {
  # The HARNESS_VENV environment: the image's python3 with its torch, plus the other pins.
  local venv req="$2" stamp want base
  venv="$(realpath -m "$1")"
  if ! _harness_container_python; then
    echo "setup_env: HARNESS_VENV=$venv needs a python3 with a CUDA-enabled torch that sees a GPU" \
      "(a stock NGC PyTorch image); this container has none" >&2
    return 1
  fi
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv" 2>/dev/null)" ]]; then
    echo "setup_env: HARNESS_VENV=$venv exists and is not a virtual environment; name a new folder" >&2
    return 1
  fi
  PY="$venv/bin/python"
  stamp="$venv/.harness-stamp"
  base="$(python3 -c 'import sys, torch; print(sys.executable, sys.version.split()[0], torch.__version__)' 2>>"$_harness_log")" \
    || { _harness_fail "import torch in the image's python3"; return 1; }
  want="$(_harness_hash "$req") $base"
  if [[ ! -x "$PY" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "setup_env: preparing $venv over the image's torch (first run: a few minutes)" >&2
    python3 -m venv --system-site-packages "$venv" >>"$_harness_log" 2>&1 \
      || { _harness_fail "create HARNESS_VENV ($venv)"; return 1; }
    "$PY" "$_harness_root/scripts/container_requirements.py" "$req" >"$venv/container-requirements.txt" \
      2>>"$_harness_log" || { _harness_fail "derive container requirements"; return 1; }
    "$PY" -m pip install -q -r "$venv/container-requirements.txt" >>"$_harness_log" 2>&1 \
      || { _harness_fail "pip install container requirements into $venv"; return 1; }
    echo "$want" >"$stamp"
  fi
}

_harness_setup() {
  : >"$_harness_log"
  local req="$_harness_root/requirements.txt"
  if [[ -n "${HARNESS_PYTHON:-}" ]]; then
    PY="$HARNESS_PYTHON"
  elif [[ -n "${HARNESS_VENV:-}" ]]; then
    _harness_venv "$HARNESS_VENV" "$req" || return 1
  elif [[ -x "$_harness_root/.venv/bin/python" ]] || ! _harness_container_python; then
    PY="$_harness_root/.venv/bin/python"
    local stamp="$_harness_root/.venv/.requirements-stamp" want
    want="$(_harness_hash "$req")"
    if [[ ! -x "$PY" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
      echo "setup_env: creating .venv from requirements.txt (first run: several minutes)" >&2
      python3 -m venv "$_harness_root/.venv" >>"$_harness_log" 2>&1 || { _harness_fail "create .venv"; return 1; }
      "$PY" -m pip install -q --upgrade pip >>"$_harness_log" 2>&1 || { _harness_fail "upgrade pip"; return 1; }
      "$PY" -m pip install -q -r "$req" >>"$_harness_log" 2>&1 || { _harness_fail "pip install -r requirements.txt"; return 1; }
      echo "$want" >"$stamp"
    fi
  else
    PY="$(command -v python3)"
    local stamp="$_harness_root/.container-requirements-stamp" want
    want="$(_harness_hash "$req")"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
      echo "setup_env: using the container's torch; installing the other pins beside it" >&2
      "$PY" "$_harness_root/scripts/container_requirements.py" "$req" >"$_harness_root/.container-requirements.txt" \
        2>>"$_harness_log" || { _harness_fail "derive container requirements"; return 1; }
      # Ubuntu 24.04 marks the system Python externally managed (PEP 668); NGC's torch lives there.
      PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q -r "$_harness_root/.container-requirements.txt" >>"$_harness_log" 2>&1 \
        || { _harness_fail "pip install container requirements"; return 1; }
      echo "$want" >"$stamp"
    fi
  fi

  # Build harness._C when the sources, the build script, torch or the build switches changed.
  local torch_version sources want_ext ext_stamp="$_harness_root/.build-stamp"
  torch_version="$("$PY" -c 'import torch; print(torch.__version__)' 2>>"$_harness_log")" \
    || { _harness_fail "import torch"; return 1; }
  sources="$(cd "$_harness_root" && find csrc setup.py -type f | sort)"
  # shellcheck disable=SC2086  # $sources holds one repository path per word: split on purpose
  want_ext="$( (cd "$_harness_root" && _harness_hash $sources; echo "$torch_version ${FORCE_CUDA:-auto} ${TORCH_CUDA_ARCH_LIST:-}") | sha256sum | cut -c1-16)"
  if [[ "$(cat "$ext_stamp" 2>/dev/null)" != "$want_ext" ]] || ! compgen -G "$_harness_root/harness/_C*.so" >/dev/null; then
    echo "setup_env: building harness._C (FORCE_CUDA=${FORCE_CUDA:-auto})" >&2
    rm -f "$ext_stamp"
    # The first time, `pip install -e .` registers the package and builds the extension in place;
    # afterwards an in-place build_ext recompiles only what changed (ninja).
    if [[ "$(cd / && "$PY" -c 'import harness,dali_pipeline,os;print(os.path.dirname(harness.__file__))' 2>/dev/null)" != "$_harness_root/harness" ]]; then
      (cd "$_harness_root" && "$PY" -m pip install -q --no-build-isolation --no-deps -e .) >>"$_harness_log" 2>&1 \
        || { _harness_fail "pip install -e . (builds harness._C)"; return 1; }
    else
      (cd "$_harness_root" && "$PY" setup.py -q build_ext --inplace) >>"$_harness_log" 2>&1 \
        || { _harness_fail "build harness._C (setup.py build_ext --inplace)"; return 1; }
    fi
    echo "$want_ext" >"$ext_stamp"
  fi
  export PY
}

_harness_setup
