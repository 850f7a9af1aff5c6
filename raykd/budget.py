"""What a study will cost before it runs (``--dry-run``): training pairs and epochs per trial, and
GPU-hours estimated from the models' FLOPs per step at a stated utilisation. Pure arithmetic, no
torch, no Ray; every figure is an upper bound (ASHA stops trials early)."""

from __future__ import annotations

from raykd import config as C

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
