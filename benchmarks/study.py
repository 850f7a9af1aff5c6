"""``bench.py study``: the anchors' 6-trial study — raykd vs Optuna in one process vs HF Trainer + Ray Tune."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, START_ENV, median, start_ray


def run_anchor(anchors: Path, script: str, run_dir: Path, *args: str) -> dict:
    """Run one anchor script in a fresh process (its files under ``run_dir``); returns its JSON line.
    It gets the environment this benchmark started with: the settings raykd gives a Ray it starts
    (``single_machine_ray``, exported by ``start_ray`` into this process) are raykd's, not the anchor's."""
    import subprocess

    env = {**START_ENV, "ANCHOR_RUN_DIR": str(run_dir)}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, str(anchors / script), *args], capture_output=True, text=True, env=env,
                       timeout=900)
    lines = [x for x in p.stdout.splitlines() if x.startswith('{"anchor"')]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"bench study: {script} failed (exit {p.returncode}): {p.stderr[-2000:]}")
    return json.loads(lines[-1])


def raykd_anchor_study(tmp: Path, name: str, local_mode: bool) -> dict:
    """The anchors' 6-trial study through raykd's engine on the running Ray: Tune + OptunaSearch
    (seed 0) over the anchors' space, one trial at a time with 2 torch threads, each trial a TorchTrainer
    (``raykd.ray_layer.trial.trainer_for``: Train local mode in a reused Tune actor, or a one-worker group).
    Study wall = ``Tuner.fit``; per trial: Tune's start → complete and start → first optimizer step."""
    import anchor_trial
    import kd_task as K
    import ray.data
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from raykd import config as C
    from raykd.ray_layer.trial import trial_resources
    from raykd.ray_layer.tuners import tune_checkpoints

    cfg = C.Config()
    # 1 CPU reserved, 2 torch threads (the anchors' 2): raykd leaves a CPU to Ray Data, which hangs without one
    cfg.train = C.TrainConfig(num_workers=1, cpus_per_worker=1, threads_per_worker=2, local_mode=local_mode,
                              checkpoint_keep=1, max_failures=0)

    class Times(tune.Callback):
        def __init__(self):
            self.start, self.end = {}, {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start[trial.trial_id] = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()

    times = Times()
    ray.data.DataContext.get_current().enable_progress_bars = False
    train_ds = anchor_trial.train_dataset()  # the anchors build their data before their timed study, too
    trainable = tune.with_resources(tune.with_parameters(anchor_trial.run_trial, train_cfg=cfg.train,
                                                         train_ds=train_ds),
                                    trial_resources(cfg.train, cfg.train.cpus_per_worker))
    tuner = tune.Tuner(
        trainable,
        param_space={"learning_rate": tune.loguniform(*K.LR_RANGE), "weight_decay": tune.uniform(*K.WD_RANGE)},
        tune_config=tune.TuneConfig(metric="eval_loss", mode="min", num_samples=K.N_TRIALS, max_concurrent_trials=1,
                                    search_alg=OptunaSearch(seed=K.SAMPLER_SEED), reuse_actors=cfg.train.local_mode),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "exp"), verbose=0, callbacks=[times],
                                  checkpoint_config=tune_checkpoints(cfg)))
    t0 = time.time()
    res = tuner.fit()
    study_s = time.time() - t0
    rows = sorted((r for r in res), key=lambda r: times.start[r.metrics["trial_id"]])
    if any(r.error for r in rows) or len(rows) != K.N_TRIALS:
        raise SystemExit(f"bench study: raykd trials failed: {[str(r.error)[:300] for r in rows if r.error]}")
    return {"study_s": study_s, "before_first_trial_s": min(times.start.values()) - t0,
            "after_last_trial_s": t0 + study_s - max(times.end.values()),
            "per_trial_s": [times.end[r.metrics["trial_id"]] - times.start[r.metrics["trial_id"]] for r in rows],
            "slot_to_first_step_s": [r.metrics["t_first_step"] - times.start[r.metrics["trial_id"]] for r in rows],
            "steps_s": [r.metrics["steps_s"] for r in rows],
            "trials": [{"lr": r.config["learning_rate"], "wd": r.config["weight_decay"],
                        "eval_loss": r.metrics["eval_loss"]} for r in rows],
            "best_loss": min(r.metrics["eval_loss"] for r in rows),
            "processes": len({r.metrics["worker_pid"] for r in rows})}

