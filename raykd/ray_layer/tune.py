"""R: ``python -m raykd.tune`` — a distillation study: Ray Tune (Optuna TPE + ASHA, or a grid) over
trials that are Ray Train runs. With no arguments it runs ``search_spaces/smoke.yaml`` on a local Ray.

    python -m raykd.tune [--config FILE] [--address auto|HOST:PORT] [--storage PATH] [--name NAME]
                         [--resume] [--dry-run] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from raykd import config as C
from raykd.config.tokenizers import tokenizer_mismatch
from raykd.train.trial_spec import StudyPlan
from raykd.train.budget import budget_text, memory_text
from raykd.errors import RaykdError
from raykd.models.families.spec import family_spec
from raykd.ray_layer.cluster import init_ray
from raykd.ray_layer.phases import PhaseClock
from raykd.ray_layer.inputs import complete_inputs, generated_prepared_dir, log, prepare_inputs, teacher_cache_for
from raykd.ray_layer.tuners import (DATA_RESERVE_CPUS, REFERENCES_DIR, fit, hparam_metrics, join, local_threads,  # noqa: F401
                                    asha, max_concurrent, phase_trials, study_tuner, trial_cpus, tune_domain)
from raykd.ray_layer.references import reference_lines, reference_space, reference_tuner  # noqa: F401

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


# ------------------------------------------------------------------------------------------ search
def param_space(cfg: C.Config) -> dict:
    """Tune's param space from ``space`` (+ ``seed``: a grid over the seeds for grid/random searches,
    the first seed for Optuna — one seed per configuration)."""
    from ray import tune

    space = {name: tune_domain(spec, grid=cfg.search.algorithm == "grid") for name, spec in cfg.space.items()}
    seeds = cfg.experiment.seeds
    if cfg.search.algorithm == "optuna" or len(seeds) == 1:
        space["seed"] = seeds[0]
    else:
        space["seed"] = tune.grid_search(list(seeds))
    return space


def check_trial_fits(cfg: C.Config, cluster_cpus: float) -> None:
    """Refuse a trial that needs more CPUs than the local cluster has besides ``DATA_RESERVE_CPUS``:
    it would never be scheduled (worker groups) or would starve its own Ray Data input (local mode)."""
    t = cfg.train
    per_worker = trial_cpus(t, cluster_cpus)
    need = t.num_workers * per_worker
    if need > cluster_cpus - DATA_RESERVE_CPUS + 1e-9:
        raise RaykdError(
            f"train.cpus_per_worker: a trial needs {t.num_workers} × {per_worker:g} = {need:g} CPUs, but this "
            f"Ray has {cluster_cpus:g} and keeps {DATA_RESERVE_CPUS:g} for Ray Data; use at most "
            f"{max(cluster_cpus - DATA_RESERVE_CPUS, 0):g} CPUs per trial (torch threads: train.threads_per_worker)")


def cpus_text(t: C.TrainConfig) -> str:
    """What one worker of a trial reserves, as the plan says it before Ray's CPUs are known."""
    if t.cpus_per_worker is not None:
        return f"{t.cpus_per_worker:g} CPU"
    if t.local_mode and not t.use_gpu:
        return (f"a share of the CPUs: one trial per CPU, {DATA_RESERVE_CPUS:g} CPU kept for Ray Data (on one local "
                "node; 1 CPU on --address or several nodes)")
    return "1 CPU"


