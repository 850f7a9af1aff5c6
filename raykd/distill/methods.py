"""Distillation objectives (registry ``methods``): ours plus the paper's baselines, one interface.

Every method is an ``nn.Module`` holding the student and its own trainable extras (projections,
adapters), so one ``prepare_model``/DDP wrap covers everything trained. A step is::

    inputs  = make_inputs(batch, tokens, generator, corrupt=method.uses_mlm)
    targets = method.teacher_targets(teacher, inputs)      # no grad; a cache can supply these instead
    out     = method(inputs, targets)                      # {"loss": total, "<term>": value, ...}
    out["loss"].backward()

``method.encode(ids, mask)`` is the student alone (fusion never runs outside training).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses as L
from . import settings as S
from ..models.mapping import layer_map
from ..models.modules import DomainAwareFusion, StructuralProjection
from ..models.student import Student
from ..models.sharding import is_sharded
from ..registry import METHODS
# the shared interface, re-exported: callers import every objective's names from here
from .base import (DistillMethod, TokenIds, _heads, _linear_or_identity, attention_inputs,  # noqa: F401
                   attention_scores, make_inputs)


@METHODS.register("structural")
class Structural(DistillMethod):
    """Ours: layer-wise structural mapping. For the first ``depth`` mapped pairs (i, g(i)), student and
    teacher states are projected into a shared ``projection_dim`` space and aligned (MSE, term
    ``align``); token-token similarity structure of every mapped pair and the example-example
    similarity structure of the batch's representations are matched (``relation``); the output
    representation Y (multi-granularity aggregation when the student has it) is aligned with the
    teacher's Y_T in the shared space (``sentence``) and optionally by InfoNCE over in-batch
    negatives (``contrastive``). The example×example relations compare questions with questions and
    answers with answers only (``relation_scope="within"``, the default): the question × answer
    similarities are what the lead metric (MRR@10) ranks, so ours never trains on them; ``"all"`` matches
    the whole 2b × 2b matrix (the behaviour before #32). A domain-aware fusion adapter feeds the projected teacher states to
    the student's input embeddings during the first ``anneal_until`` of training, gated per
    department and annealed to zero. Loss weights gradient-aware (``dynamic_weights``, the default:
    the method as the ablation's full configuration has it) or fixed (``dynamic_weights=False``; with
    equal fixed weights InfoNCE dominates the gradient and the alignment terms barely train —
    docs/findings-untuned.md (e)). Modules can be switched off one at a time for ablations."""

    def __init__(self, student, teacher_config, depth: int | None = None, projection_dim: int = 128,
                 projection: bool = True, relation: bool = True, contrastive: bool = True, fusion: bool = True,
                 n_departments: int = 0, temperature: float = 0.1, anneal_until: float = 0.3,
                 relation_scope: str = "within", weights: dict | None = None, dynamic_weights: bool = True):
        super().__init__(student, teacher_config, weights, dynamic_weights)
        if relation_scope not in ("within", "all"):
            raise ValueError(f"structural: relation_scope {relation_scope!r} is not one of within, all")
        self.relation_scope = relation_scope
        self.pairs = layer_map(self.t_layers, self.s_layers, depth)
        d = projection_dim if projection else self.t_hidden
        if projection:
            self.proj = nn.ModuleList(StructuralProjection(self.s_hidden, self.t_hidden, d) for _ in self.pairs)
            self.sentence_proj = StructuralProjection(self.s_hidden, self.t_hidden, d)
        else:  # ablation: align in the teacher's own space (a plain map only when the widths differ)
            self.proj = nn.ModuleList(_linear_or_identity(self.s_hidden, self.t_hidden) for _ in self.pairs)
            self.sentence_proj = _linear_or_identity(self.s_hidden, self.t_hidden)
        self.use_projection, self.use_relation, self.use_contrastive = projection, relation, contrastive
        self.fusion = DomainAwareFusion(self.s_hidden, d, n_departments) if fusion else None
        self.temperature, self.anneal_until = temperature, anneal_until

    def teacher_layers(self):
        return [g for _, g in self.pairs]

    def _project(self, module, h_s, h_t):
        return module(h_s, h_t) if self.use_projection else (module(h_s), h_t)

    def set_progress(self, fraction):
        super().set_progress(fraction)
        if self.fusion is not None:
            self.fusion.set_anneal(max(0.0, 1.0 - fraction / self.anneal_until) if self.anneal_until > 0 else 0.0)

    def student_forward(self, inputs, targets):
        if self.fusion is None or not self.training or self.fusion.anneal_value == 0.0:
            return self.family.run(self.student, inputs)
        h_t = targets["hidden"][self.t_layers]
        z = self.sentence_proj.teacher(h_t) if self.use_projection else h_t
        e = self.student.word_embeddings(inputs["input_ids"])
        return self.family.run(self.student, {**inputs, "embeds": self.fusion(e, z, inputs["mask"], inputs["department"])})

    def losses(self, inputs, targets, out):
        hs, content = out.hidden_states, inputs["content"]
        align, rel = [], []
        for (i, g), proj in zip(self.pairs, self.proj):
            ps, pt = self._project(proj, hs[i], targets["hidden"][g])
            align.append(L.hidden_mse(ps, pt, content))
            if self.use_relation:
                rel.append(L.relation_loss(hs[i], targets["hidden"][g], content))
        terms = {"align": torch.stack(align).mean()}
        if rel:
            terms["relation"] = torch.stack(rel).mean()
        y_s = self.student.represent(hs[-1], inputs["mask"])
        y_t = self._teacher_sentence(targets, inputs)
        if self.use_relation:  # the batch's example×example similarity structure, in the raw spaces
            groups = inputs.get("group") if self.relation_scope == "within" else None
            terms["relation"] = terms["relation"] + L.relation_loss_within(y_s, y_t, groups)
        zs, zt = self._project(self.sentence_proj, y_s, y_t)
        terms["sentence"] = L.hidden_mse(zs, zt)
        if self.use_contrastive:
            terms["contrastive"] = L.info_nce(zs, zt, temperature=self.temperature)
        return terms


@METHODS.register("no_distill")
class NoDistill(DistillMethod):
    """Reference point, not a distillation method: the same student trained on the same data with its
    own masked-LM loss only (labels are the true tokens; the teacher is not consulted)."""

    uses_mlm = True

    def teacher_layers(self):
        return []

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        return {}

    def losses(self, inputs, targets, out):
        return {"mlm": self.family.task_loss(out.logits, inputs["ids"], inputs["chosen"])}


@METHODS.register("sft")
class SFT(NoDistill):
    """Reference point, not a distillation method (the ``no_distill`` reference of causal studies):
    supervised fine-tuning — cross-entropy of the student's task head against the true tokens at the
    task positions (``ce``: the response tokens of a causal LM; masked tokens of an encoder),
    normalised by the step's counted tokens when the trial passes ``num_tokens``."""

    chunkable = True

    def losses(self, inputs, targets, out):
        return {"ce": self.ce_term(out, inputs)}


@METHODS.register("kd")
class KD(DistillMethod):
    """Logit distillation, as TRL / DistillKit users set it up: cross-entropy on the true tokens
    (``ce``) + ``kd_weight`` · a divergence between teacher and student distributions at the task
    positions (``kd``): ``forward_kl`` (Hinton: T²·KL(p_t‖q_s)), ``reverse_kl``, ``jsd`` (β),
    ``skew_kl`` / ``skew_rkl`` (DistiLLM, α = ``skew_alpha``) or ``tvd``, at temperature T
    (``raykd.distill.losses``). ``kd_weight`` is the fixed weight of ``kd`` (with ``dynamic_weights``
    the gradient-aware weights replace it)."""

    uses_mlm = True

    def __init__(self, student, teacher_config, divergence: str = "forward_kl", temperature: float = 1.0,
                 kd_weight: float = 1.0, beta: float = 0.5, skew_alpha: float = 0.1, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, {"kd": kd_weight, **(weights or {})}, dynamic_weights)
        if divergence not in L.DIVERGENCES:
            raise ValueError(f"kd: divergence {divergence!r} is not one of {', '.join(L.DIVERGENCES)}")
        self.divergence, self.temperature, self.beta, self.skew_alpha = divergence, temperature, beta, skew_alpha

    def teacher_layers(self):
        return []

    chunkable = True

    def losses(self, inputs, targets, out):
        return {"ce": self.ce_term(out, inputs),
                "kd": self.divergence_term(out, inputs, targets, self.divergence, self.temperature, self.beta,
                                           self.skew_alpha)}


def _identity_linear(d_in: int, d_out: int) -> nn.Linear:
    """A learned map d_in → d_out, the identity when the widths match (so alignment starts at zero
    for a student cut from the teacher)."""
    lin = nn.Linear(d_in, d_out)
    if d_in == d_out:
        with torch.no_grad():
            lin.weight.copy_(torch.eye(d_in))
            lin.bias.zero_()
    return lin


@METHODS.register("feature_align")
class FeatureAlign(DistillMethod):
    """The companion paper's method (feature alignment and representation transfer, LLaMA-2 →
    TinyLLaMA): over the uniform layer map (i, g(i)) (``depth`` pairs), each student state is mapped
    to the teacher's width by a learned projection W_i and aligned with the teacher's state
    (``align``: MSE over response tokens divided by the teacher state's mean square, so every layer's
    term is scale-free); the response-pooled states of each mapped pair are aligned by in-batch
    InfoNCE (``contrastive``; the other sequences of the batch are the negatives, temperature
    ``contrast_temperature``); the logit term is a divergence at the response positions (``logit``,
    as ``kd``); cross-entropy on the true tokens (``ce``) always. Loss weights gradient-aware
    (``dynamic_weights``, the default, GradNorm-style over the shared embeddings) or fixed (``logit``
    weighted by ``kd_weight``). ``alignment``, ``contrastive``, ``logit`` switch modules off for an
    ablation grid."""

    uses_mlm = True
    chunkable = True

    def __init__(self, student, teacher_config, depth: int | None = None, alignment: bool = True,
                 contrastive: bool = True, logit: bool = True, divergence: str = "forward_kl",
                 temperature: float = 1.0, kd_weight: float = 1.0, beta: float = 0.5, skew_alpha: float = 0.1,
                 contrast_temperature: float = 0.1, weights=None, dynamic_weights: bool = True):
        super().__init__(student, teacher_config, {"logit": kd_weight, **(weights or {})}, dynamic_weights)
        if divergence not in L.DIVERGENCES:
            raise ValueError(f"feature_align: divergence {divergence!r} is not one of {', '.join(L.DIVERGENCES)}")
        self.pairs = layer_map(self.t_layers, self.s_layers, depth)
        self.proj = nn.ModuleList(_identity_linear(self.s_hidden, self.t_hidden) for _ in self.pairs)
        self.use_alignment, self.use_contrastive, self.use_logit = alignment, contrastive, logit
        self.divergence, self.temperature, self.beta, self.skew_alpha = divergence, temperature, beta, skew_alpha
        self.contrast_temperature = contrast_temperature

    def teacher_layers(self):
        return [g for _, g in self.pairs]

    def losses(self, inputs, targets, out):
        terms = {"ce": self.ce_term(out, inputs)}
        content, hs = inputs["content"], out.hidden_states
        align, nce = [], []
        for (i, g), proj in zip(self.pairs, self.proj):
            ps, ht = proj(hs[i]), targets["hidden"][g]
            if self.use_alignment:
                scale = L.masked_mean(ht.pow(2), content).mean().detach().clamp_min(1e-8)
                align.append(L.hidden_mse(ps, ht, content) / scale)
            if self.use_contrastive:
                nce.append(L.info_nce(L.masked_mean(ps, content), L.masked_mean(ht, content),
                                      temperature=self.contrast_temperature))
        if align:
            terms["align"] = torch.stack(align).mean()
        if nce:
            terms["contrastive"] = torch.stack(nce).mean()
        if self.use_logit:
            terms["logit"] = self.divergence_term(out, inputs, targets, self.divergence, self.temperature, self.beta,
                                                  self.skew_alpha)
        return terms


@METHODS.register("tinybert")
class TinyBERT(DistillMethod):
    """TinyBERT (Jiao et al., 2020): embedding-layer MSE (``embedding``), hidden-state MSE through a
    learned W_h at every mapped layer (``hidden``), attention-score MSE at every mapped layer
    (``attention``; scores averaged over heads when head counts differ) and prediction-layer soft
    cross-entropy at temperature T on the masked positions (``prediction``).

    Difference from the paper: one stage. TinyBERT trains the intermediate layers first (embedding,
    hidden, attention) and the prediction layer afterwards, each with its own epochs, and adds data
    augmentation; here all four terms are summed from the first step over the trial's one budget,
    with no augmentation."""

    uses_mlm = True
    needs_qkv = True

    def __init__(self, student, teacher_config, temperature: float = 1.0, weights=None, dynamic_weights=False):
        super().__init__(student, teacher_config, weights, dynamic_weights)
        self.pairs = layer_map(self.t_layers, self.s_layers)
        self.w_embed = _linear_or_identity(self.s_hidden, self.t_hidden)
        self.w_hidden = nn.ModuleList(_linear_or_identity(self.s_hidden, self.t_hidden) for _ in self.pairs)
        self.temperature = temperature

    def teacher_layers(self):
        return [0] + [g for _, g in self.pairs]

    def qkv_layers(self):
        return [g for _, g in self.pairs]

    def losses(self, inputs, targets, out):
        hs, m = out.hidden_states, inputs["mask"]
        hid = [L.hidden_mse(w(hs[i]), targets["hidden"][g], m) for (i, g), w in zip(self.pairs, self.w_hidden)]
        att = []
        pair_mask = (m[:, :, None] * m[:, None, :]).bool()
        for i, g in self.pairs:
            qs, ks, _ = attention_inputs(self.student.mlm, hs[i - 1], i)
            qt, kt, _ = targets["qkv"][g]
            a_s, a_t = attention_scores(qs, ks, _heads(self.student.mlm)), attention_scores(qt, kt, self.t_heads)
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
            diff = (a_s - a_t).pow(2).mean(1)
            att.append((diff * pair_mask).sum() / pair_mask.sum().clamp_min(1))
        logits_s = out.logits[inputs["chosen"]]
        return {"embedding": L.hidden_mse(self.w_embed(hs[0]), targets["hidden"][0], m),
                "hidden": torch.stack(hid).mean(), "attention": torch.stack(att).mean(),
                "prediction": L.soft_cross_entropy(logits_s, targets["logits"], self.temperature)}


@METHODS.register("minilm")
class MiniLM(DistillMethod):
    """MiniLM (Wang et al., 2020; v2 relations, 2021): the KL between teacher and student multi-head
    self-attention relations — query-query (``qq``), key-key (``kk``) and value-value (``vv``) — of the
    last layers, with ``relation_heads`` heads so that different widths can be compared."""

    needs_qkv = True

    def __init__(self, student, teacher_config, relation_heads: int | None = None, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, weights, dynamic_weights)
        self.relation_heads = relation_heads or math.gcd(self.t_heads, _heads(student.mlm))

    def teacher_layers(self):
        return [self.t_layers - 1, self.t_layers]

    def qkv_layers(self):
        return [self.t_layers]

    def losses(self, inputs, targets, out):
        hs, m = out.hidden_states, inputs["mask"]
        s = attention_inputs(self.student.mlm, hs[self.s_layers - 1], self.s_layers)
        t = targets["qkv"][self.t_layers]
        return {name: L.attention_relation_kl(xs, xt, self.relation_heads, m)
                for name, xs, xt in zip(("qq", "kk", "vv"), s, t)}


@METHODS.register("minillm")
class MiniLLM(DistillMethod):
    """MiniLLM (Gu et al., 2024), token-level form: T²·reverse KL(q_student ‖ p_teacher) of the task
    head's distributions at temperature T at the task positions (``reverse_kl``; masked tokens of an
    encoder, response tokens of a causal LM, on the data's own responses), mode-seeking rather than
    mode-covering, plus MiniLLM's language-modelling term L_PT, weighted by ``ce_weight``: here the
    cross-entropy on the training data's own tokens (``ce``; MiniLLM takes it on a pre-training corpus).

    What is *not* implemented of MiniLLM: its sequence-level policy-gradient optimisation of the reverse
    KL over the student's own samples (single-step decomposition, teacher-mixed sampling, length
    normalisation). Here the reverse KL is minimised per token on the dataset's responses by plain
    back-propagation — the "token-level reverse KL" baseline of the MiniLLM and DistiLLM papers.
    On-policy samples are what ``gkd`` with ``lmbda`` > 0 adds."""

    uses_mlm = True
    chunkable = True

    def __init__(self, student, teacher_config, temperature: float = 1.0, ce_weight: float = 1.0, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, {"ce": ce_weight, **(weights or {})}, dynamic_weights)
        self.temperature, self.ce_weight = temperature, ce_weight

    def losses(self, inputs, targets, out):
        terms = {"reverse_kl": self.divergence_term(out, inputs, targets, "reverse_kl", self.temperature)}
        if self.ce_weight > 0:
            terms["ce"] = self.ce_term(out, inputs)
        return terms


@METHODS.register("gkd")
class GKD(DistillMethod):
    """GKD (Agarwal et al., 2024): generalized Jensen-Shannon divergence JSD(β) between teacher and
    student task-head distributions at the task positions (``jsd``), both at temperature T
    (``temperature``); β ∈ [0, 1] interpolates from the forward KL (β = 0) to the reverse KL (β = 1),
    as TRL's ``generalized_jsd_loss``. Causal LMs, as TRL's ``GKDTrainer``: with probability ``lmbda``
    per batch the responses are the student's own samples (on-policy; sampled at temperature 1 with a
    KV cache, at most ``max_new_tokens``, ending at eos), and with ``seq_kd`` the other batches take
    the teacher's greedy responses (sequence-level KD). An on-policy batch's loss is normalised by its
    own response tokens (its count is not known before generation). ``ce_weight`` > 0 adds cross-entropy
    on the batch's responses where they are not the student's own samples (``ce``); the paper has no CE
    term — its students are supervised-fine-tuned before GKD — so the default is 0 and a compare study
    tunes it. Encoders: token level on the masked-LM head only (an encoder does not generate; ``lmbda``
    and ``seq_kd`` are refused)."""

    uses_mlm = True
    chunkable = True

    def __init__(self, student, teacher_config, beta: float = 0.5, temperature: float = 1.0, lmbda: float = 0.0,
                 seq_kd: bool = False, max_new_tokens: int = 32, ce_weight: float = 0.0, seed: int = 0, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, {"ce": ce_weight, **(weights or {})}, dynamic_weights)
        self.ce_weight = ce_weight
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gkd: beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
        if (lmbda > 0 or seq_kd) and not student.family.spec.has("generates"):
            raise ValueError("gkd: lmbda > 0 and seq_kd need a causal LM (an encoder does not generate)")
        self.beta, self.temperature = beta, temperature
        self.lmbda, self.seq_kd, self.max_new_tokens = lmbda, seq_kd, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.generated = {"student": 0, "teacher": 0}  # batches whose responses were generated, by whom

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        if self.training and "response" in inputs:
            if self.lmbda > 0 and float(torch.rand(1, generator=self.generator)) < self.lmbda:
                inputs.update(regenerate_responses(self.student.mlm, inputs, self.max_new_tokens, sample=True))
                inputs["on_policy"] = True
                self.generated["student"] += 1
            elif self.seq_kd:
                inputs.update(regenerate_responses(teacher, inputs, self.max_new_tokens, sample=False))
                self.generated["teacher"] += 1
        return super().teacher_targets(teacher, inputs)

    def losses(self, inputs, targets, out):
        terms = {"jsd": self.divergence_term(out, inputs, targets, "jsd", self.temperature, self.beta)}
        if self.ce_weight > 0 and not inputs.get("on_policy"):
            terms["ce"] = self.ce_term(out, inputs)
        return terms


@torch.no_grad()
def regenerate_responses(model, inputs: dict, max_new_tokens: int, sample: bool) -> dict:
    """New causal inputs with the prompts of ``inputs`` and the responses ``model`` generates for them
    (sampled at temperature 1, or greedy; KV cache; each response up to and including its first eos,
    at most ``max_new_tokens``). Returns the keys of ``make_inputs`` for a causal batch; the count of
    response tokens changes, so ``num_tokens`` is dropped."""
    ids, mask, response = inputs["ids"], inputs["mask"].bool(), inputs["response"].bool()
    prompt_len = (mask & ~response).sum(1)
    cfg = model.config
    eos = cfg.eos_token_id if not isinstance(cfg.eos_token_id, list) else cfg.eos_token_id[0]
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else eos
    b, width = ids.shape[0], int(prompt_len.max())
    left = torch.full((b, width), pad, dtype=ids.dtype, device=ids.device)
    left_mask = torch.zeros_like(left)
    for i, n in enumerate(prompt_len.tolist()):
        left[i, width - n:], left_mask[i, width - n:] = ids[i, :n], 1
    was = model.training
    model.eval()
    try:
        gen = model.generate(input_ids=left, attention_mask=left_mask, max_new_tokens=max_new_tokens,
                             do_sample=sample, top_k=0 if sample else None, top_p=1.0 if sample else None,
                             temperature=1.0 if sample else None, pad_token_id=pad, eos_token_id=eos,
                             use_cache=True, synced_gpus=is_sharded(model))[:, width:]
    finally:
        model.train(was)
    ended = (gen == eos).int().cumsum(1)
    keep = (ended == 0) | ((ended == 1) & (gen == eos))  # up to and including the first eos
    lengths = keep.sum(1)
    total = int((prompt_len + lengths).max())
    new_ids = torch.full((b, total), pad, dtype=ids.dtype, device=ids.device)
    new_mask, new_resp = torch.zeros_like(new_ids), torch.zeros_like(new_ids)
    for i, (n, r) in enumerate(zip(prompt_len.tolist(), lengths.tolist())):
        new_ids[i, :n], new_ids[i, n:n + r] = ids[i, :n], gen[i, :r]
        new_mask[i, :n + r], new_resp[i, n:n + r] = 1, 1
    chosen = F.pad(new_resp.bool()[:, 1:], (0, 1), value=False)
    return {"ids": new_ids, "mask": new_mask, "content": new_resp.bool(), "input_ids": new_ids, "chosen": chosen,
            "response": new_resp, "num_tokens": None}


def first_pairs(batches: list[dict], n: int):
    """The evaluation batches cut to their first ``n`` pairs in the pairs' own order: by ``pair_index`` where the
    batches were made by length (``masked_lm._eval_batches``; a random subset, not the shortest pairs), else the
    first batches holding ``n``. Yields batches."""
    if batches and "pair_index" in batches[0]:
        for b in batches:
            keep = b["pair_index"] < n
            if keep.any():
                yield {k: (v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape else v) for k, v in b.items()}
        return
    used = 0
    for b in batches:
        if used >= n:
            return
        used += b["q_input_ids"].shape[0]
        yield b


@METHODS.register("ddk")
class DDK(DistillMethod):
    """DDK (Liu et al., 2024): distillation with domain-discrepancy-driven data *sampling*. Every
    ``update_every`` optimizer steps the trial measures, on (up to ``eval_pairs``) validation pairs, the
    per-department discrepancy d_k = mean over masked tokens of (student CE − teacher CE) under a fixed
    masking (``update_domain_weights``); the department sampling weights follow
    w ← (1 − s)·w + s·w_new with w_new = K·softmax(d / τ) (mean 1; ``smoothing`` s, ``tau`` τ). Each
    training batch is then redrawn from its rows with replacement, row probability ∝ w of its
    department (``resample_batch``): departments where the student lags the teacher most are seen more
    often. The loss is the paper's CE + γ·KL: cross-entropy of the student's masked-LM head against the
    true tokens at the masked positions (``ce``) plus γ (``kd_weight``) times the temperature KL
    T²·KL(p_t ‖ q_s) of the masked-LM distributions there (``kd``). ``hidden_mse`` adds a last-layer MSE
    through a learned map (``hidden``) — not in the paper, off by default. Rank 0 measures; the weights
    are broadcast to every DDP rank. Difference from the paper: resampling acts within each training
    batch (the stream's order stays the data's), not on the shard mixture of a pre-training corpus."""

    uses_mlm = True

    def __init__(self, student, teacher_config, n_departments: int = 1, update_every: int = 20,
                 smoothing: float = 0.5, tau: float = 1.0, temperature: float = 1.0, kd_weight: float = 1.0,
                 hidden_mse: bool = False, eval_pairs: int = 256, weights=None, dynamic_weights=False):
        super().__init__(student, teacher_config, {"kd": kd_weight, **(weights or {})}, dynamic_weights)
        n = max(1, n_departments) + 1  # last slot: unknown department
        self.register_buffer("dept_weight", torch.ones(n))
        self.register_buffer("discrepancy", torch.zeros(n))
        self.update_every, self.smoothing, self.tau, self.temperature = update_every, smoothing, tau, temperature
        self.eval_pairs = eval_pairs
        self.w_hidden = _linear_or_identity(self.s_hidden, self.t_hidden) if hidden_mse else None

    def teacher_layers(self):
        return [self.t_layers] if self.w_hidden is not None else []

    def domain_weights(self) -> torch.Tensor:
        """Current department sampling weights (mean 1; last entry = unknown department)."""
        return self.dept_weight.clone()

    def _slots(self, department: torch.Tensor) -> torch.Tensor:
        n = self.dept_weight.numel()
        d = department.clone()
        d[d < 0] = n - 1
        return d.clamp_max(n - 1)

    def resample_batch(self, batch: dict, generator: torch.Generator) -> dict:
        """The batch's rows redrawn with replacement, probability ∝ their department's weight."""
        if "department" not in batch:
            return batch
        w = self.dept_weight.detach().cpu()[self._slots(batch["department"].cpu())]
        idx = torch.multinomial(w / w.sum(), w.numel(), replacement=True, generator=generator)
        return {k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()]) for k, v in batch.items()}

    @torch.no_grad()
    def update_domain_weights(self, teacher, batches: list[dict], tokens: "TokenIds", vocab_size: int) -> None:
        """Measure the per-department discrepancy on these validation batches and move the weights."""
        device = self.dept_weight.device
        n = self.dept_weight.numel()
        sums, counts = torch.zeros(n, device=device), torch.zeros(n, device=device)
        gen = torch.Generator().manual_seed(0)
        was = self.training
        self.eval()
        try:
            for batch in first_pairs(batches, self.eval_pairs):
                inputs = make_inputs({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}, tokens, gen,
                                     corrupt=True, vocab_size=vocab_size, family=self.family)
                chosen = inputs["chosen"]
                if not chosen.any():
                    continue
                labels = inputs["ids"][chosen]
                ls = self.family.run(self.student, inputs, hidden=False).logits[chosen]
                lt = self.family.run(teacher, inputs, hidden=False).logits[chosen]
                gap = F.cross_entropy(ls.float(), labels, reduction="none") - F.cross_entropy(lt.float(), labels,
                                                                                             reduction="none")
                row = torch.arange(chosen.shape[0], device=device)[:, None].expand_as(chosen)[chosen]
                slot = self._slots(inputs["department"])[row]
                sums.index_add_(0, slot, gap)
                counts.index_add_(0, slot, torch.ones_like(gap))
        finally:
            self.train(was)
        seen = counts > 0
        self.discrepancy[seen] = sums[seen] / counts[seen]
        new = torch.softmax(self.discrepancy / self.tau, 0) * n
        self.dept_weight.mul_(1 - self.smoothing).add_(self.smoothing * new)

    def losses(self, inputs, targets, out):
        terms = {"ce": self.ce_term(out, inputs),
                 "kd": L.forward_kl(self.task_logits(out, inputs), targets["logits"], temperature=self.temperature)}
        if self.w_hidden is not None:
            terms["hidden"] = L.hidden_mse(self.w_hidden(out.hidden_states[-1]), targets["hidden"][self.t_layers],
                                           inputs["mask"])
        return terms


