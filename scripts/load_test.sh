#!/usr/bin/env bash
# Load test: 50 tiny trials (default) queued on this machine with ASHA on; prints peak memory of the
# Ray processes, object-store peak, checkpoints kept, trials/min. Numbers go in docs/reliability.md.
#   scripts/load_test.sh [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/load_test.py --trials "${1:-50}"
