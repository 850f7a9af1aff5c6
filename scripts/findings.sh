#!/usr/bin/env bash
# Re-run the studies behind docs/findings.md and their reports (about 2 hours on 2 cores in all).
#   scripts/findings.sh [STUDY ...]    STUDY ∈ baselines ablation sampling depth projection (default: all)
# Each study is `python -m raykd.tune --config search_spaces/STUDY.yaml` followed by
# `python -m raykd.report .raykd/experiments/STUDY`; the wall time of each is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(baselines ablation sampling depth projection)
declare -A against=([baselines]="method=structural" [ablation]="method.params.ablate=none"
                    [sampling]="sampler=domain_aware" [depth]="" [projection]="")
for s in "${studies[@]}"; do
  [ -f "search_spaces/$s.yaml" ] || { echo "unknown study $s (search_spaces/$s.yaml missing)" >&2; exit 2; }
  t0=$(date +%s)
  PYTHONHASHSEED=0 "$PY" -m raykd.tune --config "search_spaces/$s.yaml"
  args=(".raykd/experiments/$s")
  [ -n "${against[$s]:-}" ] && args+=(--against "${against[$s]}")
  "$PY" -m raykd.report "${args[@]}" > /dev/null
  echo "[findings] $s: $(( $(date +%s) - t0 )) s · report .raykd/experiments/$s/report/table.md" >&2
done
