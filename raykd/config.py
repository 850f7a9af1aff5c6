"""Every setting as a dataclass; YAML (``yaml.safe_load``) → validated config; search-space parsing.

Config flows one way: YAML → ``load_config`` (unknown keys, wrong types and impossible values fail
here, naming the file, the key and the allowed values) → dataclasses → code.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raykd.architectures import FAMILY_CAPABILITIES, family_of_architectures
from raykd.distill import settings as S
from raykd.errors import RaykdError

FAMILY_NAMES = ("masked_lm", "causal_lm")
ARCHS = {"bert": "masked_lm", "llama": "causal_lm", "qwen2": "causal_lm", "gpt2": "causal_lm"}  # built-from-config teachers
DEFAULT_METRIC = {"masked_lm": "val/mrr@10", "causal_lm": "val/answer_accuracy"}
CACHE_KINDS = ("none", "hidden", "logits", "both")
TEACHER_SHARD = ("auto", "never", "always")
# metrics fixed by the data or the models' sizes, equal for every method: never a declared comparison
CONSTANT_METRICS = ("answer_chance", "param_reduction")
# the built-in methods; what each takes in ``method.params`` and what it needs from a family is declared once,
# beside it, in raykd.distill.settings (anything else fails at load time)
METHOD_NAMES = tuple(S.SETTINGS)
SAMPLER_NAMES = ("uniform", "entropy", "random_masked", "hard_negative", "domain_aware")
DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint", "qrandint")
# Short names for the parameters people search most, → their dotted path in the config.
ALIASES = {"depth": "method.depth", "projection_dim": "method.projection_dim", "method": "method.name",
           "sampler": "sampler.name", "lr": "train.lr", "weight_decay": "train.weight_decay"}


class ConfigError(RaykdError):
    """A configuration problem, located by file and key."""


@dataclass
class ExperimentConfig:
    name: str = "smoke"
    storage: str = ".raykd/experiments"
    seeds: list = field(default_factory=lambda: [0])
    # the lead metric; null: the family's (masked_lm: val/mrr@10, QA retrieval of the student alone, which
    # no objective trains on; causal_lm: val/answer_accuracy, answer selection by the student's likelihood)
    metric: str | None = None
    mode: str = "max"
    references: bool = True  # run the teacher / init / no_distill reference trials beside the study


@dataclass
class SynthConfig:
    dialogs: int = 1500
    seed: int = 0


@dataclass
class DataConfig:
    prepared: str | None = None
    synth: SynthConfig | None = field(default_factory=SynthConfig)
    max_length: int = 64
    tokenizer: str = "train:8000"
    work_dir: str = ".raykd/data"
    train_pairs: int | None = None  # the train split's size for --dry-run when the prepared data is not readable here


@dataclass
class ShapeConfig:
    layers: int = 6
    hidden: int = 64
    heads: int = 4
    intermediate: int = 256
    vocab: int | None = None  # recorded for a hub teacher (offline --dry-run); a built one takes the tokenizer's
    kv_heads: int | None = None  # recorded grouped-query attention heads (null: as many as heads)


@dataclass
class AdaptConfig:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3


@dataclass
class TeacherConfig:
    spec: str | None = None
    # masked_lm | causal_lm; null: read from a local spec's config.json (`architectures`), else from `arch`
    # (a hub id must name it: validation never reads a hub)
    family: str | None = None
    arch: str | None = None  # a teacher built from `shape`: bert | llama | qwen2 | gpt2 (null: the family's first)
    shape: ShapeConfig = field(default_factory=ShapeConfig)
    adapt: AdaptConfig | None = field(default_factory=AdaptConfig)
    # none | hidden | logits | both: what trials read from the teacher-output cache (raykd.cache) instead of
    # running the teacher — hidden states, the top-k logits (causal_lm), or both (true ≡ hidden, false ≡ none)
    cache: str | bool = "none"
    cache_topk: int = 64  # the logit cache's tokens per position (a study caches its largest searched value)
    cache_max_gb: float = 20.0  # the cache build refuses above this estimated size
    # auto | never | always: the frozen causal teacher sharded by FSDP2 over the trial's workers (train.strategy
    # fsdp) instead of one full copy per GPU; auto shards when the full copy would exceed budget.TEACHER_GPU_SHARE
    # of a GPU's memory (never on CPU)
    shard: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None


@dataclass
class StudentConfig:
    layers: int = 3
    hidden: int | None = None
    init_from_teacher: bool = True
    spec: str | None = None  # the student's own HF directory / hub id (e.g. TinyLlama for a LLaMA-2 teacher);
    #                          layers / hidden / vocab then describe it (for validation and --dry-run)
    vocab: int | None = None
    revision: str | None = None
    heads: int | None = None  # a narrower student's attention heads (null: width / 64); recorded for a spec
    kv_heads: int | None = None  # recorded for a spec student with grouped-query attention (--dry-run)
    intermediate: int | None = None  # a narrower student's feed-forward width (null: 4 × width)


@dataclass
class MethodConfig:
    name: str = "structural"
    depth: int | None = None
    projection_dim: int = 64
    params: dict = field(default_factory=dict)


@dataclass
class SamplerConfig:
    name: str = "uniform"
    params: dict = field(default_factory=dict)


FAULT_KINDS = ("sigkill", "exception")


def parse_fault(spec: str | None) -> tuple[str, int] | None:
    """("sigkill" | "exception", step) from ``train.fault`` ("KIND@STEP"); None when absent or malformed."""
    if not isinstance(spec, str) or "@" not in spec:
        return None
    kind, _, step = spec.partition("@")
    if kind not in FAULT_KINDS or not step.isdigit() or int(step) < 1:
        return None
    return kind, int(step)


@dataclass
class TrainConfig:
    steps: int = 150
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_accum: int = 1
    precision: str = "auto"
    eval_every: int = 50
    eval_pairs: int = 4096  # validation (and test) pairs per evaluation: all of them on the generated default
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0
    checkpoint_keep: int = 2
    max_failures: int = 1
    # run the one worker inside the trial's Tune actor (Ray Train local mode, actors reused); null (the
    # default): local mode for one-worker trials on a Ray that raykd starts itself, worker groups otherwise
    local_mode: bool | None = None
    # a causal micro-batch with more response tokens than this computes its logit losses chunk by chunk,
    # this many tokens at a time, from the final hidden states and the LM heads (never [tokens × vocabulary]
    # logits of both models at once; same value and gradients); 0: always the plain logits
    chunked_loss_tokens: int = 2048
    strategy: str = "ddp"  # ddp | fsdp (FSDP2: the student sharded over the trial's workers; worker groups only)
    gradient_checkpointing: bool = False  # recompute the student's blocks in backward: less activation memory
    fault: str | None = None  # fault injection for recovery tests: "sigkill@STEP" or "exception@STEP", once per trial


@dataclass
class SchedulerConfig:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class ConfirmConfig:
    top_k: int = 0
    seeds: list = field(default_factory=list)


@dataclass
class SearchConfig:
    algorithm: str = "optuna"
    num_samples: int = 6
    max_trials: int = 100
    time_budget_s: float | None = None
    max_concurrent: int | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)


@dataclass
class CompareTuneConfig:
    trials: int | None = None  # required: tuning trials per contender (and for the reference), the same for all
    scheduler: str | None = None  # asha | none; null: search.scheduler.type
    seed: int | None = None  # the tuning trials' seed, outside experiment.seeds; null: max(experiment.seeds) + 1


@dataclass
class CompareConfig:
    """A compare study (raykd.comparison): every method tuned with the same budget, confirmed on
    ``experiment.seeds``, then only the declared comparisons tested."""

    methods: list = field(default_factory=list)  # NAME or {NAME: {fixed params}}
    tune: CompareTuneConfig = field(default_factory=CompareTuneConfig)
    against: str | None = None  # the declared family: "method=LABEL" against every other contender
    metrics: list = field(default_factory=list)  # the declared metrics, e.g. [test/mrr@10]


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    space: dict = field(default_factory=dict)
    plugins: list = field(default_factory=list)  # modules imported on the driver and every worker (their
    #                                              @METHODS / @SAMPLERS registrations become nameable here)
    compare: CompareConfig | None = None  # present: a compare study (search.num_samples / confirm ignored)


# ------------------------------------------------------------------------------------------------ parsing
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value, tp, where: str, src: str):
    """Check ``value`` against the annotation ``tp``; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, src)
            except ConfigError as e:
                last = e
        raise last
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{src}: {where}: expected a mapping, got null")
        return _build(tp, value, where, src)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string: accept numeric text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: {where}: expected a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{src}: {where}: expected a list, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {where}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls, data, where: str, src: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{src}: unknown key {path!r}{hint} (allowed: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path, src)
    return cls(**kwargs)


