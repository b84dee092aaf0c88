#!/usr/bin/env bash
# The test command: sets up the environment (see scripts/setup_env.sh), checks formatting and lint,
# then runs the whole test suite and each benchmark once, untimed (--benchmark-disable; the root
# conftest.py says which benchmark files are only collected). Extra arguments go to pytest, e.g.
# `./scripts/test.sh -m "not slow"`; time the benchmarks with `pytest --benchmark-only` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
bin="$(dirname "$PY")"

echo "== ruff (lint + format check)"
"$bin/ruff" check .
"$bin/ruff" format --check .
echo "== clang-format (check)"
find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' | sort \
  | xargs "$bin/clang-format" --dry-run -Werror
echo "== pytest"
set +e
"$PY" -m pytest --benchmark-disable "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests (exit 5); that is a failure, not a pass" >&2
fi
exit $rc
