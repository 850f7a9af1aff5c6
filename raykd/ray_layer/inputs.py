"""R: a study's inputs, prepared once and shared by every trial, all content-addressed: the prepared
data (generated corpus → tokenized shards) on the driver (``prepare_inputs``); the teacher's domain
adaptation and the sampler scores as Ray tasks that take a GPU when the cluster has one
(``complete_inputs``); the teacher-output cache with Ray Data (``teacher_cache_for``). They make up
the study's plan (a ``StudyPlan`` every trial receives)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
import sys
from pathlib import Path

from raykd import config as C
from raykd.errors import RaykdError
from raykd.train.trial_spec import SCORED_SAMPLERS, StudyPlan


def log(msg: str) -> None:
    """Print a progress line to stderr (flushed)."""
    print(msg, file=sys.stderr, flush=True)


def prepare_inputs(cfg: C.Config) -> StudyPlan:
    """The study's inputs that the driver prepares itself, content-addressed: the prepared data
    (generated corpus → tokenized shards, or a prepared directory verified shard by shard), and the
    teacher it will use (a spec checked against the data, or the directory its adaptation goes to).
    Returns the plan; ``complete_inputs`` then does the heavy part on the cluster."""
    from raykd.data.shards import PrepareSettings, load_manifest, prepare
    from raykd.models.families import TeacherShape, family_spec
    from raykd.stages.adapt import AdaptSettings, adapt_key

    work = Path(cfg.data.work_dir).absolute()
    if cfg.data.prepared:
        prepared = str(Path(cfg.data.prepared).absolute())
        manifest = load_manifest(prepared, deep=True)  # every shard's sha256: a tampered directory never trains
    else:
        from raykd.data.synth import write_corpus

        s = cfg.data.synth
        raw = work / f"synth-{s.dialogs}-{s.seed}"
        write_corpus(raw, s.dialogs, s.seed)
        prepared = str(generated_prepared_dir(cfg.data))
        manifest = prepare(PrepareSettings(raw=[str(raw)], out=prepared, tokenizer=cfg.data.tokenizer,
                                           max_length=cfg.data.max_length))
    sh, fam = cfg.teacher.shape, family_spec(cfg.teacher.family)
    view = teacher_view_of(cfg, prepared, manifest)
    # what the teacher reads: the data itself, or its teacher view when the teacher has a tokenizer of its own
    t_prepared, t_manifest = (view["prepared"], view.pop("manifest")) if view else (prepared, manifest)
    # a templated sequence is prompt + response (each up to max_length) + the template's tokens; a family with
    # one architecture needs no name for it (and its adaptation key stays what it was before archs were named)
    shape = TeacherShape(sh.layers, sh.hidden, sh.heads, sh.intermediate,
                         max_position=max(cfg.data.max_length * fam.max_position_factor, 64),
                         arch=cfg.teacher.arch if len(fam.archs) > 1 else None)
    adapt = None
    if cfg.teacher.adapt is not None:
        a = cfg.teacher.adapt
        settings = AdaptSettings(**asdict(a), max_length=cfg.data.max_length,
                                 threads=os.cpu_count() or 1)
        key = adapt_key(t_manifest["key"], cfg.teacher.spec or "config", None if cfg.teacher.spec else shape,
                        settings, cfg.teacher.family)
        teacher = str(work / "teachers" / key[:16])
        adapt = {"source": cfg.teacher.spec, "shape": shape, "settings": settings, "family": cfg.teacher.family,
                 "prepared": t_prepared}
    elif cfg.teacher.spec:
        teacher, key = cfg.teacher.spec, "spec:" + cfg.teacher.spec
        check_teacher_matches_data(teacher, t_prepared, t_manifest, cfg.teacher.trust_remote_code,
                                   cfg.teacher.revision)
    else:
        raise C.ConfigError("teacher: set teacher.spec or teacher.adapt (a random teacher teaches nothing)")
    teacher_load = {"trust_remote_code": cfg.teacher.trust_remote_code, "revision": cfg.teacher.revision} \
        if cfg.teacher.spec and cfg.teacher.adapt is None else {}
    teacher_load["family"] = cfg.teacher.family
    template = causal_template_of(prepared, manifest, cfg) if fam.template else None
    if cfg.student.spec:
        check_student_matches_data(cfg.student.spec, cfg.student.revision, prepared, manifest)
    plan = StudyPlan(base=C.to_dict(cfg), prepared=prepared, teacher=teacher, teacher_load=teacher_load,
                     teacher_key=key, data_key=manifest["key"], adapt=adapt, plugin_paths=C.plugin_paths(cfg.plugins),
                     template=template, teacher_view=view)
    if cfg.teacher.cache_import:  # refused now, not after the teacher's adaptation
        check_imported_cache(cfg, plan)
    return plan


def teacher_view_of(cfg: C.Config, prepared: str, manifest: dict) -> dict | None:
    """The teacher's own tokenization of the prepared data when ``teacher.tokenizer`` differs from the
    student's (``data.teacher_view``, made or reused here): {"prepared", "key", "vocab", "template",
    "manifest"} (the manifest is the driver's, not the plan's); None with one tokenizer."""
    from raykd.config.tokenizers import tokenizer_mismatch
    from raykd.data.teacher_view import prepare_view
    from raykd.models.families import family_spec

    mismatch = tokenizer_mismatch(cfg)
    if mismatch is None:
        return None
    log(f"[inputs] the teacher reads its own tokenizer {mismatch[0].describe()}, the student "
        f"{mismatch[1].describe()}: a teacher view of the prepared data")
    t_prepared, t_manifest = prepare_view(prepared, manifest, cfg.teacher.tokenizer)
    template = causal_template_of(t_prepared, t_manifest, cfg) if family_spec(cfg.teacher.family).template else None
    return {"prepared": t_prepared, "key": t_manifest["key"], "vocab": int(t_manifest["tokenizer"]["vocab_size"]),
            "template": template, "manifest": t_manifest}


def generated_prepared_dir(data) -> Path:
    """Where the generated corpus of ``data`` (a ``DataConfig``) is prepared in its work directory: one directory
    per corpus, maximum length and tokenizer (the default tokenizer's keeps the name it had before tokenizers
    were told apart, so its caches stay valid), so that two studies with other tokenizers never prepare into
    — and overwrite — one directory."""
    import re

    from raykd.config.schema import DataConfig

    name = f"prepared-{data.synth.dialogs}-{data.synth.seed}-{data.max_length}"
    if data.tokenizer != DataConfig.tokenizer:
        name += "-" + re.sub(r"[^A-Za-z0-9.]+", "-", data.tokenizer).strip("-")[:48] + "-" + \
            hashlib.sha256(data.tokenizer.encode()).hexdigest()[:8]
    return Path(data.work_dir).absolute() / name


def causal_template_of(prepared: str, manifest: dict, cfg: C.Config) -> dict:
    """The prompt/response template of a causal study (``data.template``) for the prepared data's
    tokenizer, as a dict for the plan; RaykdError when that tokenizer cannot end a response."""
    from transformers import AutoTokenizer

    from raykd.data.template import causal_template

    tok = AutoTokenizer.from_pretrained(os.path.join(prepared, manifest["tokenizer"]["path"]))
    try:
        return causal_template(tok).as_dict()
    except ValueError as e:
        key = "data.tokenizer" if manifest["tokenizer"]["spec"] == cfg.data.tokenizer else "teacher.tokenizer"
        raise RaykdError(f"{key} {manifest['tokenizer']['spec']}: {e}: a causal_lm study needs a tokenizer "
                         "with eos and pad tokens (train-bpe:VOCAB, or the teacher's own)") from None


def complete_inputs(cfg: C.Config, plan: StudyPlan) -> StudyPlan:
    """The heavy inputs, each a Ray task on a GPU when the cluster has one (``run_heavy``), skipped
    when already on disk: the teacher's domain adaptation and, when a scored sampler may run, its
    scoring pass over the train split. Returns the plan, complete (``adapt`` removed, ``scores`` set)."""
    from raykd.stages.score import scores_dir
    from raykd.data.shards import load_manifest
    from raykd.stages.adapt import is_adapted

    adapt, plan.adapt = plan.adapt, None
    if adapt is not None:
        if is_adapted(plan.teacher, plan.teacher_key):
            log(f"[adapt] reusing {plan.teacher} (same data, teacher and settings)")
        else:
            run_heavy(_adapt_task, adapt.get("prepared", plan.prepared), plan.teacher, adapt["source"], adapt["shape"],
                      adapt["settings"], adapt.get("family"), what="teacher adaptation",
                      plugins=(cfg.plugins, plan.plugin_paths))
    samplers = {cfg.sampler.name} | set(space_values(cfg, "sampler.name"))
    if samplers & set(SCORED_SAMPLERS):
        out = scores_dir(plan.prepared, plan.teacher_key, load_manifest(plan.prepared))
        if (out / "scores.parquet").exists():
            log(f"[scores] reusing {out}")
        else:
            out = run_heavy(_scores_task, plan.prepared, plan.teacher, plan.teacher_load, plan.teacher_key,
                            what="sampler scoring", plugins=(cfg.plugins, plan.plugin_paths))
        plan.scores = str(out)
    return plan


def run_heavy(fn, *args, what: str, plugins: tuple = ((), ())):
    """``fn(*args, device=…, log=…)`` as a Ray task that takes a GPU when the cluster has one (else
    one CPU: the task sets its own torch threads), with the study's ``plugins`` (module names, their
    paths) imported first; its log lines are printed here as they come. Returns its result; its error
    is raised here."""
    import ray
    from ray.util.queue import Queue

    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    log(f"[inputs] {what}: a Ray task on {'a GPU' if gpu else 'CPU (the cluster has no GPU)'}")
    lines = Queue()
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)(_logged)
    ref = task.remote(fn, lines, plugins, *args)
    try:
        while True:
            done, _ = ray.wait([ref], timeout=1.0)
            while not lines.empty():
                log(lines.get_nowait())
            if done:
                return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RaykdError):  # bad input found in the task: the usual one-line error
            raise e.cause from None
        raise
    finally:
        ray.kill(lines.actor)


def _logged(fn, lines, plugins: tuple, *args):
    """Inside the task: the study's plugins imported (a plugin family's model), the device (CUDA when Ray
    gave this task a GPU) and a log into ``lines``."""
    import torch

    if plugins[0]:
        C.import_plugins(list(plugins[0]), "<task>", plugins[1])
    return fn(*args, device="cuda" if torch.cuda.is_available() else "cpu", log=lines.put)


def _adapt_task(prepared: str, out: str, source, shape, settings, family, device: str, log):
    from raykd.stages.adapt import adapt_prepared

    return adapt_prepared(prepared, out, source, shape, settings, log=log, device=device, family=family)


def _scores_task(prepared: str, teacher: str, teacher_load: dict, key: str, device: str, log):
    import torch

    from raykd.stages.score import compute_scores
    from raykd.models.teacher import load_teacher

    torch.set_num_threads(os.cpu_count() or 1)  # Ray sets OMP_NUM_THREADS=1 in its workers
    return compute_scores(prepared, load_teacher(teacher, **teacher_load).to(device), key, log=log)


def teacher_cache_for(cfg: C.Config, plan: StudyPlan, force: bool = False, max_gb: float | None = None) -> dict | None:
    """Build (or reuse) the teacher-output cache for this study when ``teacher.cache`` is set (or
    ``force``) and some of its trials can read it; returns ``{"dir", "layers", "hidden",
    "teacher_layers"}`` for the plan, else None. Needs a running Ray."""
    from raykd.models.families.spec import family_spec
    from raykd.ray_layer.cache.builder import teacher_config
    from raykd.ray_layer.cache.masked_lm import build_cache, cache_use, study_layers

    if family_spec(cfg.teacher.family).topk_cache:
        return causal_teacher_cache_for(cfg, plan, force, max_gb)
    if cfg.teacher.cache == "none" and not force:
        return None
    methods = {cfg.method.name} | set(space_values(cfg, "method.name"))
    samplers = {cfg.sampler.name} | set(space_values(cfg, "sampler.name"))
    if all(cache_use(m, s) for m in methods for s in samplers):
        reasons = sorted({cache_use(m, s) for m in methods for s in samplers})
        log(f"[cache] no trial of this study can read a teacher cache ({'; '.join(reasons)}): teacher runs online")
        return None
    tconf = teacher_config(plan.teacher, plan.teacher_load)
    layers = study_layers(cfg, tconf.num_hidden_layers)
    limit = (max_gb if max_gb is not None else cfg.teacher.cache_max_gb) * 1e9
    out = build_cache(plan.prepared, plan.teacher, layers, plan.teacher_load, max_bytes=limit, log=log)
    return {"dir": str(out), "layers": layers, "hidden": tconf.hidden_size, "teacher_layers": tconf.num_hidden_layers}


def causal_teacher_cache_for(cfg: C.Config, plan: StudyPlan, force: bool = False, max_gb: float | None = None) -> dict | None:
    """``teacher_cache_for`` of a causal study: its top-k logits and / or hidden states
    (``causal_cache.study_cache_request``); returns the plan's entry, or None."""
    from raykd.ray_layer.cache.builder import teacher_config
    from raykd.ray_layer.cache.causal_lm import build_causal_cache, study_cache_request

    tconf = teacher_config(plan.teacher, plan.teacher_load)
    if cfg.teacher.cache_import:
        return imported_cache_entry(cfg, plan, tconf.num_hidden_layers)
    req = study_cache_request(cfg, tconf.num_hidden_layers, lambda key: space_values(cfg, key), force)
    if req is None:
        if cfg.teacher.cache != "none":
            log(f"[cache] teacher.cache {cfg.teacher.cache}: no trial of this study could read such a cache (their "
                "methods need what it lacks, generate, or read no teacher): the teacher runs online")
        return None
    limit = (max_gb if max_gb is not None else cfg.teacher.cache_max_gb) * 1e9
    out, meta = build_causal_cache(plan.prepared, plan.teacher, plan.template, req["layers"], req["topk"],
                                   req["temperatures"], plan.teacher_load, max_bytes=limit, log=log)
    return {"kind": "topk", "dir": str(out), "layers": meta["layers"], "hidden": meta["hidden"],
            "teacher_layers": tconf.num_hidden_layers, "topk": meta["topk"], "temperatures": meta["temperatures"]}