def _check(cond: bool, src: str, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{src}: {key}: {msg}")


def validate(cfg: Config, src: str = "<config>") -> Config:
    """Check values that types alone cannot; returns ``cfg``. Raises ConfigError naming file and key."""
    e, t, s = cfg.experiment, cfg.train, cfg.search
    _check(e.mode in ("min", "max"), src, "experiment.mode", f"{e.mode!r} is not one of min, max")
    _check(len(e.seeds) > 0 and all(isinstance(x, int) and not isinstance(x, bool) for x in e.seeds), src,
           "experiment.seeds", "must be a non-empty list of integers")
    _check(cfg.data.prepared is not None or cfg.data.synth is not None, src, "data",
           "set data.prepared (a prepared directory) or data.synth (the generated corpus)")
    _check(cfg.data.max_length >= 8, src, "data.max_length", "must be at least 8")
    sh = cfg.teacher.shape
    _check(min(sh.layers, sh.hidden, sh.heads, sh.intermediate) > 0, src, "teacher.shape", "sizes must be positive")
    _check(sh.hidden % sh.heads == 0, src, "teacher.shape.hidden", f"{sh.hidden} is not divisible by heads {sh.heads}")
    _check(not cfg.teacher.trust_remote_code or cfg.teacher.revision, src, "teacher.trust_remote_code",
           "true only together with a pinned teacher.revision")
    cfg.teacher.cache = {True: "hidden", False: "none"}.get(cfg.teacher.cache, cfg.teacher.cache)
    _check(cfg.teacher.cache in CACHE_KINDS, src, "teacher.cache",
           f"{cfg.teacher.cache!r} is not one of {', '.join(CACHE_KINDS)} (true ≡ hidden, false ≡ none)")
    _check(cfg.teacher.cache_topk >= 1, src, "teacher.cache_topk", f"must be at least 1, got {cfg.teacher.cache_topk}")
    _check(cfg.teacher.cache_max_gb > 0, src, "teacher.cache_max_gb", f"must be positive, got {cfg.teacher.cache_max_gb}")
    _check(cfg.student.layers >= 1, src, "student.layers", "must be at least 1")
    if cfg.student.hidden and cfg.student.heads:
        _check(cfg.student.hidden % cfg.student.heads == 0, src, "student.heads",
               f"{cfg.student.hidden} (student.hidden) is not divisible by {cfg.student.heads} heads")
    if cfg.teacher.spec is None:  # a built teacher: its shape is the config's (a spec's may not be recorded)
        _check(cfg.student.layers <= sh.layers, src, "student.layers",
               f"{cfg.student.layers} is more than the teacher's {sh.layers} layers (teacher.shape.layers)")
    resolve_family(cfg, src)
    if cfg.teacher.family == "causal_lm":
        searched = [next(iter(sp.values())) for k, sp in cfg.space.items()
                    if resolve_key(k) == "sampler.name" and isinstance(sp, dict) and sp]
        for name in [cfg.sampler.name] + [v for vals in searched if isinstance(vals, list) for v in vals]:
            _check(name not in SAMPLER_NAMES or name == "uniform", src, "sampler.name",
                   f"{name!r} scores pairs with the masked-LM head; a causal_lm study samples uniform")
    _check(cfg.teacher.family == "causal_lm" or cfg.teacher.cache in ("none", "hidden"), src, "teacher.cache",
           f"{cfg.teacher.cache!r}: the top-k logit cache serves causal_lm teachers (an encoder's distillation logits "
           "are taken on freshly masked inputs every step); allowed here: none, hidden")
    if e.metric is None:
        e.metric = DEFAULT_METRIC[cfg.teacher.family]
    _check_method(cfg.method.name, cfg.method.depth, cfg.method.projection_dim, cfg.student.layers, src, "method",
                  cfg.teacher.family)
    _check_method_params(cfg.method.name, cfg.method.params, src, cfg.teacher.family)
    _check_sampler(cfg.sampler.name, src)
    for key, lo in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("eval_every", 1), ("num_workers", 1),
                    ("eval_pairs", 8), ("checkpoint_keep", 1)):
        _check(getattr(t, key) >= lo, src, f"train.{key}", f"must be at least {lo}, got {getattr(t, key)}")
    _check(t.lr > 0, src, "train.lr", "must be positive")
    _check(t.chunked_loss_tokens >= 0, src, "train.chunked_loss_tokens",
           f"must be 0 (never chunk) or a positive number of tokens, got {t.chunked_loss_tokens}")
    _check(not t.local_mode or t.num_workers == 1, src, "train.local_mode",
           f"runs the trial's single worker inside its Tune actor: needs train.num_workers 1, got {t.num_workers}")
    _check(t.strategy in ("ddp", "fsdp"), src, "train.strategy", f"{t.strategy!r} is not one of ddp, fsdp")
    _check(t.strategy == "ddp" or not t.local_mode, src, "train.strategy",
           "fsdp shards the student over a worker group: it needs train.local_mode false (or null)")
    _check_fsdp_method(cfg, src)
    _check(cfg.teacher.shard in TEACHER_SHARD, src, "teacher.shard",
           f"{cfg.teacher.shard!r} is not one of {', '.join(TEACHER_SHARD)}")
    _check(cfg.teacher.shard != "always" or (t.strategy == "fsdp" and cfg.teacher.family == "causal_lm"), src,
           "teacher.shard", "always shards a causal_lm teacher over an FSDP worker group: it needs train.strategy "
           f"fsdp and teacher.family causal_lm (got {t.strategy}, {cfg.teacher.family}; an encoder teacher fits one GPU)")
    _check(t.fault is None or parse_fault(t.fault) is not None, src, "train.fault",
           f"{t.fault!r} is not KIND@STEP with KIND one of {', '.join(FAULT_KINDS)} (e.g. sigkill@8)")
    _check(t.precision in ("auto", "fp32", "fp16", "bf16"), src, "train.precision",
           f"{t.precision!r} is not one of auto, fp32, fp16, bf16")
    _check(s.algorithm in ("optuna", "grid", "random"), src, "search.algorithm",
           f"{s.algorithm!r} is not one of optuna, grid, random")
    _check(s.scheduler.type in ("asha", "none"), src, "search.scheduler.type",
           f"{s.scheduler.type!r} is not one of asha, none")
    _check(s.num_samples >= 1, src, "search.num_samples", "must be at least 1")
    _check(s.max_trials >= 1, src, "search.max_trials", "must be at least 1")
    for name, spec in cfg.space.items():
        _check_domain(cfg, name, spec, src)
    if cfg.compare is not None:
        _check_compare(cfg, src)
    n = planned_trials(cfg)
    _check(n <= s.max_trials, src, "search.max_trials",
           f"the search plans {n} trials (grid × seeds or num_samples), more than max_trials={s.max_trials}")
    return cfg


