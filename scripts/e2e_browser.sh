#!/usr/bin/env bash
# Look at a study as a user would: a tiny experiment on a local Ray, then headless Chromium opens the
# Ray dashboard (with the token cookie; and once without) and TensorBoard's HParams and scalar views,
# saving screenshots. Installs Debian's chromium when it is missing (needs root or sudo).
#
#   scripts/e2e_browser.sh [OUT_DIR]      # default .raykd/e2e
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_tools.sh chromium || true  # without it e2e_browser.py says what is missing
bash scripts/setup_env.sh
exec .venv/bin/python scripts/e2e_browser.py --out "${1:-.raykd/e2e}"
