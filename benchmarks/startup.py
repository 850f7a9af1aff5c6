"""``bench.py startup``: trial start → first optimizer step, and an empty TorchTrainer."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, raykd_study, save_teacher, start_ray, workload


def _empty_trainable(config: dict) -> None:
    """Tune function: fit a TorchTrainer whose function returns at once; reports the seconds from this
    trial's start to the worker function running (``to_fn_s``) and to ``fit`` returning (``fit_s``)."""
    import ray.train
    import ray.train.torch
    from ray import tune

    t0 = time.time()
    marker = Path(tune.get_context().get_trial_dir()) / "fn_started"

    def fn(cfg):
        Path(cfg["marker"]).write_text(str(time.time()))

    ray.train.torch.TorchTrainer(fn, train_loop_config={"marker": str(marker)},
                                 scaling_config=ray.train.ScalingConfig(num_workers=1),
                                 run_config=ray.train.RunConfig(name="empty", storage_path=str(marker.parent))).fit()
    t1 = time.time()
    tune.report({"to_fn_s": float(marker.read_text()) - t0, "fit_s": t1 - t0})


def _import_trainable(config: dict) -> None:
    """Tune function: reports when it was entered and when ``raykd.ray_layer.trial`` (what a raykd trial's
    actor imports before it runs) had been imported."""
    from ray import tune

    entered = time.time()
    import raykd.ray_layer.trial  # noqa: F401

    tune.report({"entered": entered, "imported": time.time()})


def tune_actor_seconds(tmp: Path, n: int) -> float:
    """Median seconds from Tune starting a trial (its resources acquired: ``on_trial_start``) to the
    trial's function running with raykd's trial module imported."""
    from ray import tune

    class StartTimes(tune.Callback):
        def __init__(self):
            self.at = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.at[trial.trial_id] = time.time()

    cb = StartTimes()
    res = tune.Tuner(_import_trainable, param_space={"i": tune.grid_search(list(range(n)))},
                     tune_config=tune.TuneConfig(max_concurrent_trials=1),
                     run_config=tune.RunConfig(storage_path=str(tmp / "actor"), name="actor", verbose=0,
                                               callbacks=[cb])).fit()
    return median([r.metrics["imported"] - cb.at[r.metrics["trial_id"]] for r in res])

HELP = "trial start → first optimizer step, and an empty TorchTrainer"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench startup --help``)."""
    p.add_argument("--trials", type=int, default=0, help="sequential trials per kind (default 5, --quick 3)")
    p.add_argument("--quick", action="store_true")


def bench_startup(args) -> dict:
    """Seconds from a trial's start (Tune runs its function: resources free) to its first optimizer
    step, median of ``--trials`` sequential trials (5; ``--quick`` 3), with the breakdown the trial reports; and the same
    floor for an empty TorchTrainer."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        prepared, manifest = workload(tmp, 1500, 64)
        teacher = save_teacher(tmp, manifest, 6, 64, 4, 64)
        ray, init_s = start_ray()
        seeds = list(range(args.trials or (3 if args.quick else 5)))
        trials = raykd_study(tmp, "startup", prepared, teacher, [
            "train.steps=4", "train.eval_every=4", f"experiment.seeds={seeds}", "search.max_concurrent=1",
            "search.max_trials=50"])
        first = [rows[0] for rows in trials]
        keys = ("startup/workers_s", "startup/model_s", "startup/first_batch_s", "startup/first_step_s")
        med = {k: median([r[k] for r in first]) for k in keys}
        local = [rows[0] for rows in raykd_study(tmp, "startup-local", prepared, teacher, [
            "train.steps=4", "train.eval_every=4", f"experiment.seeds={seeds}", "search.max_concurrent=1",
            "search.max_trials=50", "train.local_mode=true"])]
        local.sort(key=lambda r: r["timestamp"])
        local_med = {k: median([r[k] for r in local]) for k in keys}  # the first (fresh actor) included
        empty = tune.Tuner(_empty_trainable, param_space={"i": tune.grid_search(seeds)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=1),
                           run_config=tune.RunConfig(storage_path=str(tmp / "empty"), name="empty", verbose=0)).fit()
        actor_s = tune_actor_seconds(tmp, len(seeds))
        to_fn = median([r.metrics["to_fn_s"] for r in empty])
        fit_s = median([r.metrics["fit_s"] for r in empty])
        ray.shutdown()
    print(f"Tune trial start → trial function running with raykd.ray_layer.trial imported: {actor_s:.1f} s")
    print(f"Ray start (ray.init + Ray Data's service actors) {init_s:.1f} s (not counted). "
          f"raykd trial function → first optimizer step: median "
          f"{med['startup/first_step_s']:.1f} s over {len(first)} trials = workers {med['startup/workers_s']:.1f} + "
          f"model build {med['startup/model_s']:.1f} + data to first batch {med['startup/first_batch_s']:.1f} + first "
          f"step; empty TorchTrainer: {to_fn:.1f} s to its function, {fit_s:.1f} s to fit() returning")
    print(f"train.local_mode (Train local mode in a reused Tune actor): first trial {local[0]['startup/first_step_s']:.1f} s"
          f" (fresh actor: imports); median of all {len(local)} {local_med['startup/first_step_s']:.2f} s = data "
          f"{local_med['startup/workers_s']:.2f} + model build {local_med['startup/model_s']:.2f} + first batch "
          f"{local_med['startup/first_batch_s']:.2f} + first step; {len({r['worker_pid'] for r in local})} process(es)")
    return {"bench": "startup", "median_s": round(med["startup/first_step_s"], 2),
            "local_median_s": round(local_med["startup/first_step_s"], 2),
            "local_first_s": round(local[0]["startup/first_step_s"], 2),
            "local_data_s": round(local_med["startup/workers_s"], 2), "local_model_s": round(local_med["startup/model_s"], 2),
            "local_first_batch_s": round(local_med["startup/first_batch_s"], 2),
            "workers_s": round(med["startup/workers_s"], 2), "model_s": round(med["startup/model_s"], 2),
            "first_batch_s": round(med["startup/first_batch_s"], 2), "empty_trainer_s": round(to_fn, 2),
            "empty_trainer_fit_s": round(fit_s, 2), "tune_actor_s": round(actor_s, 2),
            "from_tune_start_s": round(actor_s + med["startup/first_step_s"], 2), "ray_init_s": round(init_s, 2), "trials": len(first),
            "cores": os.cpu_count()}