def method_names() -> tuple[str, ...]:
    """The built-in methods and those a loaded plugin registered."""
    from raykd.registry import METHODS

    return METHOD_NAMES + tuple(n for n in METHODS.names() if n not in METHOD_NAMES)


def sampler_names() -> tuple[str, ...]:
    """The built-in samplers and those a loaded plugin registered."""
    from raykd.registry import SAMPLERS

    return SAMPLER_NAMES + tuple(n for n in SAMPLERS.names() if n not in SAMPLER_NAMES)


def _check_sampler(name, src) -> None:
    allowed = sampler_names()
    _check(name in allowed, src, "sampler.name", f"unknown sampler {name!r}; allowed: {', '.join(allowed)}")


def resolve_family(cfg: Config, src: str) -> str:
    """Set ``teacher.family`` and ``teacher.arch`` when null: the family from a local spec's
    config.json (its ``architectures``) or from ``arch`` (a built teacher); a hub-id spec must name
    it. Returns the family; ConfigError naming the key otherwise."""
    t = cfg.teacher
    _check(t.family is None or t.family in FAMILY_NAMES, src, "teacher.family",
           f"{t.family!r} is not one of {', '.join(FAMILY_NAMES)}")
    _check(t.arch is None or t.arch in ARCHS, src, "teacher.arch", f"{t.arch!r} is not one of {', '.join(ARCHS)}")
    if t.family is None:
        if t.spec is None:
            t.family = ARCHS[t.arch] if t.arch else "masked_lm"
        else:
            t.family = _family_of_spec(t.spec, src)
    if t.arch is not None:
        _check(ARCHS[t.arch] == t.family, src, "teacher.arch", f"{t.arch!r} is a {ARCHS[t.arch]} architecture, "
               f"teacher.family is {t.family}")
    elif t.spec is None:
        t.arch = "bert" if t.family == "masked_lm" else "llama"
    return t.family


