"""R: a study's reference trials — the student trained without distillation (``no_distill``; ``sft``
for decoders) on every seed, whose step-0 row is the student as built (``init``) and carries the
teacher scored as its own student (``teacher``) — as experiment ``NAME/references``."""

from __future__ import annotations

from raykd import config as C
from raykd.train.trial_spec import StudyPlan
from raykd.errors import RaykdError
from raykd.ray_layer.inputs import log
from raykd.ray_layer.tuners import REFERENCES_DIR, join, phase_trials, restore_tuner, study_tuner


def reference_space(cfg: C.Config) -> dict | None:
    """Tune's param space of a study's reference trials — one per seed (the search's and the confirm
    phase's) and per searched student shape — or None with ``experiment.references: false``."""
    from ray import tune

    from raykd.train.trial_spec import REFERENCE_KEY

    if not cfg.experiment.references:
        return None
    seeds = list(dict.fromkeys(list(cfg.experiment.seeds) + list(cfg.search.confirm.seeds)))
    space = {REFERENCE_KEY: True, "seed": tune.grid_search(seeds)}
    for name, spec in cfg.space.items():
        if C.resolve_key(name).startswith("student."):
            kind, values = next(iter(spec.items()))
            if kind not in ("choice", "grid"):
                raise RaykdError(f"space.{name}: references need the student shapes listed (choice or grid), "
                                 f"got {kind}; or set experiment.references: false")
            space[name] = tune.grid_search(list(values))
    return space


def reference_tuner(cfg: C.Config, plan: StudyPlan, storage: str, name: str, cluster_cpus: float, resume: bool,
                    space: dict | None = None):
    """The study's reference trials (``no_distill`` per seed and student shape; each one's step-0
    row is the ``init`` reference and carries the ``teacher`` reference) as experiment
    ``references`` inside the study's directory; None when references are off. Restored with
    ``resume`` when it was started before. ``space``: another param space (a compare study's: its
    tuned shared settings on ``experiment.seeds``)."""
    from ray import tune

    space = reference_space(cfg) if space is None else space
    if space is None:
        return None
    parent = join(storage, name)
    path = join(parent, REFERENCES_DIR)
    if resume and tune.Tuner.can_restore(path):
        return restore_tuner(cfg, plan, path, cluster_cpus, phase_trials(space, 1))
    log(f"[tune] references: no_distill × {len(space['seed']['grid_search'])} seed(s) (its step 0 = the student as "
        f"built; the teacher scored as its own student) → {path}")
    return study_tuner(cfg, plan, parent, REFERENCES_DIR, space, cluster_cpus)


def reference_lines(cfg: C.Config, exp_path: str, name: str):
    """The study's references as live flat lines: ``raykd_reference{reference=teacher|init|no_distill}`` (the
    validation metric's mean over the reference rows: seeds and searched student shapes), tagged ``trial_id`` =
    the study's name and role ``reference``, held from the end of the reference phase until ``.end()`` (the
    study's end); None when the study has no finished reference or this driver cannot export metrics (said in
    one line)."""
    from raykd.ray_layer.monitoring import HeldGauges
    from raykd.results.report import load_references, reference_means

    try:  # the charts' flat lines are not worth a study: any failure here is said and the study goes on
        means = reference_means(load_references(exp_path), cfg.experiment.metric)
        if not means:
            log(f"[monitor] the references are not charted live: no finished reference row read under {exp_path}"
                + (" (a remote storage: the driver reads no rows there)" if "://" in exp_path else ""))
            return None
        lines = HeldGauges({"trial_id": name, "method": cfg.method.name, "role": "reference"})
        lines.set_references(means)
        return lines
    except Exception as e:  # unreadable reference rows; a driver that exports no metrics (Ray Client)
        log(f"[monitor] the references are not charted live: {type(e).__name__}: {e}")
        return None
