"""``bench.py search``: ASHA+TPE vs the full grid: compute to within 1 point of the grid's best."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import BENCH_BASE, ROOT, start_ray


def _trial_rows(exp: Path) -> list[list[dict]]:
    out = []
    for d in sorted(exp.glob("trial_*")):
        f = d / "result.json"
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
        if rows:
            out.append(rows)
    return out

HELP = "ASHA+TPE vs the full grid: compute to within 1 point of the grid's best"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench search --help``)."""
    p.add_argument("--samples", type=int, default=9, help="search trials")
    p.add_argument("--within", type=float, default=1.0, help="points of val/semantic_alignment (0-100)")
    p.add_argument("--quick", action="store_true")


def bench_search(args) -> dict:
    """ASHA + Optuna TPE against the full grid on the same small space (depth × projection_dim):
    the trial-steps the search spends, in the order its evaluations happened, until one reaches
    within ``--within`` points of the grid's best ``val/semantic_alignment``, as a fraction of the
    grid's total trial-steps."""
    from raykd.ray_layer.tune import main as tune_main

    metric = "val/semantic_alignment"
    steps, every = (60, 20) if args.quick else (120, 20)
    space = "space={depth: {choice: [1, 2, 3]}, projection_dim: {choice: [16, 32, 64]}}"
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        ray, _ = start_ray()
        common = ["--config", str(ROOT / "search_spaces" / "smoke.yaml"), "--storage", str(tmp / "exp"), "--set",
                  f"data.work_dir={tmp / 'work'}", f"train.steps={steps}", f"train.eval_every={every}", space,
                  "teacher.cache=true", "search.max_trials=20", *BENCH_BASE, "train.local_mode=true"]
        t = time.perf_counter()
        if tune_main(common[:4] + ["--name", "grid"] + common[4:] + ["search.algorithm=grid"]) != 0:
            raise SystemExit("bench: the grid failed")
        grid_s = time.perf_counter() - t
        t = time.perf_counter()
        if tune_main(common[:4] + ["--name", "tpe"] + common[4:] + [f"search.num_samples={args.samples}"]) != 0:
            raise SystemExit("bench: the search failed")
        tpe_s = time.perf_counter() - t
        ray.shutdown()
        grid, tpe = _trial_rows(tmp / "exp" / "grid"), _trial_rows(tmp / "exp" / "tpe")
    grid_best = max(r[metric] for rows in grid for r in rows)
    grid_steps = sum(rows[-1]["step"] for rows in grid)
    events = sorted((r["timestamp"], r["step"] - (rows[i - 1]["step"] if i else 0), r[metric])
                    for rows in tpe for i, r in enumerate(rows))
    spent, reached = 0, None
    for _, d_steps, value in events:
        spent += d_steps
        if value >= grid_best - args.within:
            reached = spent
            break
    tpe_steps = sum(rows[-1]["step"] for rows in tpe)
    frac = reached / grid_steps if reached is not None else None
    print(f"grid: {len(grid)} trials, {grid_steps} trial-steps, best {metric} {grid_best:.3f} ({grid_s:.0f} s); "
          f"ASHA+TPE: {len(tpe)} trials, {tpe_steps} trial-steps ({tpe_s:.0f} s), within {args.within} point(s) "
          + (f"after {reached} trial-steps = {frac:.2f} of the grid's" if reached else "never"))
    return {"bench": "search", "compute_fraction": round(frac, 3) if frac is not None else None,
            "grid_best": round(grid_best, 3), "grid_trial_steps": grid_steps, "search_trial_steps": tpe_steps,
            "steps_to_within": reached, "within": args.within, "grid_trials": len(grid), "search_trials": len(tpe),
            "grid_s": round(grid_s, 1), "search_s": round(tpe_s, 1)}
