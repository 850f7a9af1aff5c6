"""Every setting as a dataclass; YAML (``yaml.safe_load``) → validated config; search-space parsing.

Config flows one way: YAML → ``load_config`` (unknown keys, wrong types and impossible values fail
here, naming the file, the key and the allowed values) → dataclasses → code.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any


from raykd.distill import settings as S
from raykd.errors import RaykdError
from raykd.models.families.spec import ModelShape

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
class ShapeConfig(ModelShape):
    """``teacher.shape``: the sizes (``ModelShape``) and, for a hub teacher's offline ``--dry-run``, what it records."""

    vocab: int | None = None  # recorded for a hub teacher (offline --dry-run); a built one takes the tokenizer's
    kv_heads: int | None = None  # recorded grouped-query attention heads (null: as many as heads)


@dataclass
class AdaptConfig:
    """``teacher.adapt``: the teacher's domain adaptation before a study (``raykd.stages.adapt``, whose
    ``AdaptSettings`` add what is not the YAML's to set: the objective's constants, max length, seed, threads)."""

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
    # the teacher's own tokenizer when it is not the data's (the student's, data.tokenizer): train:N, train-bpe:N,
    # a saved tokenizer directory or a hub id (null: the data's). A different one allows only the objectives
    # that distil across tokenizers (raykd.config.tokenizers; each method declares whether it does)
    tokenizer: str | None = None
    adapt: AdaptConfig | None = field(default_factory=AdaptConfig)
    # none | hidden | logits | both: what trials read from the teacher-output cache (raykd.cache) instead of
    # running the teacher — hidden states, the top-k logits (causal_lm), or both (true ≡ hidden, false ≡ none)
    cache: str | bool = "none"
    cache_topk: int = 64  # the logit cache's tokens per position (a study caches its largest searched value)
    cache_max_gb: float = 20.0  # the cache build refuses above this estimated size
    # a causal teacher's top-k log-probs made elsewhere and imported (python -m raykd.cache import): the
    # imported cache directory the trials read instead of a cache raykd builds (with cache: logits)
    cache_import: str | None = None
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
    # CPUs each worker reserves; null (the default): 1, except a local-mode trial on CPUs, which takes an equal
    # share of the node with one trial per CPU (``ray_layer.tuners.trial_cpus``: 0.5 each on 2 CPUs)
    cpus_per_worker: float | None = None
    threads_per_worker: int = 0  # torch threads per worker; 0: the rule (``ray_layer.tuners.local_threads``)
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
    """A compare study (raykd.results.comparison): every method tuned with the same budget, confirmed on
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
