"""Load test: N tiny trials queued on this machine (Optuna + ASHA), watching the memory of the Ray
processes, the object store and checkpoint pruning. Prints the figures and one JSON line.

    python scripts/load_test.py [--trials 50] [--out DIR] [--mode local|workers]

``--mode local`` (the default for one-worker trials on a Ray raykd starts): trials run in Train local
mode inside Tune actors that Tune reuses; the figures add each reused actor's resident memory after
the 1st, 25th and 50th finished trial (``worker_rss_mib`` of the trial's last report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_study_args(out: Path, trials: int, name: str = "load", local_mode: bool = False) -> list[str]:
    """CLI arguments of the load study: ``trials`` tiny trials (2 run at a time on 2 CPUs), ASHA on."""
    return ["--config", str(ROOT / "search_spaces" / "smoke.yaml"), "--storage", str(out / "exp"), "--name", name,
            "--set", f"data.work_dir={out / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=30",
            "train.eval_pairs=64", f"search.num_samples={trials}", f"search.max_trials={trials}", "train.steps=12",
            "train.eval_every=3", "train.cpus_per_worker=0.4", "train.checkpoint_keep=1",
            "search.scheduler.grace_period=1", "search.scheduler.reduction_factor=2", "experiment.references=false",
            f"train.local_mode={str(local_mode).lower()}", "student.hidden=null", "search.confirm.top_k=0",
            "space={depth: {choice: [1, 2, 3]}, projection_dim: {choice: [32, 64]}, lr: {loguniform: [1.0e-4, 3.0e-3]}}"]


def actor_rss_by_trial(records, at=(1, 25, 50)) -> dict:
    """``{"rss_mib_after_trial_N": MiB}``: the resident memory of the actor that ran the N-th trial to
    finish (trials ordered by their last report), as that trial last reported it."""
    last = []
    for r in records:
        path = Path(r.path, "result.json")
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        rows = [x for x in rows if x.get("worker_rss_mib") is not None]
        if rows:
            last.append(rows[-1])
    last.sort(key=lambda x: x.get("timestamp", 0))
    out = {f"rss_mib_after_trial_{n}": round(last[n - 1]["worker_rss_mib"], 1) for n in at if n <= len(last)}
    out["actors"] = len({x.get("worker_pid") for x in last})
    return out


def run(trials: int, out: Path, local_mode: bool = False) -> dict:
    """Run the load study on a Ray started here; returns its figures."""
    import ray

    from raykd.ray_layer.monitoring import ResourceWatch
    from raykd.results.report import load_experiment
    from raykd.ray_layer.cluster import start_local_ray
    from raykd.ray_layer.tune import main as tune_main

    start_local_ray(2, str(ROOT))
    try:
        t0 = time.monotonic()
        with ResourceWatch(period_s=2.0) as watch:
            watch.sample()
            idle_rss = watch.peak_rss
            rc = tune_main(load_study_args(out, trials, local_mode=local_mode))
        wall = time.monotonic() - t0
        store_total = int(ray.cluster_resources().get("object_store_memory", 0))
    finally:
        ray.shutdown()
    exp = out / "exp" / "load"
    records = load_experiment(exp)
    ckpts = [len([p for g in ("train/*/checkpoint_*", "checkpoint_*") for p in Path(r.path).glob(g) if p.is_dir()])
             for r in records]
    statuses = {s: sum(r.status == s for r in records) for s in ("finished", "stopped early", "error", "unfinished")}
    return {"bench": "load", "trials": len(records), "exit_code": rc, **{k.replace(" ", "_"): v for k, v in statuses.items()},
            "wall_s": round(wall, 1), "trials_per_min": round(len(records) / wall * 60, 2),
            "idle_rss_gib": round(idle_rss / 2**30, 2), "peak_rss_gib": round(watch.peak_rss / 2**30, 2),
            "peak_object_store_mib": round(watch.peak_object_store / 2**20, 1),
            "object_store_capacity_mib": round(store_total / 2**20, 1),
            "max_checkpoints_per_trial": max(ckpts or [0]), "samples": watch.samples, "local_mode": local_mode,
            **actor_rss_by_trial(records)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / ".raykd" / "load"))
    ap.add_argument("--mode", choices=("local", "workers"), default="local",
                    help="Train local mode in reused Tune actors (default) or a worker group per trial")
    args = ap.parse_args()
    out = Path(args.out)
    if (out / "exp" / "load").exists():
        import shutil

        shutil.rmtree(out / "exp" / "load")
    r = run(args.trials, out, local_mode=args.mode == "local")
    print(f"{r['trials']} trials in {r['wall_s']} s ({r['trials_per_min']}/min): {r['finished']} finished, "
          f"{r['stopped_early']} stopped early by ASHA, {r['error']} errors, {r['unfinished']} unfinished")
    print(f"Ray processes RSS: idle {r['idle_rss_gib']} GiB, peak {r['peak_rss_gib']} GiB; object store peak "
          f"{r['peak_object_store_mib']} MiB of {r['object_store_capacity_mib']} MiB; at most "
          f"{r['max_checkpoints_per_trial']} checkpoint(s) kept per trial")
    rss = {k: v for k, v in r.items() if k.startswith("rss_mib_after_trial_")}
    if rss:
        print(f"trial actors: {r['actors']} process(es); RSS of the actor that ran trial "
              + ", ".join(f"{k.rsplit('_', 1)[1]}: {v} MiB" for k, v in rss.items()))
    print(json.dumps(r))
    ok = r["exit_code"] == 0 and r["error"] == 0 and r["unfinished"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