def plan_text(cfg: C.Config, storage: str, name: str) -> str:
    """The --dry-run plan: trials × steps, resources per trial, compute, directories."""
    n = C.planned_trials(cfg)
    t = cfg.train
    lines = [
        f"experiment {name}: {n} trials ({cfg.search.algorithm}"
        f"{', ASHA early stopping' if cfg.search.scheduler.type == 'asha' and cfg.search.algorithm != 'grid' else ''})"
        f" × {t.steps} steps × batch {t.batch_size} × accumulation {t.grad_accum}",
        f"per trial: {t.num_workers} worker(s) × {cpus_text(t)}{' + 1 GPU' if t.use_gpu else ''}"
        f"{' in the Tune actor (Ray Train local mode, actors reused)' if t.local_mode else ''}, "
        f"torch threads {t.threads_per_worker or ('the node’s CPUs ÷ concurrent trials' if t.local_mode and not t.use_gpu else max(1, int(t.cpus_per_worker or 1)))}, "
        f"precision {t.precision}, evaluation every {t.eval_every} steps on {t.eval_pairs} validation pairs",
        f"compute at most: {n * t.steps:,} trial-steps = {n * t.steps * t.batch_size * t.grad_accum:,} training pairs"
        + (f"; confirm: top {cfg.search.confirm.top_k} × {len(cfg.search.confirm.seeds)} seeds"
           if cfg.search.confirm.top_k and cfg.compare is None else ""),
        f"teacher: {cfg.teacher.spec or 'built from config ' + str(C.to_dict(cfg.teacher.shape))}"
        f"{', domain-adapted' if cfg.teacher.adapt else ''} → student {cfg.student.layers} layers; "
        + (f"teacher cache {cfg.teacher.cache}"
           + (f" (top-{cfg.teacher.cache_topk} + tail bucket)" if cfg.teacher.cache in ("logits", "both") else "")
           + f" (limit {cfg.teacher.cache_max_gb:g} GB)" if cfg.teacher.cache != "none"
           else "teacher runs online"),
        f"data: {cfg.data.prepared or f'generated corpus ({cfg.data.synth.dialogs} dialogues)'}, work dir "
        f"{Path(cfg.data.work_dir).absolute()}; tokenizer {cfg.data.tokenizer}"
        + (f" (the student's), the teacher's own {cfg.teacher.tokenizer}: a teacher view of the data, both "
           "tokenizations per pair" if tokenizer_mismatch(cfg) else ""),
        f"searched: {', '.join(cfg.space) or '(nothing)'}; metric {cfg.experiment.metric} ({cfg.experiment.mode})",
        "references: " + (f"no_distill × {len(set(cfg.experiment.seeds) | set(cfg.search.confirm.seeds))} seed(s) "
                          "(+ init and teacher from their step 0)" if cfg.experiment.references else "off"),
        f"results: {join(storage, name)}",
        *compare_plan_lines(cfg),
        budget_text(cfg, *train_split_size(cfg)),
        memory_text(cfg),
    ]
    return "\n".join(lines)


def compare_plan_lines(cfg: C.Config) -> list[str]:
    """The --dry-run lines of a compare study: trials per method and in total, the declared family."""
    if cfg.compare is None:
        return []
    from raykd.config.contenders import contender_space

    c, seeds = cfg.compare, cfg.experiment.seeds
    contenders = C.compare_contenders(cfg)
    runs = len(contenders) + (1 if cfg.experiment.references else 0)
    lines = [f"compare: {len(contenders)} method(s){' + the reference' if cfg.experiment.references else ''}, each "
             f"{c.tune.trials} tuning trial(s) ({cfg.search.algorithm}, {c.tune.scheduler or cfg.search.scheduler.type}, "
             f"seed {C.compare_tuning_seed(cfg)}) + its best on {len(seeds)} seed(s) {seeds} = "
             f"{runs * c.tune.trials} + {runs * len(seeds)} = {C.planned_trials(cfg)} trials in total "
             f"(search.num_samples and search.confirm are not used)",
             f"declared family: {c.against} against each other method on {', '.join(c.metrics)} (Holm over "
             f"{(len(contenders) - 1) * len(c.metrics)} tests); everything else is reported as exploratory"]
    for k in contenders:
        tuned = [key.removeprefix("method.params.") for key in contender_space(k, cfg.space)]
        fixed = ", ".join(f"{a}={b}" for a, b in k.params.items())
        lines.append(f"  {k.label}: tunes {', '.join(tuned)}" + (f"; fixed {fixed}" if fixed else ""))
    return lines


