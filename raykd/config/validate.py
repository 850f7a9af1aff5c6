"""Values that types alone cannot check: ranges, families, methods and their settings, compare sections and
search domains. Each failure names the file, the key and what is allowed."""

from __future__ import annotations

import os

import difflib


from raykd.models.families.spec import (DEFAULT, all_archs, arch_family, family_names, family_of_architectures,
                                        family_spec)
from raykd.distill import settings as S
from raykd.config.contenders import compare_contenders, compare_tuning_seed
from raykd.config.schema import (ALIASES, CACHE_KINDS, CONSTANT_METRICS, DOMAINS,
                                 FAULT_KINDS, METHOD_NAMES, SAMPLER_NAMES, TEACHER_SHARD, Config, ConfigError,
                                 _build, apply_overrides, get_path, parse_fault, to_dict)
from raykd.config.space import planned_trials, resolve_key
from raykd.config.tokenizers import TokenizerSpecError, tokenizer_mismatch


def _check(cond: bool, src: str, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{src}: {key}: {msg}")


def validate(cfg: Config, src: str = "<config>") -> Config:
    """Check values that types alone cannot; returns ``cfg``. Raises ConfigError naming file and key."""
    _check_data_and_models(cfg, src)
    _check_family(cfg, src)
    _check_tokenizers(cfg, src)
    _check_method(cfg.method.name, cfg.method.depth, cfg.method.projection_dim, cfg.student.layers, src, "method",
                  cfg.teacher.family)
    _check_method_params(cfg.method.name, cfg.method.params, src, cfg.teacher.family)
    _check_sampler(cfg.sampler.name, src)
    _check_train(cfg, src)
    _check_search(cfg, src)
    return cfg


def _check_data_and_models(cfg: Config, src: str) -> None:
    """The experiment's seeds and mode, the data source, the teacher's shape, cache and remote code, the student."""
    e = cfg.experiment
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
    if cfg.teacher.cache_import is not None:
        _check(cfg.teacher.cache == "logits", src, "teacher.cache_import",
               f"an imported top-k cache is read with teacher.cache: logits (got {cfg.teacher.cache!r})")
        _check(cfg.compare is None, src, "teacher.cache_import",
               "a compare study tunes each contender's temperature; imported log-probs are exact at one temperature "
               "(run a plain study at the source's temperature)")
        _check(os.path.isfile(os.path.join(os.path.expanduser(cfg.teacher.cache_import), "manifest.json")), src,
               "teacher.cache_import", f"{cfg.teacher.cache_import}: not a cache directory (no manifest.json; make one "
               "with python -m raykd.cache import)")
    _check(cfg.student.layers >= 1, src, "student.layers", "must be at least 1")
    if cfg.student.hidden and cfg.student.heads:
        _check(cfg.student.hidden % cfg.student.heads == 0, src, "student.heads",
               f"{cfg.student.hidden} (student.hidden) is not divisible by {cfg.student.heads} heads")
    if cfg.teacher.spec is None:  # a built teacher: its shape is the config's (a spec's may not be recorded)
        _check(cfg.student.layers <= sh.layers, src, "student.layers",
               f"{cfg.student.layers} is more than the teacher's {sh.layers} layers (teacher.shape.layers)")


def _check_family(cfg: Config, src: str) -> None:
    """The teacher's family (resolved), and what it supports: samplers, teacher caches, its default lead metric."""
    fam = family_spec(resolve_family(cfg, src))
    if fam.samplers is not None:
        searched = [next(iter(sp.values())) for k, sp in cfg.space.items()
                    if resolve_key(k) == "sampler.name" and isinstance(sp, dict) and sp]
        for name in [cfg.sampler.name] + [v for vals in searched if isinstance(vals, list) for v in vals]:
            _check(name not in SAMPLER_NAMES or name in fam.samplers, src, "sampler.name",
                   f"{name!r} scores pairs with the masked-LM head; a {fam.name} study samples "
                   f"{' or '.join(fam.samplers)}")
    topk = [f for f in family_names() if family_spec(f).topk_cache]
    _check(cfg.teacher.cache in fam.teacher_caches, src, "teacher.cache",
           f"{cfg.teacher.cache!r}: the top-k logit cache serves {' and '.join(topk)} teachers (an encoder's "
           f"distillation logits are taken on freshly masked inputs every step); allowed here: "
           f"{', '.join(fam.teacher_caches)}")
    if cfg.experiment.metric is None:
        cfg.experiment.metric = fam.default_metric


def _mismatch(cfg: Config, src: str):
    """``tokenizers.tokenizer_mismatch`` of the study, ConfigError naming the key for an unreadable spec."""
    try:
        return tokenizer_mismatch(cfg)
    except TokenizerSpecError as e:
        key = "teacher.tokenizer" if str(e).startswith(str(cfg.teacher.tokenizer) + ":") else "data.tokenizer"
        raise ConfigError(f"{src}: {key}: {e}") from None


def _check_tokenizers(cfg: Config, src: str) -> None:
    """Teacher and student on different tokenizers (``teacher.tokenizer`` ≠ ``data.tokenizer``): a family
    that carries the teacher's own tokenization, an objective that distils across tokenizers (the study's
    method, every searched one), and no top-k logit cache. ConfigError naming both tokenizers otherwise."""
    for name in cfg.space:
        _check(resolve_key(name) not in ("data.tokenizer", "teacher.tokenizer"), src, f"space.{name}",
               "a study prepares its data and teacher for one pair of tokenizers: run one study per tokenizer")
    mm = _mismatch(cfg, src)
    if mm is None:
        return
    fam = family_spec(cfg.teacher.family)
    _check(fam.has("teacher_tokens"), src, "teacher.tokenizer",
           f"the teacher's tokenizer {mm[0].describe()} differs from the student's {mm[1].describe()} "
           f"(data.tokenizer): a {fam.name} study distils over one tokenizer (across tokenizers: "
           f"{', '.join(f for f in family_names() if family_spec(f).has('teacher_tokens'))})")
    if cfg.compare is None:  # a compare study's contenders each name their method (checked there)
        _check_tokenizer_fit(cfg, cfg.method.name, src, "method.name")
    _check(cfg.teacher.cache not in ("logits", "both"), src, "teacher.cache",
           f"{cfg.teacher.cache}: the top-k logit cache holds the teacher's tokenizer's ids, which mean nothing to the "
           f"student's: the teacher's tokenizer {mm[0].describe()} differs from the student's {mm[1].describe()} "
           "(use none or hidden)")


def _check_tokenizer_fit(cfg: Config, name: str, src: str, where: str) -> None:
    """Refuse method ``name`` when the study's tokenizers differ and it needs one tokenizer on both sides."""
    if S.cross_tokenizer(name) or name not in method_names():
        return
    mm = _mismatch(cfg, src)
    if mm is None:
        return
    fam = family_spec(cfg.teacher.family)
    fits = [m for m in method_names() if S.cross_tokenizer(m) and not S.is_reference(m)
            and not S.method_needs(m) - fam.capabilities]
    raise ConfigError(f"{src}: {where}: {name!r} compares teacher and student over one tokenizer, but the teacher's "
                      f"tokenizer {mm[0].describe()} (teacher.tokenizer) differs from the student's "
                      f"{mm[1].describe()} (data.tokenizer); across tokenizers use {' or '.join(fits)} (or the "
                      f"reference {fam.reference_method}, which reads no teacher)")


def _check_train(cfg: Config, src: str) -> None:
    """The train section: sizes, learning rate, chunking, local mode, strategy (with FSDP's limits), teacher
    sharding, fault injection, precision."""
    t = cfg.train
    for key, lo in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("eval_every", 1), ("num_workers", 1),
                    ("eval_pairs", 8), ("checkpoint_keep", 1)):
        _check(getattr(t, key) >= lo, src, f"train.{key}", f"must be at least {lo}, got {getattr(t, key)}")
    _check(t.lr > 0, src, "train.lr", "must be positive")
    _check(t.cpus_per_worker is None or t.cpus_per_worker > 0, src, "train.cpus_per_worker",
           f"must be positive, or null (the rule: 1, or a local-mode trial's share of the node), got {t.cpus_per_worker}")
    _check(t.threads_per_worker >= 0, src, "train.threads_per_worker",
           f"must be 0 (the rule) or a positive number of torch threads, got {t.threads_per_worker}")
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
    shardable = [f for f in family_names() if family_spec(f).shardable_teacher]
    _check(cfg.teacher.shard != "always" or (t.strategy == "fsdp" and family_spec(cfg.teacher.family).shardable_teacher),
           src, "teacher.shard", f"always shards a {' or '.join(shardable)} teacher over an FSDP worker group: it needs "
           f"train.strategy fsdp and teacher.family {' or '.join(shardable)} (got {t.strategy}, {cfg.teacher.family}; "
           "an encoder teacher fits one GPU)")
    _check(t.fault is None or parse_fault(t.fault) is not None, src, "train.fault",
           f"{t.fault!r} is not KIND@STEP with KIND one of {', '.join(FAULT_KINDS)} (e.g. sigkill@8)")
    _check(t.precision in ("auto", "fp32", "fp16", "bf16"), src, "train.precision",
           f"{t.precision!r} is not one of auto, fp32, fp16, bf16")


