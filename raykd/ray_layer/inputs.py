"""R: a study's inputs, prepared once on the driver and shared by every trial, all content-addressed:
the prepared data (generated corpus → tokenized shards), the (domain-adapted) teacher, the sampler
scores when a scored sampler may run, and the teacher-output cache. Returns the study's plan."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from raykd import config as C
from raykd.errors import RaykdError
from raykd.trial_spec import SCORED_SAMPLERS


def log(msg: str) -> None:
    """Print a progress line to stderr (flushed)."""
    print(msg, file=sys.stderr, flush=True)


def prepare_inputs(cfg: C.Config) -> dict:
    """Driver-side, content-addressed inputs shared by every trial: the prepared data (synth → prepare),
    the (domain-adapted) teacher, and sampler scores when a scored sampler may run. Returns the plan."""
    from raykd.data.shards import PrepareSettings, load_manifest, prepare
    from raykd.models.teacher import AdaptSettings, TeacherShape, adapt_key, adapt_prepared, load_teacher

    work = Path(cfg.data.work_dir).absolute()
    if cfg.data.prepared:
        prepared = str(Path(cfg.data.prepared).absolute())
        manifest = load_manifest(prepared, deep=True)  # every shard's sha256: a tampered directory never trains
    else:
        from raykd.data.synth import write_corpus

        s = cfg.data.synth
        raw = work / f"synth-{s.dialogs}-{s.seed}"
        write_corpus(raw, s.dialogs, s.seed)
        prepared = str(work / f"prepared-{s.dialogs}-{s.seed}-{cfg.data.max_length}")
        manifest = prepare(PrepareSettings(raw=[str(raw)], out=prepared, tokenizer=cfg.data.tokenizer,
                                           max_length=cfg.data.max_length))
    sh = cfg.teacher.shape
    shape = TeacherShape(sh.layers, sh.hidden, sh.heads, sh.intermediate, max_position=max(cfg.data.max_length, 64))
    if cfg.teacher.adapt is not None:
        a = cfg.teacher.adapt
        settings = AdaptSettings(steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_length=cfg.data.max_length,
                                 threads=os.cpu_count() or 1)
        key = adapt_key(manifest["key"], cfg.teacher.spec or "config", None if cfg.teacher.spec else shape, settings)
        teacher = str(work / "teachers" / key[:16])
        adapt_prepared(prepared, teacher, cfg.teacher.spec, shape, settings, log=log)
    elif cfg.teacher.spec:
        teacher, key = cfg.teacher.spec, "spec:" + cfg.teacher.spec
        check_teacher_matches_data(teacher, prepared, manifest, cfg.teacher.trust_remote_code, cfg.teacher.revision)
    else:
        raise C.ConfigError("teacher: set teacher.spec or teacher.adapt (a random teacher teaches nothing)")
    teacher_load = {"trust_remote_code": cfg.teacher.trust_remote_code, "revision": cfg.teacher.revision} \
        if cfg.teacher.spec and cfg.teacher.adapt is None else {}
    samplers = {cfg.sampler.name} | set(space_values(cfg, "sampler.name"))
    scores = None
    if samplers & set(SCORED_SAMPLERS):
        from raykd.data.sampling import compute_scores

        scores = str(compute_scores(prepared, load_teacher(teacher, **teacher_load), key, log=log))
    return {"base": C.to_dict(cfg), "prepared": prepared, "teacher": teacher, "teacher_load": teacher_load,
            "teacher_key": key, "data_key": manifest["key"], "scores": scores,
            "plugin_paths": C.plugin_paths(cfg.plugins)}


def teacher_cache_for(cfg: C.Config, plan: dict, force: bool = False, max_gb: float | None = None) -> dict | None:
    """Build (or reuse) the teacher-output cache for this study when ``teacher.cache`` is set (or
    ``force``) and some of its trials can read it; returns ``{"dir", "layers", "hidden",
    "teacher_layers"}`` for the plan, else None. Needs a running Ray."""
    from raykd.ray_layer.cache import build_cache, cache_use, study_layers, teacher_config

    if not (cfg.teacher.cache or force):
        return None
    methods = {cfg.method.name} | set(space_values(cfg, "method.name"))
    samplers = {cfg.sampler.name} | set(space_values(cfg, "sampler.name"))
    if all(cache_use(m, s) for m in methods for s in samplers):
        reasons = sorted({cache_use(m, s) for m in methods for s in samplers})
        log(f"[cache] no trial of this study can read a teacher cache ({'; '.join(reasons)}): teacher runs online")
        return None
    tconf = teacher_config(plan["teacher"], plan.get("teacher_load"))
    layers = study_layers(cfg, tconf.num_hidden_layers)
    limit = (max_gb if max_gb is not None else cfg.teacher.cache_max_gb) * 1e9
    out = build_cache(plan["prepared"], plan["teacher"], layers, plan.get("teacher_load"), max_bytes=limit, log=log)
    return {"dir": str(out), "layers": layers, "hidden": tconf.hidden_size, "teacher_layers": tconf.num_hidden_layers}


def check_teacher_matches_data(spec: str, prepared: str, manifest: dict, trust_remote_code: bool = False,
                               revision: str | None = None) -> None:
    """Refuse (RaykdError) a teacher that cannot read the prepared shards: a missing path, a
    vocabulary smaller than the data's token ids, or a tokenizer of its own that differs from the
    one the shards were tokenized with."""
    from transformers import AutoConfig, AutoTokenizer

    if spec.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise RaykdError(f"teacher.spec {spec}: no such directory")
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as e:
        raise RaykdError(f"teacher.spec {spec}: cannot read its config: {str(e).splitlines()[0][:200]}") from None
    data_vocab = int(manifest["tokenizer"]["vocab_size"])
    if config.vocab_size < data_vocab:
        raise RaykdError(f"teacher.spec {spec}: its vocabulary ({config.vocab_size}) is smaller than the prepared "
                         f"data's tokenizer ({data_vocab} tokens): prepare the data with --tokenizer {spec}")
    if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, f)) for f in ("tokenizer.json", "vocab.txt")):
        mine = AutoTokenizer.from_pretrained(spec).get_vocab()
        theirs = AutoTokenizer.from_pretrained(os.path.join(prepared, manifest["tokenizer"]["path"])).get_vocab()
        if mine != theirs:
            raise RaykdError(f"teacher.spec {spec}: its tokenizer does not match the one the prepared shards in "
                             f"{prepared} were tokenized with: prepare the data with --tokenizer {spec}")


def space_values(cfg: C.Config, path: str) -> list:
    """The values the study's ``space`` gives dotted key ``path`` (choices and grids; [] when not searched)."""
    out = []
    for name, spec in cfg.space.items():
        if C.resolve_key(name) == path:
            kind, values = next(iter(spec.items()))
            if kind in ("choice", "grid"):
                out.extend(values)
    return out