HELP = "the anchors' 6-trial study: raykd vs Optuna in one process vs HF + Ray Tune"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench study --help``)."""
    p.add_argument("--anchors", required=True, help="the folder of the external anchor scripts this benchmark compares against (kd_task.py, "
                        "optuna_inprocess.py, hf_trainer_ray.py): not part of raykd, so always given explicitly")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported; --quick: 1)")
    p.add_argument("--workers", action="store_true", help="also raykd with a Train worker group per trial")
    p.add_argument("--quick", action="store_true")


def bench_study(args) -> dict:
    """The anchors' whole-study figure: the same 6-trial workload (kd_task) as plain Optuna in one
    process, as HF Trainer + Ray Tune (``--reuse-actors``, 2 CPUs per trial) and through raykd
    (local-mode trials in reused actors; ``--workers`` adds the default worker-group trials), plus
    the in-process study again with an idle Ray up. Rounds alternate the order of the sides (one round
    forward, the next reversed); medians reported.
    Starting Ray (``ray.init``, and for raykd's Ray Data's service actors: ``start_ray``) is excluded
    from every study time and reported separately."""
    anchors = Path(args.anchors).resolve()
    if not (anchors / "kd_task.py").exists():
        raise SystemExit(f"bench study: no anchors at {anchors} (kd_task.py, optuna_inprocess.py, hf_trainer_ray.py); "
                         "pass --anchors DIR")
    sys.path[:0] = [str(anchors), str(ROOT / "scripts")]
    rounds = 1 if args.quick else args.rounds
    got: dict[str, list] = {"inprocess": [], "hf_ray": [], "raykd": [], "raykd_workers": [], "idle_ray": []}
    init_s = []
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for i in range(rounds):
            # the sides alternate: round 1 runs them in this order, round 2 in the reverse order, …
            sides = [("inprocess", "Optuna in one process", lambda i: run_anchor(anchors, "optuna_inprocess.py",
                                                                                 tmp / "anchors")),
                     ("hf_ray", "HF Trainer + Ray Tune (reuse_actors)",
                      lambda i: run_anchor(anchors, "hf_trainer_ray.py", tmp / "anchors", "--cpus-per-trial", "2",
                                           "--reuse-actors", "--tag", f"bench_round{i}")),
                     ("raykd", "raykd", lambda i: raykd_anchor_study(tmp, f"local{i}", local_mode=True)),
                     *([("raykd_workers", "raykd with worker groups",
                         lambda i: raykd_anchor_study(tmp, f"workers{i}", local_mode=False))] if args.workers else []),
                     ("idle_ray", "Optuna in one process beside an idle Ray",
                      lambda i: run_anchor(anchors, "optuna_inprocess.py", tmp / "anchors"))]
            ray = None
            for key, label, run in sides if i % 2 == 0 else sides[::-1]:
                on_ray = key in ("raykd", "raykd_workers", "idle_ray")
                if on_ray and ray is None:
                    # idle workers kept only for worker-group trials, as raykd.tune decides
                    ray, s = start_ray(2, paths=(anchors, ROOT / "scripts"), keep_idle_workers=args.workers)
                    init_s.append(s)
                elif not on_ray and ray is not None:
                    ray.shutdown()
                    ray = None
                print(f"[study] round {i + 1}/{rounds}: {label} …", flush=True)
                got[key].append(run(i))
                print(f"[study]   {got[key][-1]['study_s']:.1f} s", flush=True)
            if ray is not None:
                ray.shutdown()
    med = {k: median([r["study_s"] for r in v]) for k, v in got.items() if v}
    ref = got["inprocess"][0]["trials"]
    diff = max(abs(a["eval_loss"] - b["eval_loss"]) for a, b in zip(ref, got["raykd"][0]["trials"]))
    same_params = all(abs(a["lr"] - b["lr"]) < 1e-12 and abs(a["wd"] - b["wd"]) < 1e-12
                      for a, b in zip(ref, got["raykd"][0]["trials"]))
    r0 = got["raykd"][0]
    print(f"study wall (median of {rounds}): Optuna in-process {med['inprocess']:.1f} s | HF Trainer + Ray "
          f"(reuse_actors) {med['hf_ray']:.1f} s | raykd {med['raykd']:.1f} s"
          + (f" | raykd worker groups {med['raykd_workers']:.1f} s" if "raykd_workers" in med else "")
          + f" | in-process beside idle Ray {med['idle_ray']:.1f} s; Ray start (ray.init + Ray Data's service "
          f"actors) {median(init_s):.1f} s (not counted)")
    print(f"raykd trials: start → first step {', '.join(f'{x:.2f}' for x in r0['slot_to_first_step_s'])} s; "
          f"60 steps {', '.join(f'{x:.1f}' for x in r0['steps_s'])} s; {r0['processes']} trial process(es); "
          f"same (lr, wd) as in-process: {same_params}; max |Δ eval loss| vs in-process {diff:.2e}")
    out = {"bench": "study", "vs_inprocess": round(med["raykd"] / med["inprocess"], 3),
           "vs_hf_ray": round(med["raykd"] / med["hf_ray"], 3),
           "inprocess_with_idle_ray": round(med["idle_ray"] / med["inprocess"], 3),
           "raykd_s": round(med["raykd"], 2), "inprocess_s": round(med["inprocess"], 2), "hf_ray_s": round(med["hf_ray"], 2),
           "idle_ray_s": round(med["idle_ray"], 2), "ray_init_s": round(median(init_s), 2), "rounds": rounds,
           "raykd_slot_to_first_step_s": [round(x, 2) for x in r0["slot_to_first_step_s"]],
           "raykd_processes": r0["processes"], "same_params": same_params, "max_eval_loss_diff": diff,
           "best_loss": {"inprocess": got["inprocess"][0]["best_loss"], "raykd": r0["best_loss"],
                         "hf_ray": got["hf_ray"][0]["best_loss"]}, "cores": os.cpu_count()}
    steps = {k: median([median(r["steps_s"]) for r in v]) for k, v in got.items() if v}
    print("60 steps per trial (median): " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
          + f"; raykd ÷ in-process beside the same idle Ray: {med['raykd'] / med['idle_ray']:.2f}")
    out["steps_s"] = {k: round(v, 2) for k, v in steps.items()}
    out["vs_inprocess_with_idle_ray"] = round(med["raykd"] / med["idle_ray"], 3)
    # the same ratios paired within each round (median of the per-round ratios): on a noisy machine the
    # two summaries can fall on either side of a goal, so both are printed
    for key, side in (("vs_inprocess_paired", "inprocess"), ("vs_hf_ray_paired", "hf_ray")):
        out[key] = round(median([a["study_s"] / b["study_s"] for a, b in zip(got["raykd"], got[side])]), 3)
    print(f"paired within rounds (median of per-round ratios): raykd ÷ in-process {out['vs_inprocess_paired']:.3f}, "
          f"raykd ÷ HF + Ray {out['vs_hf_ray_paired']:.3f}")
    if "raykd_workers" in med:
        out["workers_vs_inprocess"] = round(med["raykd_workers"] / med["inprocess"], 3)
        out["raykd_workers_s"] = round(med["raykd_workers"], 2)
    return out
