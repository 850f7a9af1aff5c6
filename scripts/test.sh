#!/usr/bin/env bash
# The test command: sets up .venv (pinned torch, raykd[dev]) and runs the whole suite — fast unit
# tests first, then the distributed ones (gloo process groups), then the integration tests (real Ray,
# real training at tiny size) — printing each
# test's duration. Extra arguments go to pytest (e.g. scripts/test.sh -m unit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source scripts/setup_env.sh
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false
PYTEST=("$VENV/bin/python" -m pytest -p no:cacheprovider --durations=0 --durations-min=0.5 --timeout=1200)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
start=$(date +%s)
"${PYTEST[@]}" -m unit tests
"${PYTEST[@]}" -m distributed tests
# the live-view tests (Prometheus charting a study, headless Chromium) skip, saying why, without these two
bash scripts/install_tools.sh prometheus chromium || echo "[test] the live-view tests will skip (see above)"
"${PYTEST[@]}" -m integration tests
echo "[test] all tests passed in $(( $(date +%s) - start )) s"
