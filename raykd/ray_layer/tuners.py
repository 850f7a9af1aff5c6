"""R: what every Tuner of a study shares — where experiments go, how many trials run at once, syncing,
checkpoints, the HParams columns and the callbacks — and ``study_tuner``, the one place a study's
Tuners (search, confirm, references, a compare study's tuning and confirmation) are built."""

from __future__ import annotations

import dataclasses
import os

from raykd.errors import RaykdError
from raykd import config as C
from raykd.train.trial_spec import StudyPlan

SYNC_PERIOD_S = 10  # how far a report on a running experiment may lag behind it (remote storage)
# Ray Data's room on a node: CPUs no trial may reserve, so that Ray Data's tasks (each reserving trial.DATA_CPUS,
# a quarter CPU: four at once) can always be scheduled. A scheduling reserve, not a compute one: streaming used
# 0.02 cores on average over a study's trial phases, in every variant measured (docs/benchmarks.md, `bench
# utilisation`), so local-mode trials run one per core (trial_cpus, local_threads) and no core idles for it.
DATA_RESERVE_CPUS = 1.0
REFERENCES_DIR = "references"  # the reference trials of experiment NAME live in NAME/references


def join(storage: str, name: str) -> str:
    """``storage/name`` for a local path or a URI (s3://…)."""
    return storage.rstrip("/") + "/" + name


def tune_domain(spec: dict, grid: bool = False):
    """The Tune domain of one YAML search domain (``{"loguniform": [1e-4, 1e-3]}`` …); with ``grid`` a
    ``choice`` is enumerated (``grid_search``)."""
    from ray import tune

    kind, values = next(iter(spec.items()))
    if grid and kind == "choice":
        kind = "grid"
    make = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v),
            "qrandint": lambda v: tune.qrandint(*v)}
    return make[kind](values)


def hparam_metrics(cfg: C.Config) -> list[str]:
    """The metric columns of the experiment's HParams view (Tune's scalar tags)."""
    from raykd.ray_layer.tblog import TUNE_PREFIX, tb_tag
    from raykd.train.trial_spec import metric_keys

    names = [f"{split}/{m}" for split in ("val", "test") for m in metric_keys(cfg.teacher.family)]
    return [tb_tag(TUNE_PREFIX + n) for n in names + ["best_metric", "train/loss", "tokens_per_s", "step"]]


def trial_cpus(t: C.TrainConfig, cluster_cpus: float) -> float:
    """CPUs each worker of a trial reserves: ``train.cpus_per_worker`` where set, else 1 — except a local-mode
    trial on CPUs, which reserves an equal share of the CPUs besides ``DATA_RESERVE_CPUS`` so that one trial
    runs per whole CPU (0.5 each on 2 CPUs, 0.9375 on 16; rounded down to Ray's 1e-4 resource precision), each
    on one torch thread (``local_threads``). On 2 CPUs that was faster for the whole embedded default than one
    trial on both cores in every round measured (docs/benchmarks.md, ``bench utilisation``). The share is sized
    for one node: ``tune.run_phases`` sets 1 CPU (``tune.with_worker_cpus``) on a cluster it did not start. A
    Ray of under 2 CPUs gets 1 (``tune.check_trial_fits`` refuses it: nothing is left for Ray Data)."""
    if t.cpus_per_worker is not None:
        return t.cpus_per_worker
    if not t.local_mode or t.use_gpu or cluster_cpus < DATA_RESERVE_CPUS + 1:
        from raykd.ray_layer.trial import WORKER_CPUS

        return WORKER_CPUS
    return int((cluster_cpus - DATA_RESERVE_CPUS) / int(cluster_cpus) * 1e4) / 1e4


def max_concurrent(cfg: C.Config, cluster_cpus: float, trials: int | None = None) -> int:
    """Concurrent trials the cluster holds with ``DATA_RESERVE_CPUS`` left for Ray Data (at least 1; at most
    ``search.max_concurrent`` and, where known, the phase's ``trials``)."""
    per_trial = cfg.train.num_workers * trial_cpus(cfg.train, cluster_cpus) + (0 if cfg.train.local_mode else 0.05)
    fit = int((cluster_cpus - DATA_RESERVE_CPUS) / per_trial + 1e-9)
    if cfg.search.max_concurrent:
        fit = min(fit, cfg.search.max_concurrent)
    if trials:
        fit = min(fit, trials)
    return max(1, fit)