def _check_search(cfg: Config, src: str) -> None:
    """The search section, every search domain, a compare section, and the planned trials against max_trials."""
    s = cfg.search
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
    names = family_names()
    _check(t.family is None or t.family in names, src, "teacher.family", f"{t.family!r} is not one of {', '.join(names)}")
    _check(t.arch is None or t.arch in all_archs(), src, "teacher.arch",
           f"{t.arch!r} is not one of {', '.join(all_archs())}")
    if t.family is None:
        if t.spec is None:
            t.family = arch_family(t.arch) if t.arch else names[0]
        else:
            t.family = _family_of_spec(t.spec, src)
    if t.arch is not None:
        _check(arch_family(t.arch) == t.family, src, "teacher.arch", f"{t.arch!r} is a {arch_family(t.arch)} "
               f"architecture, teacher.family is {t.family}")
    elif t.spec is None:
        t.arch = family_spec(t.family).archs[0]
    return t.family


def _family_of_spec(spec: str, src: str) -> str:
    """The family a local HF directory's config.json names (``architectures``); ConfigError for a hub id."""
    import json
    import os

    path = os.path.join(os.path.expanduser(spec), "config.json")
    if spec.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise ConfigError(f"{src}: teacher.spec {spec}: no such directory")
    if not os.path.isfile(path):
        raise ConfigError(f"{src}: teacher.family: set it (one of {', '.join(family_names())}) for teacher.spec {spec!r}: "
                          "not a local directory with a config.json, and validation never reads a hub")
    try:
        archs = json.loads(open(path, encoding="utf-8").read()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise ConfigError(f"{src}: teacher.spec {spec!r}: unreadable config.json: {e}") from None
    named = family_of_architectures(archs)
    if named is not None:
        return named
    raise ConfigError(f"{src}: teacher.family: {path} names architectures {archs or '(none)'}, the head of no "
                      f"registered family; set teacher.family ({', '.join(family_names())})")


def _check_method(name, depth, projection_dim, student_layers, src, where, family: str = DEFAULT) -> None:
    allowed = method_names()
    _check(name in allowed, src, f"{where}.name", f"unknown method {name!r}; allowed: {', '.join(allowed)}")
    offers = family_spec(family).capabilities
    missing = S.method_needs(name) - offers  # a setting's own needs: _check_method_params
    if missing:
        runs = [m for m in allowed if not S.method_needs(m) - offers]
        raise ConfigError(f"{src}: {where}.name: method {name!r} does not run on a {family} teacher: it needs "
                          f"{', '.join(sorted(missing))}, which {family} does not offer; allowed for {family}: "
                          f"{', '.join(runs)}")
    if depth is not None:
        _check(isinstance(depth, int) and 1 <= depth <= student_layers, src, f"{where}.depth",
               f"{depth} must be between 1 and the student's {student_layers} layers")
    _check(isinstance(projection_dim, int) and projection_dim > 0, src, f"{where}.projection_dim",
           f"must be a positive integer, got {projection_dim!r}")


def _check_method_params(name: str, params: dict, src: str, family: str = DEFAULT,
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
        if need and value and not family_spec(family).has(need):
            offer = [f for f in family_names() if family_spec(f).has(need)]
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


def _check_compare(cfg: Config, src: str) -> None:
    """A compare study's section: known contenders that run on the family with valid fixed settings, a
    tuning budget, a declared family (``against``) among the contenders, declared test metrics of the
    family, shared settings to tune, two or more seeds. ConfigError naming the key otherwise."""
    from raykd.config.contenders import contender_space, parse_against

    c, family = cfg.compare, cfg.teacher.family
    contenders = compare_contenders(cfg, src)
    for i, k in enumerate(contenders):
        where = f"compare.methods[{i}]"
        _check_method(k.method, cfg.method.depth, cfg.method.projection_dim, cfg.student.layers, src, where, family)
        _check_tokenizer_fit(cfg, k.method, src, where)
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
    allowed = [f"test/{m}" for m in family_spec(family).metric_keys]
    _check(isinstance(c.metrics, list) and len(c.metrics) > 0, src, "compare.metrics",
           f"required: the declared metrics, e.g. [{family_spec(family).default_metric.replace('val/', 'test/')}]")
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
                _check_tokenizer_fit(cfg, c.method.name, src, "method.name")
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
