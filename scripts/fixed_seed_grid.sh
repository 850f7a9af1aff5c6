#!/usr/bin/env bash
# A refactor's behaviour check: the fixed-seed grids of both model families, small and fast, and a
# fingerprint of everything they reported. Run it on the commit before and after a refactor (from each
# checkout) and compare the two files: a behaviour-preserving change gives identical fingerprints.
#   scripts/fixed_seed_grid.sh OUT.json [WORK_DIR]
# Each grid runs on a local Ray with `train.threads_per_worker=1` pinned (float results depend on the
# thread count), one trial at a time, its references included; the fingerprint lists every trial's
# configuration and every reported value of every row of its result.json (repr of the float: bit-exact),
# references too. Wall time ~6 min on 2 cores (the two teachers adapted on first use, cached in WORK_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/fixed_seed_grid.sh OUT.json [WORK_DIR]}
WORK=${2:-.raykd/fixed-seed-grid}
PY=${PYTHON:-.venv/bin/python}
STORE=$(mktemp -d /tmp/raykd-grid-XXXX)
common=(train.threads_per_worker=1 search.algorithm=grid search.max_concurrent=1 experiment.seeds=[0,1]
        train.eval_every=10 train.steps=20 "data.work_dir=$WORK" data.synth.dialogs=1200)
PYTHONHASHSEED=0 "$PY" -m raykd.tune --config search_spaces/smoke.yaml --storage "$STORE" --name masked \
  --set "${common[@]}" teacher.adapt.steps=40 train.eval_pairs=128 search.confirm.top_k=0 \
  "space={depth: {grid: [1, 3]}, sampler: {grid: [uniform, entropy]}}" >/dev/null
PYTHONHASHSEED=0 "$PY" -m raykd.tune --config search_spaces/causal_smoke.yaml --storage "$STORE" --name causal \
  --set "${common[@]}" teacher.adapt.steps=60 train.eval_pairs=64 \
  "space={method.params.divergence: {grid: [forward_kl, jsd]}, method.params.temperature: {grid: [1.0, 2.0]}}" >/dev/null
"$PY" - "$STORE" "$OUT" <<'EOF'
import json, sys
from pathlib import Path

store, out = Path(sys.argv[1]), Path(sys.argv[2])
# what differs run to run by nature: clocks, speeds, process ids (every other number must be identical)
TIMING = ("time", "timestamp", "date", "pid", "rss", "tokens_per_s", "speedup", "latency", "decode", "iterations_since_restore",
          "training_iteration")
rows = {}
for f in sorted(store.rglob("result.json")):
    trial = f.parent
    cfg = json.loads((trial / "params.json").read_text()) if (trial / "params.json").exists() else {}
    key = f"{trial.parent.relative_to(store)}::{json.dumps(cfg, sort_keys=True)}"
    values = []
    for line in f.read_text().splitlines():
        r = json.loads(line)
        values.append({k: repr(v) for k, v in sorted(r.items())
                       if isinstance(v, (int, float)) and not any(s in k for s in TIMING) and not k.endswith("_s")})
    rows[key] = values
out.write_text(json.dumps(rows, indent=0, sort_keys=True))
print(f"[grid] {len(rows)} trials fingerprinted → {out}")
EOF
rm -rf "$STORE"
