#!/usr/bin/env bash
# The main job on its embedded default: set up .venv, then `python -m raykd.tune` with
# search_spaces/smoke.yaml — a local Ray (dashboard on 127.0.0.1), the generated MedDialog-CN-format
# corpus, a domain-adapted tiny teacher, 6 Optuna trials with ASHA. Data, teacher and results go
# under .raykd/ (re-runs reuse the data and teacher). Extra arguments go to raykd.tune.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source scripts/setup_env.sh
exec "$VENV/bin/python" -m raykd.tune "$@"
