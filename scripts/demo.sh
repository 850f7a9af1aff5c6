#!/usr/bin/env bash
# The main job on its embedded default: set up .venv, then generate the MedDialog-CN-format corpus
# and prepare it into tokenized Parquet shards (the experiment engine, `python -m raykd.tune`,
# takes over here once it lands). Outputs go under .raykd/ in the repository; re-runs reuse them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source scripts/setup_env.sh
PY="$VENV/bin/python"
WORK=${RAYKD_HOME:-$ROOT/.raykd}
"$PY" -m raykd.data synth --out "$WORK/raw" --dialogs "${DEMO_DIALOGS:-5000}" --seed 0
"$PY" -m raykd.data prepare --raw "$WORK/raw" --out "$WORK/prepared" --max-length 128
