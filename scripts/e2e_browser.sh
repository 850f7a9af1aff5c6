#!/usr/bin/env bash
# Look at a study as a user would: a tiny experiment on a local Ray, then headless Chromium opens the
# Ray dashboard (with the token cookie; and once without) and TensorBoard's HParams and scalar views,
# saving screenshots. Installs Debian's chromium when it is missing (needs root or sudo).
#
#   scripts/e2e_browser.sh [OUT_DIR]      # default .raykd/e2e
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "[e2e] installing chromium (apt)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
bash scripts/setup_env.sh
exec .venv/bin/python scripts/e2e_browser.py --out "${1:-.raykd/e2e}"
