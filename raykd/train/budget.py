"""What a study will cost before it runs (``--dry-run``): training pairs and epochs per trial, and
GPU-hours estimated from the models' FLOPs per step at a stated utilisation. Pure arithmetic, no
torch, no Ray; every figure is an upper bound (ASHA stops trials early)."""

from __future__ import annotations

from raykd import config as C
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
    answers) at ``data.max_length`` tokens (an upper bound: batches pad to their longest), all workers."""
    t, sh, T = cfg.train, cfg.teacher.shape, cfg.data.max_length
    tokens = 2 * pairs_per_step(cfg) * T
    s_hidden = cfg.student.hidden or sh.hidden
    s_inter = sh.intermediate if s_hidden == sh.hidden else 4 * s_hidden
    teacher = encoder_flops_per_token(sh.layers, sh.hidden, sh.intermediate, T)
    student = encoder_flops_per_token(cfg.student.layers, s_hidden, s_inter, T)
    return tokens * (teacher + 3 * student)


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
    """The --dry-run lines of ``budget`` (``source``: where the train split's size came from)."""
    b = budget(cfg, train_pairs)
    epochs = (f" = {b['epochs_per_trial']:.1f} epochs of the {train_pairs:,} training pairs ({source})"
              if train_pairs else " (epochs: the train split's size is unknown here; set data.train_pairs)")
    return (f"per trial: {b['pairs_per_trial']:,} training pairs ({pairs_per_step(cfg):,} per step){epochs}\n"
            f"compute: {b['step_tflop']:.3g} TFLOP per step (teacher forward + student forward/backward, "
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
    """Parameters of a BERT-style encoder with a tied masked-LM head: embeddings (V + positions + 2)·d,
    per layer 4·d² + 2·d·I (+ biases and norms ≈ 9·d + I), the head's transform d² + V biases."""
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    return (vocab + positions + 2) * hidden + layers * per_layer + hidden * hidden + vocab


def _shapes(cfg: C.Config) -> dict:
    """Teacher and student sizes as the config records them (vocabulary: recorded, else a stated 32,000)."""
    sh, st = cfg.teacher.shape, cfg.student
    vocab = sh.vocab or st.vocab or 32000
    s_hidden = st.hidden or sh.hidden
    s_heads = st.heads or (sh.heads if s_hidden == sh.hidden else max(1, s_hidden // 64))
    s_inter = st.intermediate or (sh.intermediate if s_hidden == sh.hidden else 4 * s_hidden)
    s_kv = st.kv_heads or (sh.kv_heads if s_hidden == sh.hidden else None)
    return {"vocab": vocab, "teacher": (sh.layers, sh.hidden, sh.heads, sh.kv_heads, sh.intermediate),
            "student": (st.layers, s_hidden, s_heads, s_kv, s_inter)}


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
    shp = _shapes(cfg)
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
    m = memory_plan(cfg)
    teacher_where = (f"sharded over {m['gpus']} GPUs under FSDP: {m['teacher']:.1f} per GPU with the "
                     f"{m['teacher_gathered']:.1f} a forward pass gathers" if m["teacher_sharded"]
                     else "a full copy per GPU")
    fits = lambda g: "fits" if g <= A100_GIB * 0.9 else "does NOT fit"  # noqa: E731 (10 % for the allocator, CUDA)
    return (f"memory per GPU (estimate; student {m['student_params'] / 1e9:.2f} B params, teacher "
            f"{m['teacher_params'] / 1e9:.2f} B, {m['tokens_per_micro_batch']:,} tokens per micro-batch): "
            f"student weights+grads+AdamW {m['weights_grads_optimizer']:.1f} GiB "
            f"({m['weights_grads_optimizer_fsdp']:.1f} sharded over {m['gpus']} GPU(s) by FSDP), teacher "
            f"{m['teacher_full']:.1f} GiB ({m['teacher_dtype']}, {teacher_where}), activations {m['activations']:.1f} GiB "
            f"({m['activations_checkpointed']:.1f} with gradient checkpointing), logits {m['logits_plain']:.1f} GiB "
            f"plain / {m['logits_chunked']:.2f} GiB chunked → {m['total_ddp']:.1f} GiB per GPU with DDP and the plain "
            f"loss ({fits(m['total_ddp'])} an A100 80 GB), {m['total_best']:.1f} GiB with FSDP, checkpointing and the "
            f"chunked loss ({fits(m['total_best'])})")
