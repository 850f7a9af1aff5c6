"""What a study will cost before it runs (``--dry-run``): training pairs and epochs per trial, and
GPU-hours estimated from the models' FLOPs per step at a stated utilisation. Pure arithmetic, no
torch, no Ray; every figure is an upper bound (ASHA stops trials early)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raykd import config as C
from raykd.errors import RaykdError
from raykd.models.families.spec import family_spec

PEAK_TFLOPS = 312.0  # an A100's dense fp16/bf16 tensor-core peak (cluster.yaml's GPUs)
UTILISATION = 0.40  # the fraction of peak a well-fed transformer training step reaches (stated, not measured)


def encoder_flops_per_token(layers: int, hidden: int, intermediate: int, seq_len: int) -> float:
    """Forward FLOPs per token of a transformer stack: 2 × its layers' weights (q, k, v, output: 4d²;
    feed-forward: 2·d·I) plus attention's 4·T·d (scores and weighted values) per layer. Embeddings and
    the vocabulary head are left out."""
    return layers * (2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * seq_len * hidden)


def step_flops(cfg: C.Config) -> float:
    """FLOPs of one optimizer step of a trial: the teacher's forward pass (online teacher) and the
    student's forward and backward (3 × forward) over ``2 × pairs_per_step`` sequences (questions and
    answers) at ``data.max_length`` tokens (an upper bound: batches pad to their longest), all workers.
    The models' shapes: ``model_shapes``."""
    T = cfg.data.max_length
    tokens = 2 * pairs_per_step(cfg) * T
    shp = model_shapes(cfg)
    (tl, th, _, _, ti), (sl, sh_, _, _, si) = shp["teacher"], shp["student"]
    teacher = encoder_flops_per_token(tl, th, ti, T)
    student = encoder_flops_per_token(sl, sh_, si, T)
    return tokens * (teacher + 3 * student)


# ------------------------------------------------------------------------------------------ the models' shapes
class PlanUnknown(RaykdError):
    """The plan cannot be computed here: a model's shape is neither readable nor recorded."""


SHAPE_KEYS = {  # HF config.json keys of each shape figure, across BERT / LLaMA / Qwen2 / GPT-2 / T5 configs
    "layers": ("num_hidden_layers", "n_layer", "num_layers"), "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head", "num_heads"), "kv_heads": ("num_key_value_heads",),
    "intermediate": ("intermediate_size", "n_inner", "d_ff"), "vocab": ("vocab_size",)}


def spec_config(spec: str, revision: str | None = None) -> dict | None:
    """The ``config.json`` of the model an HF spec names: a local directory's, or a hub id's when it is in this
    machine's HF cache (nothing is downloaded); None when neither can be read."""
    path = Path(os.path.expanduser(spec)) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json", revision=revision)
        except Exception:  # not a valid repo id, no cache: unknown here
            cached = None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def config_shape(c: dict) -> dict:
    """{layers, hidden, heads, kv_heads, intermediate, vocab} of an HF config (its keys in ``SHAPE_KEYS``; a
    missing feed-forward size is 4 × the width, as GPT-2's ``n_inner: null``)."""
    out = {k: next((c[n] for n in names if c.get(n) is not None), None) for k, names in SHAPE_KEYS.items()}
    if out["intermediate"] is None and out["hidden"]:
        out["intermediate"] = 4 * out["hidden"]
    missing = [k for k in ("layers", "hidden", "heads", "intermediate") if not out[k]]
    if missing:
        raise PlanUnknown(f"config.json ({c.get('model_type', 'unknown model type')}) names no {', '.join(missing)} under "
                          f"the keys raykd reads ({', '.join(n for k in missing for n in SHAPE_KEYS[k])})")
    return out


def _recorded(section) -> bool:
    """Whether a ``teacher.shape`` section records a model (differs from the defaults): the offline record of
    a teacher that is not on this machine."""
    return section != type(section)()


