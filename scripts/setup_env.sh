#!/usr/bin/env bash
# Creates .venv (if missing) and installs raykd with its pinned torch. Idempotent: a second run
# only checks that the installed set still matches pyproject.toml. Sourced by test.sh and demo.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.raykd-installed"
want=$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)-$TORCH_SPEC
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing $TORCH_SPEC, then raykd[dev] (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build plus nvidia packages.
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" "$TORCH_SPEC"
  echo "$want" > "$stamp"
else
  echo "[setup] $VENV is up to date"
fi