def train_split_size(cfg: C.Config) -> tuple[int | None, str]:
    """(training pairs, where that figure comes from): the prepared manifest when it is readable here
    (``data.prepared``, or the generated corpus already prepared in the work dir), else
    ``data.train_pairs`` as declared, else (None, "")."""
    from raykd.data.shards import load_manifest

    d = cfg.data
    where = Path(d.prepared) if d.prepared else generated_prepared_dir(d)
    try:
        return int(load_manifest(str(where))["splits"]["train"]["rows"]), f"{where}/manifest.json"
    except Exception:  # not prepared here (a cluster path, or not generated yet)
        return (d.train_pairs, "data.train_pairs, as declared") if d.train_pairs else (None, "")


def set_aside_previous(storage: str, name: str) -> list[str]:
    """A fresh study (not ``--resume``) never mixes with an earlier run of the same name: the local
    experiment directories ``NAME`` and ``NAME-confirm`` that already hold something are renamed to
    ``NAME.<UTC time>`` / ``NAME-confirm.<UTC time>`` (nothing is deleted). Remote storage is left
    alone. Returns the new paths."""
    if "://" in storage:
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for exp in (name, f"{name}-confirm"):
        path = Path(storage) / exp
        if path.is_dir() and any(path.iterdir()):
            target = path.with_name(f"{exp}.{stamp}")
            path.rename(target)
            moved.append(str(target))
    return moved


def search_samples(cfg: C.Config) -> int:
    """The search's ``num_samples`` (a grid: 1, its trials are the grid's points)."""
    return 1 if cfg.search.algorithm == "grid" else cfg.search.num_samples


def build_tuner(cfg: C.Config, plan: StudyPlan, storage: str, name: str, cluster_cpus: float, resume: bool):
    """The Tuner for this study (restored from ``storage/name`` with ``resume``)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from raykd.ray_layer.tblog import write_experiment_summary
    from raykd.ray_layer.tuners import restore_tuner
    from raykd.train.trial_spec import REFERENCE_KEY

    path = join(storage, name)
    # one HParams table for the trials and the reference trials under references/ (hparam `reference`)
    write_experiment_summary(path, {**cfg.space, **({REFERENCE_KEY: {"choice": [True]}} if cfg.experiment.references
                                                     else {})}, hparam_metrics(cfg))
    if resume:
        if not tune.Tuner.can_restore(path):
            raise RaykdError(f"--resume: {path} holds no experiment to resume")
        return restore_tuner(cfg, plan, path, cluster_cpus, phase_trials(param_space(cfg), search_samples(cfg)))
    search_alg = None
    if cfg.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=cfg.experiment.metric, mode=cfg.experiment.mode, seed=cfg.experiment.seeds[0])
    early = cfg.search.scheduler.type == "asha" and cfg.search.algorithm != "grid"
    scheduler = asha(cfg) if early else FIFOScheduler()
    return study_tuner(cfg, plan, storage, name, param_space(cfg), cluster_cpus, search_alg=search_alg,
                       scheduler=scheduler, num_samples=search_samples(cfg),
                       time_budget_s=cfg.search.time_budget_s)


def confirm_tuner(cfg: C.Config, plan: StudyPlan, results, storage: str, name: str, cluster_cpus: float):
    """The confirm phase: the search's top-k configurations re-run to full length over
    ``search.confirm.seeds`` (a grid, no early stopping) as experiment ``NAME-confirm``; None when
    not configured. These are the numbers a table reports."""
    from ray import tune

    from raykd.ray_layer.tblog import write_experiment_summary

    k, seeds = cfg.search.confirm.top_k, cfg.search.confirm.seeds
    if k <= 0 or not seeds or cfg.search.algorithm == "grid":
        return None
    sign = 1 if cfg.experiment.mode == "max" else -1
    ranked = sorted((r for r in results if r.metrics and r.metrics.get(cfg.experiment.metric) is not None),
                    key=lambda r: -sign * r.metrics[cfg.experiment.metric])
    top = [{k2: v for k2, v in r.config.items() if k2 != "seed"} for r in ranked[:k]]
    if not top:
        return None
    log(f"[tune] confirm: top {len(top)} configuration(s) × seeds {seeds} → {join(storage, name + '-confirm')}")
    write_experiment_summary(join(storage, f"{name}-confirm"), cfg.space, hparam_metrics(cfg))
    return study_tuner(cfg, plan, storage, f"{name}-confirm",
                       {"confirm": tune.grid_search(top), "seed": tune.grid_search(list(seeds))}, cluster_cpus)


def view_columns(cfg: C.Config, references: bool = False) -> list[str]:
    """The test metrics printed beside the lead metric: the family's headline numbers."""
    fam = family_spec(cfg.teacher.family)
    return list(fam.view_metrics) + (list(fam.reference_view_metrics) if references else [])


