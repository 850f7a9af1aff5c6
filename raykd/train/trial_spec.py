"""What one trial is, from the study's config and the searched parameters: pure config logic shared by
the Ray layer (which runs trials) and export (which rebuilds a trial's student). No Ray, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from raykd import config as C
from raykd.config.contenders import CONTENDER_KEY
from raykd.distill import settings as S
from raykd.models.families.spec import DEFAULT, family_spec

SCORED_SAMPLERS = ("entropy", "hard_negative", "domain_aware")  # samplers that read the teacher's scores
REFERENCE_KEY = "reference"  # a Tune param marking a reference trial (no_distill; its step 0 is `init`)


@dataclass
class StudyPlan:
    """What every trial of a study receives beside its searched params (Tune pickles it once): the study's
    config and the inputs the driver prepared for it."""

    base: dict  # the study's config as a dict; a trial applies its params to it (``trial_config``)
    prepared: str = ""  # the prepared data directory
    teacher: str = ""  # the teacher's directory or hub id
    teacher_load: dict = field(default_factory=dict)  # load_teacher keywords (remote code, revision, family)
    teacher_key: str | None = None  # the teacher's content key (its adaptation key, or ``spec:<id>``)
    data_key: str | None = None  # the prepared data's manifest key
    plugin_paths: list = field(default_factory=list)  # where the plugin modules are, for the workers
    template: dict | None = None  # a templated family's prompt/response template (``data.template``)
    scores: str | None = None  # the samplers' teacher scores directory, once computed (``stages.score``)
    cache: dict | None = None  # the teacher-output cache the study built (``ray_layer.inputs.teacher_cache_for``)
    storage: str | None = None  # the study's storage (where fault markers live)
    adapt: dict | None = None  # a teacher adaptation still to run (``complete_inputs`` runs it and clears this)
    threads: int = 0  # torch threads of a local-mode trial on CPU (``ray_layer.tuners.local_threads``; 0: the rule)
    # the teacher's own tokenization when it differs from the student's (``data.teacher_view``): {"prepared": its
    # prepared directory, "key", "vocab": its tokenizer's size, "template": its prompt/response template}
    teacher_view: dict | None = None


def metric_keys(family: str | None) -> tuple[str, ...]:
    """The metric names (without split) a family's trials report and its views show (None: the default family)."""
    return family_spec(family or DEFAULT).metric_keys


def reference_method(family: str | None) -> str:
    """What the no_distill reference of a family's study trains with (its task loss alone)."""
    return family_spec(family or DEFAULT).reference_method


def trial_config(base: dict, params: dict) -> C.Config:
    """The resolved config of one trial: ``base`` (a Config as dict) with the searched ``params``
    (aliases or dotted keys; ``seed`` sets the trial seed; ``confirm`` holds a confirm-phase
    configuration) applied."""
    params = {**params.get("confirm", {}), **{k: v for k, v in params.items() if k != "confirm"}}
    overrides = {C.resolve_key(k): v for k, v in params.items() if k not in ("seed", REFERENCE_KEY, CONTENDER_KEY)}
    data = C.apply_overrides(base, overrides)
    if params.get(REFERENCE_KEY):  # the plain student on its own task loss, on the study's unweighted data
        family = (data.get("teacher") or {}).get("family")
        data["method"] = {**data["method"], "name": reference_method(family), "depth": None, "params": {}}
        data["sampler"] = {"name": "uniform", "params": {}}
    if "seed" in params:
        data["experiment"]["seeds"] = [int(params["seed"])]
    return C._build(C.Config, data, "", "<trial>")


def method_kwargs(cfg: C.Config, n_departments: int) -> tuple[dict, bool]:
    """(keyword settings for ``build_method``, whether the student gets the aggregation module)."""
    params = dict(cfg.method.params)
    ablate = params.pop("ablate", None)
    kwargs = {"depth": cfg.method.depth, "projection_dim": cfg.method.projection_dim, "n_departments": n_departments,
              "seed": cfg.experiment.seeds[0], **params}
    aggregation = cfg.method.name == "structural"
    if ablate is not None:
        declared = S.declared(cfg.method.name).get("ablate")  # what the method's settings let it switch off
        allowed = [c for c in declared.metadata["choices"] if c] if declared else ["none", "dynamic_weights"]
        if ablate not in allowed:
            raise C.ConfigError(f"method.params.ablate: {ablate!r} is not one of {', '.join(allowed)} "
                                f"(method {cfg.method.name})")
        kwargs.setdefault("dynamic_weights", True)  # the full method carries every module
        if ablate == "aggregation":
            aggregation = False
        elif ablate != "none":
            kwargs[ablate] = False
    return kwargs, aggregation