def imported_cache_entry(cfg: C.Config, plan: StudyPlan, teacher_layers: int) -> dict:
    """The plan's cache entry for ``teacher.cache_import`` (a top-k cache made by ``python -m raykd.cache
    import``), after ``check_imported_cache``."""
    path, meta = check_imported_cache(cfg, plan)
    log(f"[cache] the imported teacher log-probs {path}: {meta['rows']:,} train pairs, top-{meta['topk']} at "
        f"T = {meta['temperatures']} ({meta.get('teacher', 'imported')})")
    return {"kind": "topk", "dir": path, "layers": [], "hidden": meta.get("hidden"), "teacher_layers": teacher_layers,
            "topk": meta["topk"], "temperatures": meta["temperatures"]}


def check_imported_cache(cfg: C.Config, plan: StudyPlan) -> tuple[str, dict]:
    """(path, manifest) of ``teacher.cache_import`` once it is checked to serve this study: the same prepared
    data and template, every train pair, k at least the study's ``cache_topk`` values, and every temperature the
    study compares logits at cached — an imported cache is exact only at its source's temperature. RaykdError
    naming what differs otherwise. Needs no teacher: ``prepare_inputs`` runs it before any adaptation."""
    from raykd.ray_layer.cache.builder import load_cache_manifest
    from raykd.ray_layer.cache.causal_lm import logit_temperature

    path = str(Path(cfg.teacher.cache_import).expanduser().absolute())
    meta = load_cache_manifest(path)
    where = f"teacher.cache_import {path}"
    if meta.get("data_key") != plan.data_key:
        raise RaykdError(f"{where}: made for other prepared data (key {meta.get('data_key')}, this study's "
                         f"{plan.data_key}): import it again with this study's config")
    if meta.get("template") is not None and meta["template"] != json.loads(json.dumps(plan.template)):
        raise RaykdError(f"{where}: made under another prompt/response template than this study's")
    if not meta.get("topk"):
        raise RaykdError(f"{where}: holds no top-k log-probs")
    ks = [cfg.teacher.cache_topk, *space_values(cfg, "teacher.cache_topk")]
    if max(ks) > meta["topk"]:
        raise RaykdError(f"{where}: holds the top-{meta['topk']}; this study reads up to k = {max(ks)} "
                         "(lower teacher.cache_topk)")
    if meta.get("rows") != plan_train_rows(plan):
        raise RaykdError(f"{where}: holds {meta.get('rows'):,} of the {plan_train_rows(plan):,} train pairs: its trials "
                         "would train on fewer pairs than the references and the other trials (import a source that "
                         "covers every pair; --strict says which do not)")
    for name, spec in cfg.space.items():
        if C.resolve_key(name) == "method.params.temperature" and next(iter(spec)) not in ("choice", "grid"):
            raise RaykdError(f"{where}: space.{name} searches a continuous temperature; the imported log-probs are "
                             f"exact at T = {meta['temperatures']} only")
    params = cfg.method.params
    temps = {logit_temperature(m, params) for m in {cfg.method.name, *space_values(cfg, "method.name")}}
    temps |= {float(t) for t in space_values(cfg, "method.params.temperature")}
    missing = sorted(temps - {float(t) for t in meta["temperatures"]})
    if missing:
        raise RaykdError(f"{where}: its log-probs are exact at T = {meta['temperatures']} only (the source's "
                         f"temperature); this study compares logits at T = {missing}")
    return path, meta


