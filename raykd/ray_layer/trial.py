"""R: one trial = one Ray Train ``TorchTrainer`` run inside a Tune function trainable.

``run_trial`` is the Tune function trainable: it resolves the trial's config, builds its datasets and
fits a ``TorchTrainer`` whose workers run ``loop.train_fn_per_worker``.

With ``train.local_mode`` the trainer runs in Ray Train's local mode (``num_workers=0``): the one
worker is the trial's own Tune actor, which Tune reuses for the next trial (``reuse_actors``), so a
trial starts without a Train controller, a worker group or fresh imports. Reports and checkpoints
then go straight to Tune (``ray.tune.report``) and a failed trial is restarted by Tune from its last
checkpoint (``ray.tune.get_checkpoint``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raykd import config as C
from raykd.data.shards import load_manifest, special_token_ids
from raykd.ray_layer.cache.builder import structural_layers
from raykd.ray_layer.cache.masked_lm import cache_use, cached_dataset
from raykd.ray_layer.cache.causal_lm import causal_cached_dataset, trial_causal_cache
from raykd.ray_layer.loop import train_fn_per_worker
from raykd.ray_layer.stream import read_parquet, split_datasets
from raykd.ray_layer.tblog import StepScalars
from raykd.train.trial_spec import REFERENCE_KEY, SCORED_SAMPLERS, StudyPlan, method_kwargs, trial_config

DATA_CPUS = 0.25  # what each Ray Data read / map task reserves: never a whole CPU, so data always runs
TRIAL_DRIVER_CPUS = 0.05
WORKER_CPUS = 1.0  # what a worker-group worker reserves where train.cpus_per_worker is null


def trial_resources(t: C.TrainConfig, worker_cpus: float) -> dict:
    """Resources of a trial's Tune actor: in local mode the whole worker, ``worker_cpus`` CPUs
    (``tuners.trial_cpus``; it trains there), else a sliver for the function that fits the TorchTrainer
    (its workers reserve their own)."""
    if t.local_mode:
        return {"CPU": worker_cpus, **({"GPU": 1} if t.use_gpu else {})}
    return {"CPU": TRIAL_DRIVER_CPUS}



# ------------------------------------------------------------------------------------------ Tune side
def provenance(cfg: C.Config, plan: StudyPlan, trial_id: str) -> dict:
    """What produced a trial: versions, git SHA, the resolved config, hashes of data / teacher / scores."""
    import transformers

    sha = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    from raykd._version import __version__

    return {"trial_id": trial_id, "raykd": __version__, "git_sha": sha, "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
            "config": C.to_dict(cfg), "seed": cfg.experiment.seeds[0], "data_key": plan.data_key,
            "teacher_key": plan.teacher_key, "teacher": plan.teacher, "prepared": plan.prepared,
            "scores": plan.scores, "teacher_view": plan.teacher_view}


def trial_cache(cfg: C.Config, plan: StudyPlan) -> dict | None:
    """``{"layers", "hidden"}`` of the teacher cache this trial reads (causal: ``trial_causal_cache``),
    or None when it runs the teacher online (no cache in the plan, or its method / sampler cannot use
    one: ``cache_use``)."""
    c = plan.cache
    if c and c.get("kind") == "topk":
        return trial_causal_cache(cfg, c)
    if not c or cache_use(cfg.method.name, cfg.sampler.name) is not None:
        return None
    return {"layers": structural_layers(c["teacher_layers"], cfg.student.layers, cfg.method.depth),
            "hidden": c["hidden"]}


def run_trial(params: dict, plan: StudyPlan) -> None:
    """Tune function trainable: resolve this trial's config, build its datasets and fit its TorchTrainer.
    Metrics reach Tune at every evaluation through ``TuneReportCallback`` (``LocalReporter`` in local mode)."""
    t_trial_start = time.time()
    ctx = tune.get_context()
    trial_id, trial_dir = ctx.get_trial_id(), ctx.get_trial_dir()
    C.import_plugins(plan.base.get("plugins", []), "<trial>", plan.plugin_paths)
    cfg = trial_config(plan.base, params)
    method_kwargs(cfg, 1)  # a bad method setting fails here, before any worker starts (and is not retried there)
    Path(trial_dir, "provenance.json").write_text(json.dumps(provenance(cfg, plan, trial_id), indent=1))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    cache = trial_cache(cfg, plan)
    if cache is not None and cache.get("kind") == "topk":
        ds = causal_cached_dataset(plan.cache["dir"], cache["layers"], bool(cache["topk"]), num_cpus=DATA_CPUS)
    elif cache is not None:
        ds = cached_dataset(plan.cache["dir"], cache["layers"], num_cpus=DATA_CPUS)
    elif plan.teacher_view:  # both tokenizations of every train pair (data.teacher_view)
        from raykd.data.teacher_view import PAIRED_COLUMNS, paired_paths

        view = plan.teacher_view["prepared"]
        ds = read_parquet(paired_paths(view, load_manifest(view)), DATA_CPUS).select_columns(list(PAIRED_COLUMNS))
    else:
        ds = split_datasets(plan.prepared, splits=("train",), num_cpus=DATA_CPUS)["train"]
    from ray.data import RandomSeedConfig

    # one global shuffle per epoch, reproducible under the trial seed and different each epoch: pairs of
    # one dialogue (adjacent in the shards) no longer share batches as false in-batch negatives
    ds = ds.random_shuffle(seed=RandomSeedConfig(seed=cfg.experiment.seeds[0], reseed_after_execution=True),
                           num_cpus=DATA_CPUS)
    sampler = None
    if cfg.sampler.name != "uniform":  # runs on the worker, which knows the epoch (see sampled_batches)
        if cfg.sampler.name in SCORED_SAMPLERS and not plan.scores:
            raise RuntimeError(f"sampler {cfg.sampler.name}: the study has no teacher scores (scores/)")
        manifest = load_manifest(plan.prepared)
        sampler = {"name": cfg.sampler.name,
                   "params": {"mask_id": manifest["tokenizer"]["mask_token_id"], "batch_size": cfg.train.batch_size,
                              "special_ids": special_token_ids(plan.prepared, manifest), **cfg.sampler.params}}
    fault_dir = marker_dir(plan, ctx.get_experiment_name(), trial_dir) if cfg.train.fault else None
    loop_config = {"cfg": C.to_dict(cfg), "prepared": plan.prepared, "teacher": plan.teacher,
                   "teacher_key": plan.teacher_key,
                   "teacher_load": plan.teacher_load, "cache": cache, "metric": cfg.experiment.metric,
                   "mode": cfg.experiment.mode, "trial_id": trial_id, "trial_dir": trial_dir,
                   "t_trial_start": t_trial_start, "local_mode": cfg.train.local_mode, "fault_dir": fault_dir,
                   "reference": bool(params.get(REFERENCE_KEY)), "sampler": sampler, "scores": plan.scores,
                   "role": "reference" if params.get(REFERENCE_KEY) else "confirm" if "confirm" in params else "search",
                   "plugin_paths": plan.plugin_paths, "template": plan.template, "threads": plan.threads,
                   "teacher_view": plan.teacher_view, "received_step": received_step(ctx)}
    trainer_for(train_fn_per_worker, loop_config, cfg.train, trial_id, trial_dir, {"train": ds}).fit()


def received_step(ctx) -> int:
    """The last step this trial's ``result.json`` in the experiment's storage records — what Tune had received
    from it before this attempt (a resume after the driver was stopped or killed) — or -1 (none, unreadable)."""
    try:
        storage = ctx.get_storage()
        with storage.storage_filesystem.open_input_stream(storage.trial_fs_path + "/result.json") as f:
            text = f.read().decode("utf-8", errors="replace")
    except (OSError, RuntimeError, AttributeError):  # no file yet; no storage context (outside Tune)
        return -1
    steps = []
    for line in text.splitlines():
        try:
            steps.append(int(json.loads(line).get("step", -1)))
        except (ValueError, TypeError, AttributeError):  # a line cut off by the kill
            continue
    return max(steps, default=-1)


def marker_dir(plan: StudyPlan, experiment: str, trial_dir: str) -> str:
    """Where a trial's fault markers live: its directory in the experiment's storage when that is a
    local path (the same for every attempt), else its Tune trial directory. Tune gives an attempt that
    runs in a reused actor a different local trial directory than one in a fresh actor."""
    storage = plan.storage
    if not storage or "://" in storage:
        return trial_dir
    d = Path(storage, experiment, Path(trial_dir).name)
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def trainer_for(train_fn, loop_config: dict, t: C.TrainConfig, trial_id: str, trial_dir: str, datasets: dict):
    """The ``TorchTrainer`` of one trial: ``t.num_workers`` workers (DDP) with Train's and Tune's
    failure handling, its run stored under ``trial_dir/train``; in ``t.local_mode``, Train's local
    mode (``num_workers=0``: ``train_fn`` runs in this Tune actor and reports through ``LocalReporter``)."""
    if t.local_mode:  # RAY: Train's local mode, the worker is this Tune actor
        scaling = ray.train.ScalingConfig(num_workers=0)
        # local mode runs no Train callbacks; a TuneReportCallback would only start a queue actor that
        # Tune's session polls every 0.2 s for the whole trial (CPU taken from the training)
        callbacks = []
    else:
        scaling = ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                          resources_per_worker={"CPU": t.cpus_per_worker or WORKER_CPUS, **({"GPU": 1} if t.use_gpu else {})})
        callbacks = [StepScalars(trial_dir), TuneReportCallback()]
    return ray.train.torch.TorchTrainer(
        train_fn, train_loop_config=loop_config, scaling_config=scaling, datasets=datasets,
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=str(Path(trial_dir) / "train"), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoint_keep)))