def summarize(results, cfg: C.Config) -> tuple[str, list]:
    """A compact results table (text) and the list of (trial id, error) of failed trials."""
    metric = cfg.experiment.metric
    cols = view_columns(cfg)
    keys = (["contender"] if cfg.compare is not None else []) + list(cfg.space) + ["seed"]
    rows, failed = [], []
    for r in results:
        trial_id = Path(r.path).name.replace("trial_", "")
        if r.error:
            failed.append((trial_id, str(r.error).strip().splitlines()[-1][:300]))
        m = r.metrics or {}
        params = {**(r.config or {}).get("confirm", {}), **(r.config or {})}
        rows.append((trial_id, "ERROR" if r.error else ("done" if m.get("step") == cfg.train.steps else "stopped"),
                     [params.get(k) for k in keys], m.get(metric), *(m.get(c) for c in cols), m.get("step")))
    sign = -1 if cfg.experiment.mode == "max" else 1
    rows.sort(key=lambda r: (r[3] is None, sign * (r[3] or 0)))
    head = ["trial", "status"] + keys + [metric, *cols, "steps"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [head] + [[r[0], r[1]] + [fmt(v) for v in r[2]] + [fmt(v) for v in r[3:]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)
    return text, failed


def reference_summary(exp_path: str, cfg: C.Config) -> tuple[str, list]:
    """The reference rows (teacher, init, no_distill per seed) as a text table with the lead metric
    and test Semantic Alignment / MRR@10, and the list of (trial id, error) of failed reference trials."""
    from raykd.results.report import load_references

    metric = cfg.experiment.metric
    cols = view_columns(cfg, references=True)
    rows, failed = [], []
    try:
        recs = load_references(exp_path)
    except RaykdError:
        recs = []
    for r in recs:
        if r.status == "error":
            failed.append((r.trial_id, r.error))
        rows.append([r.role, r.trial_id, r.status, r.metrics.get(metric), *(r.metrics.get(c) for c in cols)])
    head = ["role", "trial", "status", metric, *cols]
    fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    table = [head] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table), failed


def gains_text(exp_path: str, cfg: C.Config) -> str:
    """Each finished configuration's gain over the ``init`` and ``no_distill`` references on the lead
    metric (test), paired by seed, as text (what ``raykd.results.report`` tabulates, printed at the end)."""
    from raykd.results.report import gains_over_references, load_experiment, load_references, varied_parameters

    lead = "test/" + cfg.experiment.metric.split("/", 1)[-1]
    trials = [t for t in load_experiment(exp_path) if t.status == "finished"]
    names = varied_parameters(trials)
    rows = gains_over_references(trials, load_references(exp_path), names, lead)
    if not rows:
        return f"gains over the references on {lead}: none (no finished trial shares a seed with a reference)"
    lines = [f"gain over the references on {lead} (paired by seed: mean ± 95 % CI, Holm-adjusted p):"]
    for r in rows:
        key = r["label"]
        ci = "" if r["ci"] != r["ci"] else f" ± {r['ci']:.4f}"
        verdict = "yes" if r["significant"] else ("no" if r["n"] >= 2 else "one seed: no test")
        lines.append(f"  {key} over {r['role']}: {r['diff']:+.4f}{ci} (n={r['n']}, p_holm={r['p_holm']:.3g}, "
                     f"real at 0.05: {verdict})")
    return "\n".join(lines)


class StudyResult(NamedTuple):
    """What ``run_study`` returns: the main phase's Tune ``ResultGrid`` and its experiment directory
    (a confirm phase's results are under ``path + "-confirm"``, the references under
    ``path/references``)."""
    results: object
    path: str


@dataclass
class Outcome:
    """Every phase of a finished study: the main search, the references and the confirm phase
    (None when the study has none), where they are stored, and the study's config."""
    cfg: C.Config
    storage: str
    name: str
    results: object
    references: object = None
    confirmed: object = None
    comparison: dict | None = None  # a compare study's comparison.json (its results: the confirmation)
    clock: PhaseClock | None = None  # the wall seconds of each phase


def run_study(config, *, overrides: dict | None = None, storage: str | None = None, name: str | None = None,
              resume: bool = False, address: str | None = None) -> StudyResult:
    """Run a study (``python -m raykd.tune`` in Python): ``config`` a YAML path, nested dicts or a
    ``Config``; ``overrides`` dotted keys → values. On the Ray this process has initialised, else
    ``address``, else a local Ray started (and stopped) here. Returns ``StudyResult(results, path)``;
    raises ``RaykdError`` (ConfigError) on bad input."""
    cfg = C.as_config(config, overrides)
    out = run_phases(cfg, study_storage(cfg, storage), name or cfg.experiment.name, resume, address)
    return StudyResult(out.results, join(out.storage, out.name))


def study_storage(cfg: C.Config, storage: str | None) -> str:
    """Where the study's experiments go: ``storage`` or ``experiment.storage``, local paths absolute."""
    s = storage or cfg.experiment.storage
    return s if "://" in s else str(Path(s).absolute())


def with_local_mode(cfg: C.Config, address: str | None) -> C.Config:
    """``cfg`` with ``train.local_mode`` decided where it is null: Train local mode (the trial runs in
    its reused Tune actor: ~1 s to start a trial against ~12 s for a worker group) for one-worker
    trials on a Ray that raykd starts itself; worker groups for ``num_workers > 1``, for FSDP, for
    ``--address`` clusters and on a Ray this process had initialised already."""
    if cfg.train.local_mode is not None:
        return cfg
    import dataclasses

    import ray

    local = cfg.train.num_workers == 1 and address is None and not ray.is_initialized() and cfg.train.strategy == "ddp"
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, local_mode=local))


