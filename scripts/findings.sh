#!/usr/bin/env bash
# Re-run the studies behind docs/findings.md and their reports, and store their rows under docs/findings/.
#   scripts/findings.sh [STUDY ...]    STUDY ∈ baselines_compare baselines_compare_teacher_init causal_compare
#                                      causal_xtok_compare real_teacher_compare (the compare studies: the default) or the
#                                      older hand-set ones: baselines ablation sampling depth projection
#                                      causal_losses causal_divergences causal_ablation causal_topk
# causal_topk also runs scripts/topk_gap.py (the top-k loss against the full-vocabulary one).
# Each study is `python -m raykd.tune --config search_spaces/STUDY.yaml` followed by
# `python -m raykd.report .raykd/experiments/NAME`; its rows (report/results.csv → rows.csv, and a compare
# study's comparison.json) are copied to docs/findings/NAME/, where scripts/check_findings.py re-derives
# every table of docs/findings.md from them. The wall time of each is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(baselines_compare baselines_compare_teacher_init causal_compare
                                      causal_xtok_compare real_teacher_compare)
declare -A against=([baselines]="method=structural" [ablation]="method.params.ablate=none"
                    [sampling]="sampler=domain_aware" [depth]="" [projection]="" [causal_losses]="method=feature_align"
                    [causal_divergences]="" [causal_ablation]="method.params.ablate=none"
                    [causal_topk]="teacher.cache_topk=128")
# the two causal variants run causal_losses.yaml with these settings (its docstring says why)
# (one --set item per line)
declare -A sets=([baselines_compare_teacher_init]="experiment.name=baselines-compare-teacher-init
student.hidden=null"
                 [causal_divergences]="experiment.name=causal-divergences
method.name=kd
experiment.references=false
space={method.params.divergence: {grid: [forward_kl, reverse_kl, jsd, skew_kl]}}"
                 [causal_ablation]="experiment.name=causal-ablation
method.name=feature_align
experiment.references=false
space={method.params.ablate: {grid: [none, alignment, contrastive, logit]}}")
for s in "${studies[@]}"; do
  config=$s name=$s extra=()
  if [ "$s" = baselines_compare_teacher_init ]; then
    config=baselines_compare name=${s//_/-}
    mapfile -t extra <<< "${sets[$s]}"
    extra=(--set "${extra[@]}")
  elif [ -n "${sets[$s]:-}" ]; then
    config=causal_losses name=${s//_/-}
    mapfile -t extra <<< "${sets[$s]}"
    extra=(--set "${extra[@]}")
  elif [[ "$s" == causal_* || "$s" == *_compare ]]; then
    name=${s//_/-}
  fi
  [ -f "search_spaces/$config.yaml" ] || { echo "unknown study $s (search_spaces/$config.yaml missing)" >&2; exit 2; }
  t0=$(date +%s)
  if [ "$s" = real_teacher_compare ]; then
    scripts/real_teacher.sh --fetch-only
  fi
  PYTHONHASHSEED=0 "$PY" -m raykd.tune --config "search_spaces/$config.yaml" "${extra[@]}"
  args=(".raykd/experiments/$name")
  [ -n "${against[$s]:-}" ] && args+=(--against "${against[$s]}")
  "$PY" -m raykd.report "${args[@]}" > /dev/null
  mkdir -p "docs/findings/$name"
  cp ".raykd/experiments/$name/report/results.csv" "docs/findings/$name/rows.csv"
  [ -f ".raykd/experiments/$name/comparison.json" ] && cp ".raykd/experiments/$name/comparison.json" "docs/findings/$name/"
  [ "$s" = causal_topk ] && "$PY" scripts/topk_gap.py | tail -1 > ".raykd/experiments/$name/topk_gap.json"
  echo "[findings] $s: $(( $(date +%s) - t0 )) s · report .raykd/experiments/$name/report/table.md" >&2
done