def local_threads(cfg: C.Config, cluster_cpus: float, trials: int | None = None) -> int:
    """Torch threads per trial where trials run in Train local mode on CPUs and ``train.threads_per_worker`` is
    not set: the node's CPUs shared among the trials that run at once (``max_concurrent``; ``trials``: how
    many the phase has, where known), Ray Data's reserve included — its streaming of tokenized shards used
    0.02 cores (docs/benchmarks.md, ``bench utilisation``). With ``trial_cpus``'s share that is one thread per
    trial while a phase has a trial for every CPU; a phase of fewer trials, or a study held to fewer at once
    (``search.max_concurrent``, an explicit ``train.cpus_per_worker``), gives each more threads. 0 (the rule
    before: ``cpus_per_worker`` threads) for worker groups, GPUs and an explicit thread count."""
    t = cfg.train
    if not t.local_mode or t.use_gpu or t.threads_per_worker:
        return 0
    return max(1, int(cluster_cpus // max_concurrent(cfg, cluster_cpus, trials)))


def phase_trials(param_space: dict, num_samples: int) -> int:
    """How many trials a Tuner over ``param_space`` runs at most: ``num_samples`` × the size of every
    ``grid_search`` in it (nested ones included), as Tune expands them."""
    n = num_samples
    stack = [param_space]
    while stack:
        d = stack.pop()
        for v in d.values():
            if isinstance(v, dict) and set(v) == {"grid_search"}:
                n *= max(1, len(v["grid_search"]))
            elif isinstance(v, dict):
                stack.append(v)
    return n


def sync_config():
    """Tune's syncing: experiment state every ``SYNC_PERIOD_S``, and each trial actor's own trial
    directory (provenance.json, per-step TensorBoard events) with every checkpoint. The latter is
    what brings those files to storage from an actor Tune reused for a later trial, whose trial
    directory is a working directory that the driver's experiment sync does not cover."""
    from ray import tune

    return tune.SyncConfig(sync_period=SYNC_PERIOD_S, sync_artifacts=True)


def tune_checkpoints(cfg: C.Config):
    """Tune's checkpoint policy: ``train.checkpoint_keep`` per trial. Only local-mode trials report
    checkpoints to Tune; the others keep theirs in their Train run (pruned by Train to the same number)."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=cfg.train.checkpoint_keep)


def study_tuner(cfg: C.Config, plan: StudyPlan, storage: str, name: str, param_space: dict, cluster_cpus: float, *,
                search_alg=None, scheduler=None, num_samples: int = 1, time_budget_s: float | None = None):
    """A Tuner of raykd trials (``trial.run_trial``) for experiment ``storage/name``: trial directories
    named from the trial id, at most ``max_concurrent`` at once (the CPUs shared among as many as the phase
    has: ``local_threads``), actors reused in local mode, the
    study's failure, checkpoint and sync policy, raykd's callbacks (HParams, checkpoint pruning, logs
    before a restart). Metric and mode are the study's lead metric."""
    from ray import tune

    from raykd.ray_layer.pruning import CheckpointPruner
    from raykd.ray_layer.recovery import UploadLogsBeforeRestart
    from raykd.ray_layer.tblog import TrialHParams
    from raykd.ray_layer.trial import run_trial, trial_resources

    trials = phase_trials(param_space, num_samples)
    plan = dataclasses.replace(plan, threads=local_threads(cfg, cluster_cpus, trials))  # a phase of fewer trials
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),  # than CPUs: more threads each
                                   trial_resources(cfg.train, trial_cpus(cfg.train, cluster_cpus)))
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=cfg.experiment.metric, mode=cfg.experiment.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent(cfg, cluster_cpus, trials),
                                    time_budget_s=time_budget_s, reuse_actors=cfg.train.local_mode,
                                    trial_name_creator=lambda t: f"trial_{t.trial_id}",
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
                                  checkpoint_config=tune_checkpoints(cfg), sync_config=sync_config(),
                                  callbacks=[TrialHParams(), CheckpointPruner(), UploadLogsBeforeRestart()], verbose=1))


class StudyInterrupted(RaykdError):
    """A stop signal (Ctrl+C, SIGINT) ended a phase of the study with trials unfinished: the study stops
    there — its later phases never run on half an experiment — and ``--resume`` continues it."""

    exit_code = 130


def fit(tuner, what: str):
    """``tuner.fit()``'s results; StudyInterrupted when a stop signal (SIGINT / Ctrl+C, SIGUSR1) ended it:
    Tune then saves the experiment's state and *returns* — its trials even read as terminated — so a study
    of several phases would go on to the next one on half an experiment.

    How it is seen: Tune installs its own SIGINT handler for the run (in the main thread, unless
    ``TUNE_DISABLE_SIGINT_HANDLER``) and, on a stop signal only, puts back the one it found — here
    ``stopped``, installed just before. Elsewhere, trials left neither finished nor failed tell it."""
    import signal
    import threading

    watch = threading.current_thread() is threading.main_thread() and \
        not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
    if watch:
        previous = signal.getsignal(signal.SIGINT)

        def stopped(sig, frame):  # a second Ctrl+C while Tune saves: what the caller had (KeyboardInterrupt)
            if callable(previous):
                previous(sig, frame)
            else:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, stopped)
    interrupted = False
    try:
        results = tuner.fit()
    finally:
        if watch:
            interrupted = signal.getsignal(signal.SIGINT) is stopped
            signal.signal(signal.SIGINT, previous)
    unfinished = len(results) - results.num_terminated - results.num_errors
    if interrupted or unfinished > 0:
        raise StudyInterrupted(f"{what}: interrupted by a stop signal ({len(results)} trial(s) started); the study "
                               "stopped here (its state is saved: run the same command with --resume)")
    return results


def restore_tuner(cfg: C.Config, plan: StudyPlan, path: str, cluster_cpus: float, trials: int):
    """The Tuner of the interrupted experiment at ``path`` (finished trials are not rerun, errored ones
    resume from their checkpoints), its trials sized for ``cluster_cpus`` and the phase's ``trials`` as
    ``study_tuner`` sized them (Tune restores the phase's concurrency; the torch threads are set here, so a
    resumed trial computes with as many threads as an uninterrupted one)."""
    from ray import tune

    from raykd.ray_layer.trial import run_trial, trial_resources

    plan = dataclasses.replace(plan, threads=local_threads(cfg, cluster_cpus, trials))
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),
                                   trial_resources(cfg.train, trial_cpus(cfg.train, cluster_cpus)))
    return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, restart_errored=False)


def asha(cfg: C.Config):
    """ASHA on optimizer steps, not on reports (every trial also reports at step 0, which is no rung)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=cfg.train.steps,
                         grace_period=cfg.search.scheduler.grace_period * cfg.train.eval_every,
                         reduction_factor=cfg.search.scheduler.reduction_factor)