def with_worker_cpus(cfg: C.Config) -> C.Config:
    """``cfg`` with a null ``train.cpus_per_worker`` set to ``WORKER_CPUS`` (1), for a cluster that is not one
    local node (``--address``, or several nodes): trials may land on several nodes, now or once it scales, and
    a share of the whole cluster per trial (``trial_cpus``) would leave a node with a trial on every CPU and no
    room for Ray Data's tasks (the study would hang)."""
    if cfg.train.cpus_per_worker is not None:
        return cfg
    import dataclasses

    from raykd.ray_layer.trial import WORKER_CPUS

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cpus_per_worker=WORKER_CPUS))


def run_phases(cfg: C.Config, storage: str, name: str, resume: bool, address: str | None,
               monitor: bool = False) -> Outcome:
    """Prepare the inputs, connect to Ray and run the references, the search and its confirm phase,
    then prune checkpoints nobody needs; with ``monitor``, Prometheus charts the trials live meanwhile
    (``live_view``). Returns every phase's results."""
    cfg = with_local_mode(cfg, address)
    clock = PhaseClock()
    if not resume:
        for moved in set_aside_previous(storage, name):
            log(f"[tune] an earlier run of this study is kept at {moved} (this one starts fresh; --resume continues one)")
    with clock("prepare"):
        plan = prepare_inputs(cfg)
    plan.storage = storage
    if monitor:  # a Ray started here reports its workers' metrics every 2 s, not 10 (live_view)
        from raykd.ray_layer.live_view import REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS

        os.environ.setdefault(REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS)
    with clock("ray start"):
        ray, started = init_ray(address, keep_idle_workers=not cfg.train.local_mode, plugins=cfg.plugins)
    log(f"[tune] watch the trials: tensorboard --logdir {join(storage, name)} --host 127.0.0.1")
    live = live_view(cfg, storage, name) if monitor else None
    lines = None  # the references' flat lines, from the end of their phase to the end of the study
    try:
        with clock("adaptation & scoring"):
            complete_inputs(cfg, plan)
        with clock("teacher cache"):
            plan.cache = teacher_cache_for(cfg, plan)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        if started:  # a cluster given by --address may still be scaling up
            check_trial_fits(cfg, cpus)
        if not (started or (address is None and len([n for n in ray.nodes() if n.get("Alive")]) == 1)):
            cfg = with_worker_cpus(cfg)  # trial_cpus' one-trial-per-CPU share is sized for one node
        from raykd.ray_layer.pruning import prune_experiment

        if cfg.compare is not None:
            from raykd.ray_layer.compare import run_compare, tuning_paths

            out = Outcome(cfg, storage, name, None, clock=clock)
            out.results, out.comparison = run_compare(cfg, plan, storage, name, cpus, resume, clock)
            for path in [join(storage, name), join(join(storage, name), REFERENCES_DIR)] + tuning_paths(cfg, storage, name):
                prune_experiment(path)
            return out
        refs = reference_tuner(cfg, plan, storage, name, cpus, resume)
        with clock("references"):
            out = Outcome(cfg, storage, name, None, references=fit(refs, "references") if refs is not None else None, clock=clock)
        if out.references is not None:
            lines = reference_lines(cfg, join(storage, name), name)
        with clock("search"):
            out.results = fit(build_tuner(cfg, plan, storage, name, cpus, resume), "search")
        confirm = confirm_tuner(cfg, plan, out.results, storage, name, cpus)
        with clock("confirm"):
            out.confirmed = fit(confirm, "confirmation") if confirm is not None else None
        for exp in [name] + ([f"{name}-confirm"] if out.confirmed is not None else []):
            prune_experiment(join(storage, exp))
        if out.references is not None:
            prune_experiment(join(join(storage, name), REFERENCES_DIR))
    finally:
        if lines is not None:
            try:
                lines.end()
            except Exception as e:  # never hide the study's own outcome
                log(f"[monitor] ending the references' lines: {type(e).__name__}: {e}")
        if live is not None:
            from raykd.ray_layer.live_view import SETTLE_S

            live.stop(settle_s=SETTLE_S)
        if started:
            ray.shutdown()
    return out