def plan_train_rows(plan: StudyPlan) -> int:
    """The train split's pair count of the plan's prepared data."""
    from raykd.data.shards import load_manifest

    return int(load_manifest(plan.prepared)["splits"]["train"]["rows"])


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
                             f"{prepared} were tokenized with ({len(mine):,} vs {len(theirs):,} tokens, "
                             f"{manifest['tokenizer']['spec']}): prepare the data with --tokenizer {spec}")


def check_student_matches_data(spec: str, revision: str | None, prepared: str, manifest: dict) -> None:
    """Refuse (RaykdError, before Ray starts) a ``student.spec`` that cannot read the prepared data:
    a missing directory, a tokenizer of its own that differs from the data's (both named, with their
    sizes: cross-tokenizer distillation is not supported), or an embedding matrix smaller than the
    data's vocabulary. Embeddings padded beyond the tokenizer are fine (logits are compared over the
    tokenizer's real vocabulary)."""
    from transformers import AutoConfig, AutoTokenizer

    if spec.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise RaykdError(f"student.spec {spec}: no such directory")
    data_tok = os.path.join(prepared, manifest["tokenizer"]["path"])
    if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, f)) for f in ("tokenizer.json", "vocab.txt")):
        mine = AutoTokenizer.from_pretrained(spec).get_vocab()
        theirs = AutoTokenizer.from_pretrained(data_tok).get_vocab()
        if mine != theirs:
            raise RaykdError(f"student.spec {spec}: its tokenizer ({len(mine):,} tokens) differs from the data's and the "
                             f"teacher's ({manifest['tokenizer']['spec']}, {len(theirs):,} tokens): teacher and student "
                             "must share one tokenizer")
    try:
        config = AutoConfig.from_pretrained(spec, revision=revision, trust_remote_code=False)
    except Exception as e:
        raise RaykdError(f"student.spec {spec}: cannot read its config: {str(e).splitlines()[0][:200]}") from None
    if config.vocab_size < int(manifest["tokenizer"]["vocab_size"]):
        raise RaykdError(f"student.spec {spec}: its vocabulary ({config.vocab_size:,}) is smaller than the data's "
                         f"tokenizer ({manifest['tokenizer']['vocab_size']:,} tokens, {manifest['tokenizer']['spec']})")


def space_values(cfg: C.Config, path: str) -> list:
    """The values the study's ``space`` gives dotted key ``path`` (choices and grids; [] when not searched)."""
    out = []
    for name, spec in cfg.space.items():
        if C.resolve_key(name) == path:
            kind, values = next(iter(spec.items()))
            if kind in ("choice", "grid"):
                out.extend(values)
    return out
