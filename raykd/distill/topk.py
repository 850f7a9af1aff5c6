"""Sparse (top-k) teacher distributions: what the teacher-logit cache stores and the divergences that
read it. Pure torch, no Ray.

Per task position the cache keeps the teacher's k most probable token ids, their log-probabilities at
temperature 1 and, for each temperature T the study uses, the tail bucket log(1 − Σ_{top k} p_T) — the
mass of every other token at T. A divergence then compares two (k + 1)-category distributions: the k
cached tokens and one bucket for the rest, on *both* sides (the student's bucket is 1 − Σ of its own
probabilities of the same k ids). At k = V − 1 this is exactly the full-vocabulary divergence; below,
it is the divergence between the two distributions coarsened to the teacher's top k (tested).

One cache of K tokens serves every k ≤ K and every cached temperature: the top-k of a distribution at
any T are its top-K's first k (temperature keeps the order) and the stored tail gives the normaliser
at T (``teacher_log_probs``).
"""

from __future__ import annotations

import torch

from . import losses as L

LOG_FLOOR = -50.0  # log-probabilities are clamped here (e^-50 ≈ 2e-22): a bucket of mass 0 gives 0·log 0 = 0


@torch.no_grad()
def teacher_topk(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, k: int, temperatures: list[float], *,
                 vocab: int | None = None, chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k at task positions from its final hidden states h [n, d] and LM head (w [V, d],
    b [V]), ``chunk_tokens`` positions at a time (never [n × V] at once), over the first ``vocab``
    entries (k ≤ V − 1). Returns (ids int32 [n, k], log-probabilities at T = 1 float32 [n, k], sorted descending;
    tails float32 [n, len(temperatures)]: log(1 − Σ_{top k} p_T), clamped at ``LOG_FLOOR``)."""
    n = h.shape[0]
    v = w.shape[0] if vocab is None else min(vocab, w.shape[0])
    k = min(k, v - 1)  # at least one token in the tail bucket (its log-probability is then finite)
    ids = torch.empty((n, k), dtype=torch.int32, device=h.device)
    logp = torch.empty((n, k), dtype=torch.float32, device=h.device)
    tails = torch.empty((n, len(temperatures)), dtype=torch.float32, device=h.device)
    w32, b32 = w[:v].float(), None if b is None else b[:v].float()
    for start in range(0, n, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        z = h[sl].float() @ w32.T
        if b32 is not None:
            z += b32
        top, idx = torch.log_softmax(z, -1).topk(k, dim=-1)
        ids[sl], logp[sl] = idx.to(torch.int32), top
        rest = z.scatter(-1, idx, float("-inf"))  # the tail's own logits: no cancellation in 1 − Σ top
        for j, t in enumerate(temperatures):
            tails[sl, j] = (torch.logsumexp(rest / t, -1) - torch.logsumexp(z / t, -1)).clamp_min(LOG_FLOOR)
        del z, rest
    return ids, logp, tails


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, stable at both ends, clamped at ``LOG_FLOOR`` (x = 0 → the floor)."""
    x = x.clamp(max=-1e-30)
    out = torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(LOG_FLOOR)


def teacher_log_probs(logp1: torch.Tensor, tail: torch.Tensor, temperature: float, k: int | None = None) -> torch.Tensor:
    """The teacher's (k + 1)-category log-probabilities at ``temperature`` [n, k + 1] (the first k
    cached tokens, then the tail bucket) from cached log-probabilities at T = 1 (``logp1`` [n, K],
    descending) and the cached tail at that temperature for all K (``tail`` [n]); k ≤ K (None: K)."""
    logp1, tail = logp1.float(), tail.float()
    K = logp1.shape[-1]
    k = K if k is None else k
    if not 1 <= k <= K:
        raise ValueError(f"top-k: k = {k} is outside the cached 1..{K}")
    a = logp1 / temperature  # log p_T + log Z_T: the normaliser is fixed by the cached top-K mass at T
    log_z = torch.logsumexp(a, -1) - _log1mexp(tail)
    top = (a[..., :k] - log_z[..., None]).clamp_min(LOG_FLOOR)
    rest = _log1mexp(torch.logsumexp(top, -1))
    return torch.cat([top, rest[..., None]], -1)


def student_log_probs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """The student's (k + 1)-category log-probabilities at ``temperature`` [n, k + 1] over the teacher's
    top-k ``ids`` [n, k] and one bucket for every other token, from its logits [n, V] (differentiable)."""
    ls = torch.log_softmax(L._at_least_fp32(logits) / temperature, -1)
    idx = ids.long()
    top = ls.gather(-1, idx).clamp_min(LOG_FLOOR)
    # the bucket from its own tokens' probabilities (1 − Σ top would cancel when the bucket is small)
    rest = torch.logsumexp(ls.scatter(-1, idx, float("-inf")), -1).clamp_min(LOG_FLOOR)
    return torch.cat([top, rest[..., None]], -1)


def sparse_divergence(name: str, logits_s: torch.Tensor, ids: torch.Tensor, teacher_lp: torch.Tensor, *,
                      temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1, mask: torch.Tensor | None = None,
                      num_tokens: float | None = None) -> torch.Tensor:
    """``losses.divergence(name, …)`` between the student (logits [n, V]) and the teacher given as its
    (k + 1)-category log-probabilities at ``temperature`` (``teacher_lp`` [n, k + 1], from
    ``teacher_log_probs``) over its top-k ``ids`` [n, k] plus the tail bucket; the same temperature
    factors as the dense loss (T² for forward KL). Nats per counted position."""
    s = student_log_probs(logits_s, ids, temperature)
    # divergence() applies log_softmax(x / T): x = T·log p is already normalised, so it gets p back exactly
    return L.divergence(name, temperature * s, temperature * teacher_lp, temperature=temperature, beta=beta,
                        alpha=alpha, mask=mask, num_tokens=num_tokens)