def live_view(cfg: C.Config, storage: str, name: str):
    """Prometheus charting this study's trials (``live_view.start_live_view``), its data under the experiment
    directory (the data work directory for a remote storage); None without a prometheus binary."""
    from raykd.ray_layer.cluster import session_dir
    from raykd.ray_layer.live_view import start_live_view

    where = Path(join(storage, name)) if "://" not in storage else Path(cfg.data.work_dir) / "monitor" / name
    return start_live_view(session_dir(), where / "prometheus", log=log)


def print_outcome(out: Outcome) -> list:
    """Print the study's tables (trials, references, confirm phase, gains) and what to run next;
    returns the failed trials as (trial id, error)."""
    cfg, storage, name = out.cfg, out.storage, out.name
    if out.comparison is not None:
        return print_comparison(out)
    table, failed = summarize(out.results, cfg)
    if out.references is not None:
        rtable, rfailed = reference_summary(join(storage, name), cfg)
        failed += rfailed
        print(f"\nreferences (where the student starts, what it gets without distillation, the teacher):\n{rtable}")
    best = None
    try:
        best = out.results.get_best_result(cfg.experiment.metric, cfg.experiment.mode, scope="last")
    except RuntimeError:
        pass
    print(f"\n{table}\n")
    if best is not None and best.metrics:
        print(f"best trial: {Path(best.path).name} · {cfg.experiment.metric} = "
              f"{best.metrics.get(cfg.experiment.metric)} · params {json.dumps(best.config)}")
    final = name + ("-confirm" if out.confirmed is not None else "")
    if out.confirmed is not None:
        ctable, cfailed = summarize(out.confirmed, cfg)
        failed += cfailed
        print(f"confirm phase ({name}-confirm):\n{ctable}\n")
    if out.references is not None and "://" not in storage:
        print(gains_text(join(storage, final), cfg))
    print(f"results: {join(storage, name)}")
    print(f"compare trials: tensorboard --logdir {join(storage, name)} --host 127.0.0.1   (HParams tab: every trial)")
    print(f"table and figures: python -m raykd.report {join(storage, name)}"
          + (f"   (confirm phase: {join(storage, name + '-confirm')})" if out.confirmed is not None else ""))
    print(f"export the best student: python -m raykd.export {join(storage, final)} --out STUDENT_DIR")
    print_phases(out)
    return failed