@METHODS.register("mixkd")
class MixKD(DistillMethod):
    """MixKD (Liang et al., 2021), on a masked LM. Inputs are BERT-masked as for every MLM objective;
    a mixed batch interpolates the (masked) input embedding sequences, E_mix = λ·E_i + (1−λ)·E_π(i), with
    λ ~ Beta(α, α) drawn from the method's seeded generator and a seeded random pairing π, given to
    teacher and student alike. The loss is the paper's: the task cross-entropy on the clean inputs
    (``ce``: the true tokens at the masked positions), the mixup cross-entropy on the mixed inputs
    (``mix_ce`` = λ·CE(row i's masked tokens) + (1−λ)·CE(row π(i)'s masked tokens)), and KD — T²·KL of
    the teacher's and student's masked-LM distributions — on the clean inputs (``kd_clean``) and on the
    mixed ones (``kd``), each weighted by ``kd_weight``. KD is taken only at masked content positions,
    where the teacher predicts (never at [CLS]/[SEP] or unmasked tokens, which an MLM teacher nearly
    copies). ``hidden_mse`` adds a last-layer MSE on the mixed inputs (``hidden``; not in the paper, off
    by default). Needs the online teacher (mixed inputs cannot come from a cache)."""

    uses_mlm = True

    def __init__(self, student, teacher_config, alpha: float = 0.4, temperature: float = 1.0, kd_weight: float = 1.0,
                 hidden_mse: bool = False, seed: int = 0, weights=None, dynamic_weights=False):
        super().__init__(student, teacher_config, {"kd": kd_weight, "kd_clean": kd_weight, **(weights or {})},
                         dynamic_weights)
        import numpy as np

        self.alpha, self.temperature = alpha, temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)  # λ ~ Beta(α, α): torch's Beta takes no generator
        self.w_hidden = _linear_or_identity(self.s_hidden, self.t_hidden) if hidden_mse else None

    def teacher_layers(self):
        return []

    def _mix(self, inputs):
        if "mix" not in inputs:
            lam = float(self.rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0
            perm = torch.randperm(inputs["ids"].shape[0], generator=self.generator).to(inputs["ids"].device)
            inputs["mix"] = (lam, perm)
        return inputs["mix"]

    def _mixed_embeddings(self, model, inputs):
        lam, perm = self._mix(inputs)
        e = model.get_input_embeddings()(inputs["input_ids"])
        return lam * e + (1 - lam) * e[perm], (inputs["mask"].bool() | inputs["mask"].bool()[perm]).long()

    def _kd_positions(self, inputs):
        """Where KD on a mixed row is taken: the masked positions of either of its two rows."""
        _, perm = self._mix(inputs)
        return inputs["chosen"] | inputs["chosen"][perm]

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        e, m = self._mixed_embeddings(teacher, inputs)
        mixed = teacher(inputs_embeds=e, attention_mask=m, output_hidden_states=self.w_hidden is not None)
        clean = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["mask"])
        targets = {"logits": self._vocab_slice(mixed.logits[self._kd_positions(inputs)]), "mix_mask": m,
                   "clean_logits": self._vocab_slice(clean.logits[inputs["chosen"]])}
        if self.w_hidden is not None:
            targets["hidden"] = {self.t_layers: mixed.hidden_states[-1]}
        return targets

    def student_forward(self, inputs, targets):
        e, m = self._mixed_embeddings(self.student.mlm, inputs)
        return self.student(inputs_embeds=e, attention_mask=m)

    def losses(self, inputs, targets, out):
        lam, perm = self._mix(inputs)
        chosen, ids = inputs["chosen"], inputs["ids"]
        clean = self.student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"])
        mixed = self._vocab_slice(out.logits)
        terms = {"ce": self.ce_term(clean, inputs),
                 "mix_ce": lam * L.token_cross_entropy(mixed[chosen], ids[chosen])
                 + (1 - lam) * L.token_cross_entropy(mixed[chosen[perm]], ids[perm][chosen[perm]]),
                 "kd_clean": L.forward_kl(self.task_logits(clean, inputs), targets["clean_logits"],
                                          temperature=self.temperature),
                 "kd": L.forward_kl(mixed[self._kd_positions(inputs)], targets["logits"], temperature=self.temperature)}
        if self.w_hidden is not None:
            terms["hidden"] = L.hidden_mse(self.w_hidden(out.hidden_states[-1]), targets["hidden"][self.t_layers],
                                           targets["mix_mask"])
        return terms


