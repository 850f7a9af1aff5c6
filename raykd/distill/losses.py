"""Distillation losses: pure functions on tensors (no state, no Ray). ``mask`` is [b, t] with 1 on
tokens that count; hidden states are [b, t, d]; logits are [..., V]. Every loss returns a scalar."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_mean_over_tokens(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-token values [b, t] over tokens where mask is 1 (all tokens when mask is None)."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected hidden-state MSE: mean over counted tokens of (1/d)·‖h_s − h_t‖² (both already in one space)."""
    return _masked_mean_over_tokens((h_s - h_t).pow(2).mean(-1), mask)


def hidden_cosine(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected hidden-state cosine loss: mean over counted tokens of 1 − cos(h_s, h_t)."""
    return _masked_mean_over_tokens(1.0 - F.cosine_similarity(h_s, h_t, dim=-1, eps=1e-8), mask)


def token_similarity(h: torch.Tensor) -> torch.Tensor:
    """Token×token cosine-similarity matrices [b, t, t] of hidden states [b, t, d]."""
    hn = F.normalize(h, dim=-1, eps=1e-8)
    return hn @ hn.transpose(1, 2)


def relation_loss(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Structural relation loss: mean over counted token pairs (i, j) of (S_s[i,j] − S_t[i,j])², where
    S = token_similarity; widths of h_s and h_t may differ."""
    diff = (token_similarity(h_s) - token_similarity(h_t)).pow(2)
    if mask is None:
        return diff.mean()
    m = mask.to(diff.dtype)
    pair = m.unsqueeze(2) * m.unsqueeze(1)
    return (diff * pair).sum() / pair.sum().clamp_min(1.0)


def relation_loss_within(y_s: torch.Tensor, y_t: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Example×example relation loss restricted to pairs of one group: mean over pairs (i, j) with
    groups[i] == groups[j] of (cos(y_s,i, y_s,j) − cos(y_t,i, y_t,j))²; y [n, d] (widths may differ),
    ``groups`` [n] (None: one group, i.e. every pair). A pair across groups never enters it."""
    diff = (token_similarity(y_s[None]) - token_similarity(y_t[None]))[0].pow(2)
    if groups is None:
        return diff.mean()
    same = (groups[:, None] == groups[None, :]).to(diff.dtype)
    return (diff * same).sum() / same.sum().clamp_min(1.0)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
             temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE: −mean_i log softmax_j(cos(a_i, c_j)/τ)[i], candidates c = positives of the batch
    (in-batch negatives) followed by ``negatives`` [m, d] when given (e.g. hard negatives)."""
    a = F.normalize(anchor, dim=-1, eps=1e-8)
    c = F.normalize(positive if negatives is None else torch.cat([positive, negatives]), dim=-1, eps=1e-8)
    logits = a @ c.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def attention_relation_kl(x_s: torch.Tensor, x_t: torch.Tensor, heads: int,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM self-attention relation KL: split x [b, t, d] into ``heads`` relation heads of width
    d_h, R = softmax(x_h x_hᵀ/√d_h) over keys (padding keys excluded); returns the mean over heads
    and counted query tokens of KL(R_t ‖ R_s). Student and teacher widths may differ."""
    def relations(x):
        b, t, d = x.shape
        if d % heads:
            raise ValueError(f"attention_relation_kl: width {d} is not divisible by {heads} relation heads")
        xh = x.view(b, t, heads, d // heads).transpose(1, 2)
        scores = xh @ xh.transpose(-1, -2) / math.sqrt(d // heads)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        return F.log_softmax(scores, dim=-1)

    ls, lt = relations(x_s), relations(x_t)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean(1)  # [b, t]
    return _masked_mean_over_tokens(kl, mask)


def _token_reduce(values: torch.Tensor, mask: torch.Tensor | None, num_tokens: float | None) -> torch.Tensor:
    """Per-position values [...] → scalar: the mean over counted positions (mask 1; all when None), or,
    with ``num_tokens``, their sum divided by ``num_tokens`` — the counted tokens of the *global*
    batch (every micro-batch of the optimizer step on every rank), so that gradient accumulation and
    DDP give the gradient of one big batch."""
    if num_tokens is None:
        return _masked_mean_over_tokens(values, mask)
    if mask is not None:
        values = values * mask.to(values.dtype)
    return values.sum() / max(float(num_tokens), 1.0)


def _log_probs(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float):
    """(log q_s, log p_t): log-softmax of student and teacher logits divided by T (16-bit logits in fp32)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return F.log_softmax(_at_least_fp32(logits_s) / temperature, -1), \
        F.log_softmax(_at_least_fp32(logits_t) / temperature, -1)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) per position from log-probabilities [..., V]. 0·log 0 = 0: an entry where a is 0
    (log a = −inf, e.g. a masked vocabulary entry of the teacher) adds nothing, even where b is 0 too,
    instead of the NaN of 0·(−inf − (−inf))."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


# One temperature rule for every divergence: logits are divided by T before the softmax and the
# divergence is multiplied by T². Hinton's argument — the gradient of a softened divergence with
# respect to the logits shrinks as 1/T², so T² keeps its weight against the cross-entropy term
# unchanged when T is searched — applies to all of them, and comparing divergences at one
# ``kd_weight`` across temperatures needs the same factor on each.


def forward_kl(logits_s: torch.Tensor, logits_t: torch.Tensor, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Forward KD (Hinton et al.): T² · KL(p_t ‖ q_s), p_t = softmax(z_t/T), q_s = softmax(z_s/T);
    mean over counted positions (or the sum ÷ ``num_tokens``). Finite where teacher logits are −inf
    (0·log 0 = 0). Nats."""
    ls, lt = _log_probs(logits_s, logits_t, temperature)
    return temperature ** 2 * _token_reduce(_kl(lt, ls), mask, num_tokens)


def reverse_kl(logits_s: torch.Tensor, logits_t: torch.Tensor, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Reverse KL (MiniLLM's token-level objective): T² · KL(q_s ‖ p_t) = T² · Σ q_s (log q_s − log p_t)
    at temperature T; mean over counted positions (or the sum ÷ ``num_tokens``). Nats."""
    ls, lt = _log_probs(logits_s, logits_t, temperature)
    return temperature ** 2 * _token_reduce(_kl(ls, lt), mask, num_tokens)


def generalized_jsd(logits_s: torch.Tensor, logits_t: torch.Tensor, *, beta: float = 0.5, temperature: float = 1.0,
                    mask: torch.Tensor | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Generalized JSD (GKD, Agarwal et al. 2024; TRL's ``generalized_jsd_loss``): with p_t, q_s the
    softmax of the logits divided by T and M = β·p_t + (1−β)·q_s, JSD_β = β·KL(p_t‖M) + (1−β)·KL(q_s‖M)
    for β in (0, 1); at the endpoints, as TRL, β = 0 is the forward KL(p_t‖q_s) and β = 1 the reverse
    KL(q_s‖p_t). Times T² (raykd's one temperature rule; TRL's function has no such factor: equal at
    T = 1). Mean over counted positions (or the sum ÷ ``num_tokens``). Nats."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
    ls, lt = _log_probs(logits_s, logits_t, temperature)
    return temperature ** 2 * _token_reduce(_jsd(ls, lt, beta), mask, num_tokens)


def _jsd(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_β per position from log-probabilities (student ``ls``, teacher ``lt``), TRL's endpoints."""
    if beta == 0.0:
        return _kl(lt, ls)
    if beta == 1.0:
        return _kl(ls, lt)
    lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log(1 - beta)]), 0)
    return beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm)


def skew_kl(logits_s: torch.Tensor, logits_t: torch.Tensor, *, alpha: float = 0.1, reverse: bool = False,
            temperature: float = 1.0, mask: torch.Tensor | None = None,
            num_tokens: float | None = None) -> torch.Tensor:
    """Skew KL (DistiLLM, Ko et al. 2024): KL(p_t ‖ α·p_t + (1−α)·q_s), or with ``reverse`` the skew
    reverse KL(q_s ‖ α·q_s + (1−α)·p_t), at temperature T, times T²; α in [0, 1) (α = 0 is the plain
    forward / reverse KL). Mean over counted positions (or the sum ÷ ``num_tokens``). Nats."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew_kl: alpha must be in [0, 1), got {alpha}")
    ls, lt = _log_probs(logits_s, logits_t, temperature)
    a, b = (ls, lt) if reverse else (lt, ls)
    mix = b if alpha == 0.0 else torch.logsumexp(torch.stack([a + math.log(alpha), b + math.log(1 - alpha)]), 0)
    return temperature ** 2 * _token_reduce(_kl(a, mix), mask, num_tokens)


def tvd(logits_s: torch.Tensor, logits_t: torch.Tensor, *, temperature: float = 1.0,
        mask: torch.Tensor | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Total variation distance T² · ½ Σ |p_t − q_s| at temperature T; mean over counted positions (or
    the sum ÷ ``num_tokens``). A probability in [0, 1] at T = 1."""
    ls, lt = _log_probs(logits_s, logits_t, temperature)
    return temperature ** 2 * _token_reduce(0.5 * (lt.exp() - ls.exp()).abs().sum(-1), mask, num_tokens)


def uld_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                 mask: torch.Tensor | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Universal Logit Distillation's distance (Boizard et al. 2024): per token, the closed-form
    Wasserstein-1 distance between student and teacher distributions over *their own* vocabularies,
    Σ_i |sort↓(p_s)_i − sort↓(p_t)_i| with p = softmax(z / T) and the smaller vocabulary's sorted
    vector zero-padded at its tail — so student logits [..., V_s] and teacher logits [..., V_t] may
    differ in V (the leading shapes must agree). No cross-entropy, weight, ½ or T² factor. The mean
    over counted positions (``mask`` over the leading shape; all when None), or the sum ÷
    ``num_tokens``. In [0, 2]; gradients reach the student's logits through the sort."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"uld_distance: student positions {tuple(student_logits.shape[:-1])} and teacher positions "
                         f"{tuple(teacher_logits.shape[:-1])} differ (align the two sequences first)")
    ps = F.softmax(_at_least_fp32(student_logits) / temperature, -1).sort(-1, descending=True).values
    pt = F.softmax(_at_least_fp32(teacher_logits).detach() / temperature, -1).sort(-1, descending=True).values
    width = max(ps.shape[-1], pt.shape[-1])
    ps, pt = F.pad(ps, (0, width - ps.shape[-1])), F.pad(pt, (0, width - pt.shape[-1]))
    return _token_reduce((ps - pt).abs().sum(-1), mask, num_tokens)


def _sorted_l1(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """Per row Σ |sort↓(p_s) − sort↓(p_t)|, the narrower side zero-padded (ULD's distance on given masses)."""
    ps, pt = p_s.sort(-1, descending=True).values, p_t.sort(-1, descending=True).values
    width = max(ps.shape[-1], pt.shape[-1])
    return (F.pad(ps, (0, width - ps.shape[-1])) - F.pad(pt, (0, width - pt.shape[-1]))).abs().sum(-1)


def _span_parts(logits: torch.Tensor, tokens: torch.Tensor, spans: torch.Tensor, num_spans: int,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pieces of each span's merged distribution (GOLD's "bayesian" merge, each p predicting the
    token it is paired with): (log p of the positions in spans [n', V], each span's last position in
    it [num_spans], Σ log p_k(token_k) over each span's earlier positions [num_spans], whether each span
    has positions here [num_spans]). ``_merged`` gathers log q_g(x) = earlier_g + log p_last(g)(x)."""
    keep = spans >= 0
    lp = F.log_softmax(_at_least_fp32(logits[keep]) / temperature, -1)
    g = spans[keep]
    order = torch.arange(g.numel(), device=g.device)
    last = torch.full((num_spans,), -1, dtype=torch.long, device=g.device).scatter_reduce(0, g, order, "amax")
    own = lp.gather(1, tokens[keep][:, None]).squeeze(1)
    own = torch.where(order == last[g], torch.zeros_like(own), own)  # the last position's token is the variable
    earlier = torch.zeros(num_spans, dtype=lp.dtype, device=lp.device).index_add(0, g, own)
    return lp, last, earlier, last >= 0


def _merged(parts, sel: torch.Tensor) -> torch.Tensor:
    """log q_g [len(sel), V] of the spans ``sel`` (unnormalised: the earlier tokens' probability times the
    last position's distribution) from ``_span_parts``."""
    lp, last, earlier, _ = parts
    return lp[last[sel]] + earlier[sel, None]


def gold_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_tokens: torch.Tensor,
                  teacher_tokens: torch.Tensor, student_spans: torch.Tensor, teacher_spans: torch.Tensor, *,
                  temperature: float = 1.0, shared: tuple[torch.Tensor, torch.Tensor] | None = None,
                  beta: float = 0.5, matched_weight: float | None = None, num_tokens: float | None = None,
                  num_spans: int | None = None) -> torch.Tensor:
    """GOLD's cross-tokenizer distance (TRL's ``GOLDTrainer`` with ``use_uld_loss``, the byte-offset
    alignment and the "bayesian" merge). Inputs: per position, the logits [n, V] (student [n_s, V_s],
    teacher [n_t, V_t]), the token each position predicts [n] and its span [n] (ints numbered alike on
    both sides, -1: none; ``raykd.data.token_spans``). Each span present on both sides is one
    distribution per side (``_span_parts``: the earlier tokens' probability times the last
    position's distribution, unnormalised). Per span: with ``shared`` = (student ids [m], teacher ids
    [m]) of the entries both vocabularies hold, w · JSD_β over those entries (each side renormalised on
    them; β as ``generalized_jsd``: M = β·p_t + (1−β)·q_s) + (1 − w) · Σ|sort↓ − sort↓| over the other
    entries of each side (zero-padded), w = ``matched_weight`` or m / V_t (TRL's default); without
    ``shared``, the sorted L1 over whole vocabularies. No T² factor. Summed over spans and divided by
    ``num_tokens`` (the mean over spans when None). ``num_spans``: a bound on the span numbers (None:
    the largest + 1). Teacher inputs carry no gradient. Only the spans on both sides are materialised
    ([spans, V] per side). Note: renormalising the shared part cancels a span's earlier-token factor
    there — the JSD compares the last positions' distributions on the shared entries; the merge acts
    through the sorted L1 of the rest (and the whole of it without ``shared``)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gold_distance: beta must be in [0, 1], got {beta}")
    n = num_spans if num_spans is not None else 1 + max(int(s.max()) if s.numel() else -1
                                                        for s in (student_spans, teacher_spans))
    ps = _span_parts(student_logits, student_tokens, student_spans, n, temperature)
    with torch.no_grad():
        pt = _span_parts(teacher_logits.detach(), teacher_tokens, teacher_spans, n, temperature)
    sel = (ps[3] & pt[3].to(ps[3].device)).nonzero().squeeze(1)  # spans on both sides
    ls, lt = _merged(ps, sel), _merged(pt, sel.to(pt[0].device)).to(ps[0].device)
    if shared is None:
        per = _sorted_l1(ls.exp(), lt.exp())
    else:
        idx_s, idx_t = (i.to(ls.device) for i in shared)
        w = float(idx_t.numel()) / lt.shape[-1] if matched_weight is None else float(matched_weight)
        # each side renormalised on the shared entries
        jsd = _jsd(ls[:, idx_s].log_softmax(-1), lt[:, idx_t].log_softmax(-1), beta)
        rest_s = torch.ones(ls.shape[-1], dtype=torch.bool, device=ls.device).index_fill(0, idx_s, False)
        rest_t = torch.ones(lt.shape[-1], dtype=torch.bool, device=ls.device).index_fill(0, idx_t, False)
        per = w * jsd + (1 - w) * _sorted_l1(ls[:, rest_s].exp(), lt[:, rest_t].exp())
    if num_tokens is None:
        return per.mean() if per.numel() else per.sum()
    return per.sum() / max(float(num_tokens), 1.0)


DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": generalized_jsd, "skew_kl": skew_kl,
               "skew_rkl": lambda s, t, **k: skew_kl(s, t, reverse=True, **k), "tvd": tvd}


def divergence(name: str, logits_s: torch.Tensor, logits_t: torch.Tensor, *, temperature: float = 1.0,
               beta: float = 0.5, alpha: float = 0.1, mask: torch.Tensor | None = None,
               num_tokens: float | None = None) -> torch.Tensor:
    """The divergence ``name`` (one of ``DIVERGENCES``) with the settings it takes (β for ``jsd``,
    α for ``skew_kl`` / ``skew_rkl``)."""
    if name not in DIVERGENCES:
        raise ValueError(f"divergence {name!r}: expected one of {', '.join(DIVERGENCES)}")
    kw = {"temperature": temperature, "mask": mask, "num_tokens": num_tokens}
    if name == "jsd":
        kw["beta"] = beta
    elif name.startswith("skew"):
        kw["alpha"] = alpha
    return DIVERGENCES[name](logits_s, logits_t, **kw)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, mask: torch.Tensor | None = None,
                        num_tokens: float | None = None) -> torch.Tensor:
    """Cross-entropy of ``logits`` [..., V] against ``labels`` [...] (fp32), mean over counted
    positions (or the sum ÷ ``num_tokens``). Nats per token."""
    per = F.cross_entropy(_at_least_fp32(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          reduction="none").view(labels.shape)
    return _token_reduce(per, mask, num_tokens)


def soft_cross_entropy(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float = 1.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT prediction-layer loss: mean over counted positions of −Σ softmax(z_t/T)·log_softmax(z_s/T)."""
    pt = F.softmax(logits_t / temperature, -1)
    return _masked_mean_over_tokens(-(pt * F.log_softmax(logits_s / temperature, -1)).sum(-1), mask)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h [b, t, d] over tokens where mask [b, t] is 1 → [b, d]."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