def print_phases(out: Outcome) -> None:
    """The per-phase timing line (``phases.PhaseClock``), with the trials' evaluation share where the storage
    is local (the experiment's and its confirm phase's trials)."""
    if out.clock is None:
        return
    share = None
    if "://" not in out.storage:
        from raykd.ray_layer.phases import evaluation_share

        share = evaluation_share(*(d for d in (Path(join(out.storage, out.name)),
                                              Path(join(out.storage, out.name + "-confirm"))) if d.exists()))
    print(out.clock.line(share))


def print_comparison(out: Outcome) -> list:
    """Print a compare study's outcome (``comparison.json`` as text) and what to run next; returns the
    trials that failed (tuning errors, confirmations that did not finish) as (where, error)."""
    from raykd.config.contenders import COMPARISON_FILE
    from raykd.results.comparison import comparison_markdown

    root = join(out.storage, out.name)
    table, failed = summarize(out.results, out.cfg)
    print(f"\nconfirmation ({root}):\n{table}\n")
    print("\n".join(comparison_markdown(out.comparison)))
    for label, m in out.comparison["methods"].items():
        failed += [(f"tune/{label}", e) for e in m.get("tuning_errors", [])]
    print(f"\ncomparison: {join(root, COMPARISON_FILE)} (wall time {out.comparison.get('wall_s', 0):.0f} s)")
    print(f"table and figures: python -m raykd.report {root}")
    print(f"export a confirmed student: python -m raykd.export {root} --out STUDENT_DIR")
    print_phases(out)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run a study; returns the exit code (0 all trials fine, 1 some trial failed, 2 bad input)."""
    ap = argparse.ArgumentParser(prog="python -m raykd.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="search-space YAML (default: smoke.yaml)")
    ap.add_argument("--address", default=None, help="connect to an existing Ray cluster (auto or HOST:PORT)")
    ap.add_argument("--storage", default=None, help="experiment storage (path or URI); default experiment.storage")
    ap.add_argument("--name", default=None, help="experiment name; default experiment.name")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    ap.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="dotted overrides, e.g. train.lr=1e-4 (repeatable)")
    ap.add_argument("--monitor", action="store_true",
                    help="chart the trials live: start Prometheus (127.0.0.1, data under the experiment) against "
                         "Ray's metrics export and print its graph URL; stopped with the study")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import MODULE (its registered methods / samplers) on the driver and every worker (repeatable)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        cfg = C.load_config(args.config, C.parse_set(args.set), plugins=args.plugin)
        storage, name = study_storage(cfg, args.storage), args.name or cfg.experiment.name
        cfg = with_local_mode(cfg, args.address)
        print(plan_text(cfg, storage, name))
        if args.dry_run:
            return 0
        out = run_phases(cfg, storage, name, args.resume, args.address, monitor=args.monitor)
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    failed = print_outcome(out)
    print(f"wall time {time.monotonic() - t0:.0f} s")
    for trial_id, err in failed:
        print(f"trial {trial_id} failed: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