@METHODS.register("distillseq")
class DistillSeq(DistillMethod):
    """Black-box label distillation (DistillSeq-style, Yang et al., 2024): the student sees only the
    teacher's outputs on the inputs — its predicted tokens at the masked positions — and learns them
    with cross-entropy (``label_ce``); no hidden states, attentions or probabilities are used."""

    uses_mlm = True

    def teacher_layers(self):
        return []

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        out = self.family.run(teacher, inputs, hidden=False)
        return {"labels": out.logits[inputs["chosen"]].argmax(-1)}

    def losses(self, inputs, targets, out):
        return {"label_ce": F.cross_entropy(out.logits[inputs["chosen"]], targets["labels"])}


def method_params(name: str) -> tuple[str, ...]:
    """The keys method ``name`` takes in ``method.params`` (its declaration in ``raykd.distill.settings``)."""
    return S.setting_names(name)


def build_method(name: str, student: Student, teacher_config, **params) -> DistillMethod:
    """The registered method ``name`` around ``student``. ``params``: the method's declared settings
    (``raykd.distill.settings``; an unknown key or a value out of its declared range raises ValueError
    naming the allowed ones) and the study-wide ``STUDY_SETTINGS``, of which the method gets those it takes."""
    import inspect

    allowed = S.setting_names(name)
    unknown = sorted(k for k in params if k not in allowed and k not in S.STUDY_SETTINGS)
    if unknown:
        raise ValueError(f"method {name}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    for key, value in params.items():
        why = S.check_value(name, key, value)
        if why is not None:
            raise ValueError(f"method {name}: {key}: {why}")
    takes = inspect.signature(METHODS.get(name).__init__).parameters
    return METHODS.get(name)(student, teacher_config, **{k: v for k, v in params.items() if k in takes})


from . import cross_tokenizer  # noqa: E402,F401 (registers the cross-tokenizer objectives)
