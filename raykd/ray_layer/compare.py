"""R: a compare study on Ray (``compare:`` in the YAML; the protocol is ``raykd.results.comparison``'s).

    <storage>/<name>/tune/<contender>/   each contender's tuning: exactly ``compare.tune.trials`` trials of
                                         the study's search algorithm on the tuning seed (validation metric)
    <storage>/<name>/tune/reference/     the no_distill / sft reference tuned the same way (shared settings)
    <storage>/<name>/                    the confirmation: each contender's best on every experiment seed
    <storage>/<name>/references/         the references on the same seeds (the tuned reference's settings)
    <storage>/<name>/comparison.json     budget, best settings, per-seed values, declared and exploratory tests
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from raykd.config import contenders as KC

from raykd.results import comparison as K
from raykd import config as C
from raykd.ray_layer.inputs import log
from raykd.ray_layer.tuners import (REFERENCES_DIR, fit, hparam_metrics, join, restore_tuner, study_tuner,
                                    tune_domain)
from raykd.train.trial_spec import REFERENCE_KEY, StudyPlan, metric_keys, reference_method


@dataclass
class Tuned:
    """One contender's (or the reference's) tuning: its space, trials, compute and best configuration."""

    label: str
    space: dict
    trials: int = 0
    compute_s: float = 0.0
    best: dict | None = None  # the best trial's searched and fixed settings (dotted keys), no seed
    best_metric: float | None = None
    errors: list = field(default_factory=list)


def _dir_name(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def tuning_space(space: dict, fixed: dict, seed: int):
    """Tune's param space of a tuning experiment: ``space``'s domains, the ``fixed`` settings, the seed."""
    return {**{k: tune_domain(v) for k, v in space.items()}, **fixed, "seed": seed}


def search_alg(cfg: C.Config, seed: int):
    """The study's search algorithm, seeded the same for every contender (Optuna's TPE, or Tune's
    random search with a seeded random state)."""
    if cfg.search.algorithm != "optuna":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=cfg.experiment.metric, mode=cfg.experiment.mode, seed=seed)


def scheduler(cfg: C.Config):
    from ray.tune.schedulers import FIFOScheduler

    from raykd.ray_layer.tuners import asha

    kind = cfg.compare.tune.scheduler or cfg.search.scheduler.type
    return asha(cfg) if kind == "asha" else FIFOScheduler()


def tune_one(cfg: C.Config, plan: StudyPlan, root: str, label: str, space: dict, fixed: dict, cpus: float,
             resume: bool, frozen: bool = False) -> Tuned:
    """Run (or, with ``resume``, continue) one contender's tuning experiment; its summary. ``frozen``:
    the confirmation has started, so the tuning is only read back (never resumed: a re-run errored
    trial could change the best, and the confirmation runs the best it had)."""
    from ray import tune

    seed = C.compare_tuning_seed(cfg)
    space = {C.resolve_key(k): v for k, v in space.items()}  # dotted keys everywhere (lr → train.lr)
    storage, name = join(root, KC.TUNE_DIR), _dir_name(label)
    path = join(storage, name)
    if resume and tune.Tuner.can_restore(path):
        tuner = restore_tuner(cfg, plan, path, cpus, cfg.compare.tune.trials)
        if frozen:
            return summarize_tuning(cfg, label, space, tuner.get_results())
    else:
        log(f"[compare] tuning {label}: {cfg.compare.tune.trials} trial(s) over {', '.join(space) or '(nothing)'} "
            f"on seed {seed} → {path}")
        tuner = study_tuner(cfg, plan, storage, name, tuning_space(space, fixed, seed), cpus,
                            search_alg=search_alg(cfg, seed), scheduler=scheduler(cfg),
                            num_samples=cfg.compare.tune.trials)
    return summarize_tuning(cfg, label, space, fit(tuner, f"tuning {label}"))


def summarize_tuning(cfg: C.Config, label: str, space: dict, results) -> Tuned:
    """A tuning experiment's summary: trials, compute (s), errors and the best trial that did not fail
    (by its last validation ``experiment.metric``)."""
    out = Tuned(label, space, trials=len(results))
    sign = 1 if cfg.experiment.mode == "max" else -1
    for r in results:
        m = r.metrics or {}
        out.compute_s += float(m.get("time_total_s") or 0.0)
        if r.error:
            out.errors.append(str(r.error).strip().splitlines()[-1][:200])
            continue  # a failed trial never wins the tuning: its confirmation would fail on every seed
        value = m.get(cfg.experiment.metric)
        if value is not None and value == value and (out.best_metric is None or sign * value > sign * out.best_metric):
            out.best_metric = float(value)
            out.best = {k: v for k, v in r.config.items() if k != "seed"}
    return out


def confirmed_bests(results) -> dict[str, dict]:
    """{contender: the configuration its confirmation trials run} (what a restored confirmation holds)."""
    out = {}
    for r in results:
        conf = (r.config or {}).get("confirm") or {}
        if KC.CONTENDER_KEY in conf:
            out[conf[KC.CONTENDER_KEY]] = dict(conf)
    return out


def confirm_values(results, cfg: C.Config, keys: list[str]) -> dict[str, dict[str, list]]:
    """{contender: {metric: [value per experiment seed, in order; None where that trial did not finish]}}."""
    seeds = list(cfg.experiment.seeds)
    out: dict[str, dict[str, list]] = {}
    for r in results:
        conf = (r.config or {}).get("confirm") or {}
        label, seed = conf.get(KC.CONTENDER_KEY), (r.config or {}).get("seed")
        if label is None or seed not in seeds:
            continue
        m = r.metrics or {}
        done = not r.error and m.get("step") == cfg.train.steps
        row = out.setdefault(label, {k: [None] * len(seeds) for k in keys})
        for k in keys:
            v = m.get(k)
            row[k][seeds.index(seed)] = float(v) if done and isinstance(v, (int, float)) else None
    return out


def reference_values(root: str, cfg: C.Config, keys: list[str]) -> dict[str, dict[str, list]]:
    """{role (teacher, init, no_distill): {metric: [value per experiment seed]}} from ``root/references``."""
    from raykd.results.report import load_references

    seeds = list(cfg.experiment.seeds)
    out: dict[str, dict[str, list]] = {}
    for r in load_references(root):
        if r.seed not in seeds:
            continue
        row = out.setdefault(r.role, {k: [None] * len(seeds) for k in keys})
        for k in keys:
            v = r.metrics.get(k)
            row[k][seeds.index(r.seed)] = float(v) if r.status == "finished" and isinstance(v, (int, float)) else None
    return out


def _method_entry(t: Tuned, method: str, fixed: dict, confirm: dict) -> dict:
    return {"method": method, "fixed": fixed, "tuning_trials": t.trials, "compute_s": round(t.compute_s, 3),
            "best": {k: v for k, v in (t.best or {}).items() if k not in (KC.CONTENDER_KEY, REFERENCE_KEY)},
            "best_val": t.best_metric, "on_range_edge": KC.edge_flags(t.space, t.best or {}),
            "tuning_errors": t.errors, "confirm": confirm}


def run_compare(cfg: C.Config, plan: StudyPlan, storage: str, name: str, cpus: float, resume: bool, clock=None):
    """Tune every contender and the reference with the same budget, confirm each best on the seeds,
    run the references there, test the declared comparisons; writes ``comparison.json``. Returns
    (the confirmation's ResultGrid, the comparison document). ``clock`` (a ``phases.PhaseClock``) times
    the tuning, the confirmation and the references."""
    from contextlib import nullcontext

    clock = clock or (lambda phase: nullcontext())
    from ray import tune

    from raykd.ray_layer.tblog import write_experiment_summary

    t0 = time.monotonic()
    root = join(storage, name)
    contenders = C.compare_contenders(cfg)
    frozen = resume and tune.Tuner.can_restore(root)  # the confirmation had started: tuning is read, not rerun
    with clock("tuning"):
        tuned = {c.label: tune_one(cfg, plan, root, c.label, KC.contender_space(c, cfg.space), KC.constants(c), cpus,
                                   resume, frozen) for c in contenders}
    ref = None
    if cfg.experiment.references:
        with clock("tuning"):
            ref = tune_one(cfg, plan, root, KC.REFERENCE_LABEL, dict(cfg.space),
                           {REFERENCE_KEY: True, KC.CONTENDER_KEY: KC.REFERENCE_LABEL}, cpus, resume,
                           frozen and tune.Tuner.can_restore(join(root, REFERENCES_DIR)))
    best = [t.best for t in tuned.values() if t.best is not None]
    for t in tuned.values():
        if t.best is None:
            log(f"[compare] {t.label}: no tuning trial reported {cfg.experiment.metric}; it is not confirmed")
    seeds = list(cfg.experiment.seeds)
    log(f"[compare] confirm: {len(best)} best configuration(s) × seeds {seeds} → {root}")
    labels = [c.label for c in contenders]
    write_experiment_summary(root, {KC.CONTENDER_KEY: {"choice": labels}, **cfg.space}, hparam_metrics(cfg))
    with clock("confirm"):
        if frozen:
            confirmed = fit(restore_tuner(cfg, plan, root, cpus, len(best) * len(seeds)), "confirmation")
            for label, conf in confirmed_bests(confirmed).items():  # the settings confirmed are the ones reported
                if label in tuned:
                    tuned[label].best = conf
        else:
            confirmed = fit(study_tuner(cfg, plan, storage, name,
                                        {"confirm": tune.grid_search(best), "seed": tune.grid_search(seeds)}, cpus),
                            "confirmation")
    if ref is not None:
        with clock("references"):
            _confirm_reference(cfg, plan, storage, name, cpus, resume, ref, seeds)
    doc = _comparison(cfg, root, confirmed, contenders, tuned, ref, seeds)
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    write_comparison(root, doc)
    return confirmed, doc


def _confirm_reference(cfg: C.Config, plan: StudyPlan, storage: str, name: str, cpus: float, resume: bool, ref,
                       seeds: list) -> None:
    """Run the no-distillation reference's tuned settings on the confirmation seeds (with the teacher and
    ``init`` from its step 0); ``ref.best`` then holds the settings it ran."""
    from ray import tune

    from raykd.ray_layer.references import reference_tuner

    shared = {k: v for k, v in (ref.best or {}).items() if k not in (REFERENCE_KEY, KC.CONTENDER_KEY)}
    space = {REFERENCE_KEY: True, "seed": tune.grid_search(seeds), **shared}
    ran = fit(reference_tuner(cfg, plan, storage, name, cpus, resume, space=space), "references")
    held = {k: v for r in ran for k, v in (r.config or {}).items() if k not in ("seed", REFERENCE_KEY)}
    if held:  # a restored reference experiment ran the settings it was started with
        ref.best = {**(ref.best or {}), **held}


def _comparison(cfg: C.Config, root: str, confirmed, contenders, tuned: dict, ref, seeds: list) -> dict:
    """The comparison document (``results.comparison.comparison_doc``) of the confirmed contenders and the
    references, their test values per seed, the declared tests."""
    keys = [f"test/{m}" for m in metric_keys(cfg.teacher.family)]
    values = confirm_values(confirmed, cfg, keys)
    refs = reference_values(root, cfg, keys) if ref is not None else {}
    empty = {k: [None] * len(seeds) for k in keys}
    methods = {c.label: _method_entry(tuned[c.label], c.method, c.params, values.get(c.label, empty))
               for c in contenders}
    references = {role: {"confirm": v} for role, v in refs.items()}  # teacher, init: step 0 of no_distill
    if ref is not None:  # the student trained without the teacher (sft for decoders), tuned like a contender
        references["no_distill"] = _method_entry(ref, reference_method(cfg.teacher.family), {},
                                                 refs.get("no_distill", empty))
    _, against = KC.parse_against(cfg.compare.against)
    lead = "test/" + cfg.experiment.metric.split("/", 1)[-1]
    return K.comparison_doc(against=against, metrics=list(cfg.compare.metrics),
                            trials_per_method=cfg.compare.tune.trials, steps=cfg.train.steps, seeds=seeds,
                            tuning_seed=C.compare_tuning_seed(cfg), algorithm=cfg.search.algorithm,
                            scheduler=cfg.compare.tune.scheduler or cfg.search.scheduler.type, methods=methods,
                            references=references, exploratory_metrics=[lead])


def tuning_paths(cfg: C.Config, storage: str, name: str) -> list[str]:
    """The tuning experiments of a compare study (each contender's, and the reference's)."""
    labels = [c.label for c in C.compare_contenders(cfg)] + ([KC.REFERENCE_LABEL] if cfg.experiment.references else [])
    return [join(join(join(storage, name), KC.TUNE_DIR), _dir_name(label)) for label in labels]


def write_comparison(root: str, doc: dict) -> str:
    """Write ``root/comparison.json`` (atomically: a temporary file renamed into place); its path.
    Remote storage (``s3://…``) through pyarrow."""
    text = json.dumps(K.json_safe(doc), indent=1, sort_keys=False, allow_nan=False) + "\n"
    path = join(root, KC.COMPARISON_FILE)
    if "://" in root:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode("utf-8"))
        return path
    tmp = Path(root) / f".{KC.COMPARISON_FILE}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