def _family_of_spec(spec: str, src: str) -> str:
    """The family a local HF directory's config.json names (``architectures``); ConfigError for a hub id."""
    import json
    import os

    path = os.path.join(os.path.expanduser(spec), "config.json")
    if spec.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise ConfigError(f"{src}: teacher.spec {spec}: no such directory")
    if not os.path.isfile(path):
        raise ConfigError(f"{src}: teacher.family: set it (one of {', '.join(FAMILY_NAMES)}) for teacher.spec {spec!r}: "
                          "not a local directory with a config.json, and validation never reads a hub")
    try:
        archs = json.loads(open(path, encoding="utf-8").read()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise ConfigError(f"{src}: teacher.spec {spec!r}: unreadable config.json: {e}") from None
    named = family_of_architectures(archs)
    if named is not None:
        return named
    raise ConfigError(f"{src}: teacher.family: {path} names architectures {archs or '(none)'}, neither a masked- nor a "
                      f"causal-LM head; set teacher.family ({', '.join(FAMILY_NAMES)})")


def _check_method(name, depth, projection_dim, student_layers, src, where, family: str = "masked_lm") -> None:
    allowed = method_names()
    _check(name in allowed, src, f"{where}.name", f"unknown method {name!r}; allowed: {', '.join(allowed)}")
    missing = S.method_needs(name) - FAMILY_CAPABILITIES[family]  # a setting's own needs: _check_method_params
    if missing:
        runs = [m for m in allowed if not S.method_needs(m) - FAMILY_CAPABILITIES[family]]
        raise ConfigError(f"{src}: {where}.name: method {name!r} does not run on a {family} teacher: it needs "
                          f"{', '.join(sorted(missing))}, which {family} does not offer; allowed for {family}: "
                          f"{', '.join(runs)}")
    if depth is not None:
        _check(isinstance(depth, int) and 1 <= depth <= student_layers, src, f"{where}.depth",
               f"{depth} must be between 1 and the student's {student_layers} layers")
    _check(isinstance(projection_dim, int) and projection_dim > 0, src, f"{where}.projection_dim",
           f"must be a positive integer, got {projection_dim!r}")


def _check_method_params(name: str, params: dict, src: str, family: str = "masked_lm",
                         where: str = "method.params") -> None:
    """Every key of ``method.params`` must be a setting method ``name`` declares (no silent drops), each
    value in its declared range; a setting that needs a capability the family lacks is refused."""
    allowed = S.setting_names(name)
    for key, value in params.items():
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            raise ConfigError(f"{src}: {where}.{key}: method {name!r} takes no {key!r}"
                              f"{f'; did you mean {near[0]!r}?' if near else ''} (allowed: {', '.join(allowed)})")
        why = S.check_value(name, key, value)
        _check(why is None, src, f"{where}.{key}", str(why))
        need = S.declared(name)[key].metadata.get("needs") if key in S.declared(name) else None
        if need and value and need not in FAMILY_CAPABILITIES[family]:
            offer = [f for f, caps in FAMILY_CAPABILITIES.items() if need in caps]
            raise ConfigError(f"{src}: {where}.{key}: {value!r} needs a model family that offers {need!r}: a {family} "
                              f"teacher does not (use a {' or '.join(offer)} teacher)")


def _check_fsdp_method(cfg: Config, src: str) -> None:
    """Refuse under ``train.strategy: fsdp`` the objectives a sharded student cannot run (ConfigError)."""
    if cfg.train.strategy == "ddp":
        return
    m = cfg.method
    dynamic = S.declared(m.name).get("dynamic_weights")
    _check(not m.params.get("dynamic_weights", dynamic.default if dynamic else False), src, "train.strategy",
           f"fsdp: method {m.name!r} with gradient-aware weights (their extra gradient passes meet FSDP's "
           "resharding): set method.params.dynamic_weights: false")
    _check(m.name != "ddk", src, "train.strategy",
           "ddk measures its department gaps on rank 0 alone, which a sharded student cannot do: use ddp")
    _check(not m.params.get("lmbda"), src, "train.strategy",
           "fsdp: gkd's on-policy batches (method.params.lmbda > 0) generate with the student, which FSDP "
           "shards: use ddp or lmbda 0")


def compare_contenders(cfg: Config, src: str = "<config>"):
    """The contenders of ``cfg.compare`` (``raykd.comparison.Contender``); ConfigError when malformed."""
    from raykd.comparison import parse_contenders

    try:
        return parse_contenders(cfg.compare.methods)
    except ValueError as e:
        raise ConfigError(f"{src}: compare.methods: {e}") from None


def compare_tuning_seed(cfg: Config) -> int:
    """The seed of a compare study's tuning trials: ``compare.tune.seed`` or max(experiment.seeds) + 1."""
    return cfg.compare.tune.seed if cfg.compare.tune.seed is not None else max(cfg.experiment.seeds) + 1


def _check_compare(cfg: Config, src: str) -> None:
    """A compare study's section: known contenders that run on the family with valid fixed settings, a
    tuning budget, a declared family (``against``) among the contenders, declared test metrics of the
    family, shared settings to tune, two or more seeds. ConfigError naming the key otherwise."""
    from raykd.architectures import FAMILY_METRIC_KEYS
    from raykd.comparison import contender_space, parse_against

    c, family = cfg.compare, cfg.teacher.family
    contenders = compare_contenders(cfg, src)
    for i, k in enumerate(contenders):
        where = f"compare.methods[{i}]"
        _check_method(k.method, cfg.method.depth, cfg.method.projection_dim, cfg.student.layers, src, where, family)
        _check(not S.is_reference(k.method), src, f"{where}.name", f"{k.method!r} is a reference (trained without "
               "the teacher): every compare study tunes and runs it beside the contenders already")
        _check_method_params(k.method, k.params, src, family, where=f"{where}.{k.method}")
        probe = _build(Config, apply_overrides(to_dict(cfg), {"method.name": k.method, "method.params": k.params}), "",
                       src)
        _check_fsdp_method(probe, src)
        _check(cfg.train.strategy == "ddp" or "method.params.dynamic_weights" not in contender_space(k, {}), src,
               "train.strategy", f"fsdp: contender {k.label!r} would tune dynamic_weights (refused under fsdp): fix "
               f"it in compare.methods ({k.method}: {{dynamic_weights: false}})")
    _check(isinstance(c.tune.trials, int) and c.tune.trials >= 1, src, "compare.tune.trials",
           f"required: tuning trials per method, at least 1 (got {c.tune.trials!r})")
    _check(c.tune.scheduler in (None, "asha", "none"), src, "compare.tune.scheduler",
           f"{c.tune.scheduler!r} is not one of asha, none")
    _check(compare_tuning_seed(cfg) not in cfg.experiment.seeds, src, "compare.tune.seed",
           f"{c.tune.seed} is one of experiment.seeds {cfg.experiment.seeds}: tuning must not see a seed it is tested on")
    _check(cfg.search.algorithm in ("optuna", "random"), src, "search.algorithm",
           f"a compare study tunes every method with one search algorithm: optuna or random, not {cfg.search.algorithm}")
    _check(len(cfg.experiment.seeds) >= 2, src, "experiment.seeds",
           f"a compare study tests paired by seed: give two or more (got {cfg.experiment.seeds})")
    try:
        key, value = parse_against(c.against)
    except ValueError as e:
        raise ConfigError(f"{src}: compare.against: required: {e}") from None
    labels = [k.label for k in contenders]
    _check(key == "method" and value in labels, src, "compare.against",
           f"{c.against!r}: expected method=LABEL with LABEL one of {', '.join(labels)}")
    _check(len(labels) >= 2, src, "compare.methods", "a comparison needs two or more methods")
    allowed = [f"test/{m}" for m in FAMILY_METRIC_KEYS[family]]
    _check(isinstance(c.metrics, list) and len(c.metrics) > 0, src, "compare.metrics",
           f"required: the declared metrics, e.g. [{DEFAULT_METRIC[family].replace('val/', 'test/')}]")
    for i, m in enumerate(c.metrics):
        _check(m in allowed, src, "compare.metrics", f"{m!r} is not one of {', '.join(allowed)}")
        _check(m not in c.metrics[:i], src, "compare.metrics", f"{m!r} is declared twice (it would count twice in "
               "the Holm family)")
        _check(m.split("/", 1)[1] not in CONSTANT_METRICS, src, "compare.metrics", f"{m!r} is the same for every "
               "method of a study (a property of the data or the models' sizes): it cannot be compared")
    _check(bool(cfg.space), src, "space", "a compare study tunes the shared settings in space (e.g. lr) for every "
           "method and for the reference: give at least one")
    for name in cfg.space:
        path = resolve_key(name)
        _check(path != "method.name" and not path.startswith(("method.params.", "student.")), src, f"space.{name}",
               "in a compare study space holds the shared settings only: each method's own come from its declaration "
               "(fix one in compare.methods as NAME: {setting: value}); the student is study-wide")


def resolve_key(name: str) -> str:
    """The dotted config path of a search-space key (aliases expanded)."""
    return ALIASES.get(name, name)


def _check_domain(cfg: Config, name: str, spec, src: str) -> None:
    key = f"space.{name}"
    path = resolve_key(name)
    try:
        get_path(cfg, path)
    except KeyError:
        raise ConfigError(f"{src}: {key}: {path!r} is not a setting (aliases: {', '.join(ALIASES)})") from None
    _check(isinstance(spec, dict) and len(spec) == 1, src, key,
           f"expected one of {', '.join(DOMAINS)} with its values, e.g. {{choice: [1, 2]}}")
    kind, values = next(iter(spec.items()))
    _check(kind in DOMAINS, src, key, f"unknown domain {kind!r}; allowed: {', '.join(DOMAINS)}")
    if kind in ("choice", "grid"):
        _check(isinstance(values, list) and len(values) > 0, src, key, f"{kind} needs a non-empty list")
        for v in values:
            probe = apply_overrides(to_dict(cfg), {path: v})
            try:
                c = _build(Config, probe, "", src)
                _check_method(c.method.name, c.method.depth, c.method.projection_dim, c.student.layers, src, "method",
                              cfg.teacher.family)
                _check_method_params(c.method.name, c.method.params, src, cfg.teacher.family)
                _check_fsdp_method(c, src)
                _check_sampler(c.sampler.name, src)
            except ConfigError as e:
                raise ConfigError(f"{src}: {key}: value {v!r} is invalid: {str(e).split(': ', 1)[1]}") from None
    else:
        _check(isinstance(values, list) and len(values) in (2, 3) and all(isinstance(x, (int, float)) for x in values),
               src, key, f"{kind} needs [low, high] (qrandint: [low, high, q])")
        _check(values[0] < values[1], src, key, f"low {values[0]} must be below high {values[1]}")
        if kind == "loguniform":
            _check(values[0] > 0, src, key, "loguniform bounds must be positive")


def planned_trials(cfg: Config) -> int:
    """Trials the search runs before any confirm phase: grid size × seeds (grid), or num_samples; for a
    compare study every trial it runs (tuning, confirmation and the reference's)."""
    if cfg.compare is not None:
        from raykd.comparison import planned_compare_trials

        return planned_compare_trials(len(compare_contenders(cfg)), cfg.compare.tune.trials or 0,
                                      len(cfg.experiment.seeds), cfg.experiment.references)
    if cfg.search.algorithm == "grid":
        size = 1
        for spec in cfg.space.values():
            kind, values = next(iter(spec.items()))
            if kind not in ("choice", "grid"):
                raise ConfigError(f"search.algorithm grid: space entry with {kind!r} cannot be enumerated")
            size *= len(values)
        return size * len(cfg.experiment.seeds)
    return cfg.search.num_samples


# ------------------------------------------------------------------------------------------------ helpers
def to_dict(cfg) -> dict:
    """The config as plain nested dicts (YAML-serialisable)."""
    return dataclasses.asdict(cfg)


def get_path(cfg, path: str):
    """Value at a dotted path of a config (dataclasses or dicts); KeyError if absent."""
    node = cfg
    for part in path.split("."):
        if dataclasses.is_dataclass(node):
            if part not in {f.name for f in dataclasses.fields(node)}:
                raise KeyError(path)
            node = getattr(node, part)
        elif isinstance(node, dict):
            if part not in node:
                if path.startswith(("method.params.", "sampler.params.")):
                    return None
                raise KeyError(path)
            node = node[part]
        else:
            raise KeyError(path)
    return node


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of nested ``data`` with dotted-key overrides applied (missing mappings are created)."""
    import copy

    out = copy.deepcopy(data)
    for path, value in overrides.items():
        node = out
        parts = path.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "search.num_samples=4"]`` → {dotted key: YAML-typed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, plugins: list[str] | tuple = ()) -> Config:
    """Read a YAML config with ``yaml.safe_load`` (a Python tag is refused), apply dotted overrides
    (the command line wins), import its ``plugins`` (and ``plugins`` given here, e.g. ``--plugin``),
    build and validate the dataclasses. Raises ConfigError on any problem."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{src}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML (Python tags are refused): {str(e).splitlines()[0]}") from None
    return config_from_dict(data, src, overrides, plugins)