def model_shapes(cfg: C.Config) -> dict:
    """The teacher's and the student's (layers, hidden, heads, kv_heads, intermediate) and the vocabulary: a
    ``teacher.spec`` / ``student.spec``'s config.json where it is readable here (``spec_config``), else the
    YAML's record (``teacher.shape``; the student's fields); a built teacher is ``teacher.shape``. PlanUnknown
    when a spec's config is not readable and no shape is recorded. The vocabulary: the config's, else the
    recorded one, else a stated 32,000."""
    sh, st = cfg.teacher.shape, cfg.student
    t = {"layers": sh.layers, "hidden": sh.hidden, "heads": sh.heads, "kv_heads": sh.kv_heads,
         "intermediate": sh.intermediate, "vocab": sh.vocab}
    if cfg.teacher.spec:
        read = spec_config(cfg.teacher.spec, cfg.teacher.revision)
        if read is not None:
            t = config_shape(read)
        elif not _recorded(sh):
            raise PlanUnknown(f"teacher.spec {cfg.teacher.spec}: its config.json is not readable here (not a local "
                              "directory, not in the HF cache) and teacher.shape records no shape")
    s = None
    if st.spec:
        read = spec_config(st.spec, st.revision)
        if read is not None:
            s = config_shape(read)
        elif not (st.hidden and st.intermediate):
            raise PlanUnknown(f"student.spec {st.spec}: its config.json is not readable here and student.hidden / "
                              "student.intermediate record no shape")
    if s is None:
        s_hidden = st.hidden or t["hidden"]
        same = s_hidden == t["hidden"]
        s = {"layers": st.layers, "hidden": s_hidden,
             "heads": st.heads or (t["heads"] if same else max(1, s_hidden // 64)),
             "kv_heads": st.kv_heads or (t["kv_heads"] if same else None),
             "intermediate": st.intermediate or (t["intermediate"] if same else 4 * s_hidden), "vocab": st.vocab}
    keys = ("layers", "hidden", "heads", "kv_heads", "intermediate")
    return {"vocab": t["vocab"] or s["vocab"] or 32000, "teacher": tuple(t[k] for k in keys),
            "student": tuple(s[k] for k in keys)}


def pairs_per_step(cfg: C.Config) -> int:
    """Training pairs per optimizer step: ``batch_size`` per worker × ``grad_accum`` × ``num_workers``."""
    t = cfg.train
    return t.batch_size * t.grad_accum * t.num_workers


def trial_runs(cfg: C.Config) -> int:
    """Trials a study can run: the search, its confirm phase and the reference trials."""
    if cfg.compare is not None:  # counts its tuning, confirmation and reference trials itself
        return C.planned_trials(cfg)
    confirm = cfg.search.confirm.top_k * len(cfg.search.confirm.seeds)
    refs = len(set(cfg.experiment.seeds) | set(cfg.search.confirm.seeds)) if cfg.experiment.references else 0
    return C.planned_trials(cfg) + confirm + refs


def budget(cfg: C.Config, train_pairs: int | None) -> dict:
    """``pairs_per_trial``, ``epochs_per_trial`` (None when the train split's size is unknown),
    ``step_tflop``, ``gpu_hours`` (every trial to its last step, on one GPU-equivalent at
    ``UTILISATION`` of ``PEAK_TFLOPS``) and ``trials``."""
    t = cfg.train
    pairs = t.steps * pairs_per_step(cfg)
    flops = step_flops(cfg)
    runs = trial_runs(cfg)
    seconds = runs * t.steps * flops / (PEAK_TFLOPS * 1e12 * UTILISATION)
    return {"pairs_per_trial": pairs, "epochs_per_trial": pairs / train_pairs if train_pairs else None,
            "step_tflop": flops / 1e12, "gpu_hours": seconds / 3600, "trials": runs}


def budget_text(cfg: C.Config, train_pairs: int | None, source: str) -> str:
    """The --dry-run lines of ``budget`` (``source``: where the train split's size came from); says why when the
    models' shapes are unknown here instead of printing figures."""
    pairs = cfg.train.steps * pairs_per_step(cfg)
    epochs = (f" = {pairs / train_pairs:.2g} epochs of the {train_pairs:,} training pairs ({source})"
              if train_pairs else " (epochs: the train split's size is unknown here; set data.train_pairs)")
    head = f"per trial: {pairs:,} training pairs ({pairs_per_step(cfg):,} per step){epochs}\n"
    try:
        b = budget(cfg, train_pairs)
    except PlanUnknown as e:
        return head + f"compute: cannot be computed here — {e}"
    return (head + f"compute: {b['step_tflop']:.3g} TFLOP per step (teacher forward + student forward/backward, "
            f"{cfg.data.max_length} tokens, no vocabulary head) → at most {_hours(b['gpu_hours'])} GPU-hours for "
            f"{b['trials']} trials to their last step at {UTILISATION:.0%} of an A100's {PEAK_TFLOPS:g} TFLOP/s")


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


# ------------------------------------------------------------------------------------------ memory per GPU
GIB = 2**30
A100_GIB = 80.0


TEACHER_GPU_SHARE = 0.4  # teacher.shard auto: shard the frozen teacher when its full copy exceeds this share of a GPU


def shard_teacher(setting: str, strategy: str, family: str, workers: int, teacher_bytes: float,
                  gpu_bytes: float | None) -> bool:
    """Whether a trial shards its frozen teacher over its workers (``teacher.shard``): ``always``
    (validated to need ``train.strategy`` fsdp and a family whose teacher shards), ``never``, or ``auto`` = a
    shardable teacher (causal_lm) under fsdp, over two or more workers, on GPUs (``gpu_bytes``: one GPU's memory,
    None on CPU) whose full weights (``teacher_bytes``, in the dtype trials hold them) exceed
    ``TEACHER_GPU_SHARE`` of one GPU: the student's training state, its activations and the logits
    need the rest."""
    if setting != "auto":
        return setting == "always"
    return (strategy == "fsdp" and family_spec(family).shardable_teacher and workers > 1 and gpu_bytes is not None
            and teacher_bytes > TEACHER_GPU_SHARE * gpu_bytes)


def decoder_params(layers: int, hidden: int, heads: int, kv_heads: int | None, intermediate: int, vocab: int,
                   tied: bool = False) -> int:
    """Parameters of a LLaMA-style decoder: embeddings (and an untied head) V·d, per layer q and o
    projections 2·d², k and v 2·d·(d·kv/heads), a gated feed-forward 3·d·I and two norms 2·d, a final norm d."""
    kv = hidden * (kv_heads or heads) // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def encoder_params(layers: int, hidden: int, intermediate: int, vocab: int, positions: int = 512) -> int:
    """Parameters of a BERT-style encoder with a tied masked-LM head: embeddings (V + positions + 2)·d and their
    norm 2·d, per layer 4·d² + 2·d·I with biases and norms 9·d + I, the head's transform d² + d and norm 2·d,
    its V biases (exact for ``BertForMaskedLM``)."""
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    return (vocab + positions + 2) * hidden + 2 * hidden + layers * per_layer + hidden * hidden + 3 * hidden + vocab


def memory_plan(cfg: C.Config, gpus_per_trial: int | None = None) -> dict:
    """Estimated memory per GPU of one trial, in GiB (upper-bound arithmetic, stated assumptions):
    student weights fp32 (4 B/param: master weights under bf16/fp16 autocast), gradients fp32 (4 B),
    AdamW state (8 B) — divided by the GPUs of the trial under FSDP; the frozen teacher as trials hold it
    (``precision.frozen_on``): bf16 weights (2 B/param) for a causal teacher on GPUs under a bf16
    policy (auto or bf16), else fp32 (4 B), one full copy on every GPU unless ``shard_teacher`` shards
    it under FSDP (then 1/GPUs of it plus what a forward pass all-gathers: the root unit — embeddings,
    head — and two blocks, the current and the prefetched; an A100's 80 GiB decides ``auto``);
    activations of the student at the configured length without gradient checkpointing (≈ 34·d bytes
    per token per layer, Korthikanti et al. 2022, attention through SDPA) and with it (2·d bytes per
    token per layer kept + one layer's 34·d); logits: the student's fp32
    logits, their log-softmax and gradient plus the teacher's logits and log-softmax (5 × tokens × V ×
    4 B) for the plain loss, or one chunk of ``train.chunked_loss_tokens`` tokens for the chunked one.
    Tokens per micro-batch: ``batch_size`` × 2 × ``data.max_length`` (a causal sequence is prompt +
    response, an encoder batch holds questions and answers)."""
    t, fam = cfg.train, family_spec(cfg.teacher.family)
    shp = model_shapes(cfg)
    V = shp["vocab"]
    if fam.decoder_params:
        p_t, p_s = decoder_params(*shp["teacher"], V), decoder_params(*shp["student"], V)
    else:
        p_t = encoder_params(shp["teacher"][0], shp["teacher"][1], shp["teacher"][4], V)
        p_s = encoder_params(shp["student"][0], shp["student"][1], shp["student"][4], V)
    gpus = gpus_per_trial or t.num_workers
    tokens = t.batch_size * 2 * cfg.data.max_length
    teacher_bytes = 2 if t.use_gpu and fam.bf16 and t.precision in ("auto", "bf16") else 4
    s_layers, s_hidden = shp["student"][0], shp["student"][1]
    act = 34 * s_hidden * tokens * s_layers / GIB
    act_ckpt = (2 * s_hidden * tokens * s_layers + 34 * s_hidden * tokens) / GIB
    task_tokens = int(tokens * fam.task_token_share)  # responses / masked positions
    chunk = min(t.chunked_loss_tokens or task_tokens, task_tokens)
    out = {"student_params": p_s, "teacher_params": p_t, "gpus": gpus, "tokens_per_micro_batch": tokens,
           "weights_grads_optimizer": 16 * p_s / GIB, "weights_grads_optimizer_fsdp": 16 * p_s / GIB / gpus,
           "teacher_full": teacher_bytes * p_t / GIB, "teacher_dtype": "bf16" if teacher_bytes == 2 else "fp32",
           "teacher_sharded": t.use_gpu and shard_teacher(cfg.teacher.shard, t.strategy, fam.name, gpus,
                                                          teacher_bytes * p_t, A100_GIB * GIB),
           "activations": act,
           "activations_checkpointed": act_ckpt, "logits_plain": 5 * task_tokens * V * 4 / GIB,
           "logits_chunked": 5 * chunk * V * 4 / GIB}
    if out["teacher_sharded"]:  # its shard, plus what a forward pass gathers: the root unit and two blocks
        root = decoder_params(0, *shp["teacher"][1:], V)  # embeddings, head, final norm (prefetch: two blocks)
        gathered = root + 2 * (p_t - root) / shp["teacher"][0]
        out["teacher_gathered"] = teacher_bytes * gathered / GIB
        out["teacher"] = out["teacher_full"] / gpus + out["teacher_gathered"]
    else:
        out["teacher"] = out["teacher_full"]
    out["total_ddp"] = out["weights_grads_optimizer"] + out["teacher_full"] + act + out["logits_plain"]
    out["total_best"] = (out["weights_grads_optimizer_fsdp"] + out["teacher"] + act_ckpt + out["logits_chunked"])
    return out


def memory_text(cfg: C.Config) -> str:
    """The --dry-run lines of ``memory_plan``: each part, the plain DDP total and the total with FSDP
    over the trial's GPUs, gradient checkpointing and the chunked loss, against an A100's 80 GiB."""
    try:
        m = memory_plan(cfg)
    except PlanUnknown as e:
        return f"memory per GPU: cannot be computed here — {e}"
    teacher_where = (f"sharded over {m['gpus']} GPUs under FSDP: {size(m['teacher'])} per GPU with the "
                     f"{size(m['teacher_gathered'])} a forward pass gathers" if m["teacher_sharded"]
                     else "a full copy per GPU")
    fits = lambda g: "fits" if g <= A100_GIB * 0.9 else "does NOT fit"  # noqa: E731 (10 % for the allocator, CUDA)
    return (f"memory per GPU (estimate; student {count(m['student_params'])} params, teacher "
            f"{count(m['teacher_params'])}, {m['tokens_per_micro_batch']:,} tokens per micro-batch): "
            f"student weights+grads+AdamW {size(m['weights_grads_optimizer'])} "
            f"({size(m['weights_grads_optimizer_fsdp'])} sharded over {m['gpus']} GPU(s) by FSDP), teacher "
            f"{size(m['teacher_full'])} ({m['teacher_dtype']}, {teacher_where}), activations {size(m['activations'])} "
            f"({size(m['activations_checkpointed'])} with gradient checkpointing), logits {size(m['logits_plain'])} "
            f"plain / {size(m['logits_chunked'])} chunked → {size(m['total_ddp'])} per GPU with DDP and the plain "
            f"loss ({fits(m['total_ddp'])} an A100 80 GB), {size(m['total_best'])} with FSDP, checkpointing and the "
            f"chunked loss ({fits(m['total_best'])})")


def count(n: float) -> str:
    """A parameter count in the unit that fits: 840, 12.3 K, 22.7 M, 6.74 B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def size(gib: float) -> str:
    """A size given in GiB, in the unit that fits: 512 MiB below 1 GiB, 3.4 GiB above."""
    return f"{gib * 1024:.3g} MiB" if gib < 1 else f"{gib:.1f} GiB"
