#!/usr/bin/env bash
# The GPU checks of the causal family (issue #25 §4), one prepared script, ≤ 5 minutes, no network:
#   1. scripts/bench.py kdloss on CUDA (chunked vs naive KD loss at V = 151,936: peak memory, time) and
#      scripts/bench.py logit_cache --quick on CUDA (online teacher vs top-k cache vs no teacher);
#   2. a 20-step causal trial (tiny LLaMA teacher → 2-layer student, `kd`) with precision auto = bf16,
#      reporting tokens/s and the fraction of the GPU's bf16 peak that the student's training reaches;
#   3. a 20-step encoder trial on the fp16 + GradScaler path (precision auto for masked_lm).
# Usage: scripts/gpu_check.sh [OUTDIR]   (default $OUT or ./gpu_check); PYTHON=… to choose the interpreter
# (it must have this project's requirements and a CUDA build of torch). Record the numbers in
# docs/benchmarks.md. Never a test dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUTDIR=${1:-${OUT:-gpu_check}}
mkdir -p "$OUTDIR"
t0=$(date +%s)
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch " + torch.__version__)
p = torch.cuda.get_device_properties(0)
print(f"[gpu_check] {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}", flush=True)
PYEOF
echo "[gpu_check] 1/3 kdloss and logit_cache on CUDA" >&2
"$PY" scripts/bench.py kdloss --device cuda --rounds 3 | tail -1 | tee "$OUTDIR/kdloss.json"
"$PY" scripts/bench.py logit_cache --quick --device cuda | tail -1 | tee "$OUTDIR/logit_cache.json"
study() {  # NAME CONFIG SETS...
  local name=$1 config=$2; shift 2
  "$PY" -m raykd.tune --config "$config" --storage "$OUTDIR/exp" --name "$name" --set \
    "data.work_dir=$OUTDIR/work" data.synth.dialogs=3000 teacher.adapt.steps=200 train.steps=20 \
    train.eval_every=20 train.eval_pairs=256 train.use_gpu=true train.local_mode=true search.algorithm=grid \
    search.scheduler.type=none 'space={}' experiment.references=false "$@" > "$OUTDIR/$name.log" 2>&1
}
echo "[gpu_check] 2/3 causal trial, bf16" >&2
study causal search_spaces/causal_smoke.yaml method.name=kd train.batch_size=32
echo "[gpu_check] 3/3 encoder trial, fp16 + GradScaler" >&2
study encoder search_spaces/smoke.yaml train.batch_size=64
"$PY" - "$OUTDIR" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16/fp16 FLOP/s
import torch
name = torch.cuda.get_device_properties(0).name
peak = next((v for k, v in PEAK.items() if k in name), None)
for study in ("causal", "encoder"):
    (trial,) = sorted((out / "exp" / study).glob("trial_*"))
    rows = [json.loads(l) for l in (trial / "result.json").read_text().splitlines() if l.strip()]
    final = rows[-1]
    params = final.get("test/params")
    tps = final.get("tokens_per_s")
    # a training step of the student ≈ 6 FLOP per parameter per token (forward + backward), the teacher's
    # forward 2 per parameter per token
    flops = tps * (6 * params + 2 * final.get("test/teacher_params", 0)) if tps and params else None
    line = {"check": study, "gpu": name, "precision": final.get("precision"), "tokens_per_s": tps,
            "student_params": params, "fraction_of_peak": flops / peak if flops and peak else None,
            "train_loss": final.get("train/loss")}
    print(json.dumps(line))
    (out / f"{study}.json").write_text(json.dumps(line))
PYEOF
echo "[gpu_check] done in $(( $(date +%s) - t0 )) s" >&2