def config_from_dict(data: dict, src: str = "<dict>", overrides: dict[str, Any] | None = None,
                     plugins: list[str] | tuple = ()) -> Config:
    """A validated Config from nested dicts (as YAML gives them): overrides applied, plugins
    imported (their registrations are then valid names). ``src`` names the source in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: top level must be a mapping of sections")
    if overrides:
        data = apply_overrides(data, {resolve_key(k) if k in ALIASES else k: v for k, v in overrides.items()})
    if plugins:
        data = {**data, "plugins": list(data.get("plugins") or []) + [p for p in plugins
                                                                        if p not in (data.get("plugins") or [])]}
    cfg = _build(Config, data, "", src)
    import_plugins(cfg.plugins, src)
    return validate(cfg, src)


def as_config(config, overrides: dict[str, Any] | None = None) -> Config:
    """``config`` as a validated Config: a YAML path (str or Path), nested dicts, or a Config
    (re-validated, with ``overrides`` applied)."""
    if isinstance(config, Config):
        return config_from_dict(to_dict(config), "<Config>", overrides)
    if isinstance(config, dict):
        return config_from_dict(config, "<dict>", overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise ConfigError(f"config: expected a YAML path, a dict or a Config, got {type(config).__name__}")


def import_plugins(names: list, src: str = "<config>", paths: list[str] | tuple = ()) -> list:
    """Import each plugin module (a dotted name on ``sys.path``; ``paths`` are added to it first
    when missing: where the driver found them); returns the modules. ConfigError naming the module
    when one cannot be imported."""
    import importlib
    import sys

    for d in paths:
        if d not in sys.path:
            sys.path.append(d)
    modules = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{src}: plugins: {name!r} is not a module name")
        try:
            modules.append(importlib.import_module(name))
        except Exception as e:  # not found, or the module failed while importing (a name registered twice…)
            why = str(e).splitlines()[0] if str(e) else ""
            raise ConfigError(f"{src}: plugins: cannot import {name!r}: {type(e).__name__}: {why}") from None
    return modules


def plugin_paths(names: list) -> list[str]:
    """The ``sys.path`` entries the (imported) plugin modules were found under, for workers."""
    import sys

    out = []
    for name in names:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        root = Path(f).resolve().parent
        for _ in range(name.count(".") + (1 if Path(f).name == "__init__.py" else 0)):
            root = root.parent
        if str(root) not in out:
            out.append(str(root))
    return out
