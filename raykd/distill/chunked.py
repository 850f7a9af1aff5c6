"""A KD loss that never materialises the vocabulary for every token at once: from the final hidden
states of student and teacher and their LM heads, a chunk of tokens at a time (the approach of
Liger-Kernel's fused linear JSD). Pure torch, no Ray.

The naive loss holds [tokens × V] logits of both models, their softmaxes and the student logits'
gradient: at V = 151,936 and 2,048 tokens each such tensor is 1.2 GiB in fp32. Here, inside the
forward pass, each chunk's logits are computed in fp32, the divergence of the chunk and its gradients
with respect to the chunk's student hidden states and the student head are taken at once, and the
chunk's logits are dropped; the backward pass only scales the stored gradients. Value and gradients
equal the unchunked ``losses.divergence`` (tested to 1e-5 relative). Peak memory: a few chunks of
logits, the student head's gradient (as the naive path has too) and the hidden states' gradient.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from . import losses as L


class _Chunked(torch.autograd.Function):
    """Σ over chunks of ``part(student logits of the chunk, chunk slice)``. Per chunk: the logits in
    fp32 (no graph), the part's gradient with respect to them, then the gradients of the hidden
    states (into their slot) and of the head (accumulated in place) by two matrix products — no
    per-chunk copy of the head's gradient; the chunk's logits are then dropped. Backward scales the
    stored gradients (a copy only when the incoming gradient is not 1)."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, part, chunk):
        # fp32 inside, whatever autocast the caller runs under (bf16 / fp16 on CUDA): the chunk's logits,
        # softmaxes and gradients are exactly the unchunked fp32 loss's
        dev = h_s.device.type
        with torch.autocast(dev, enabled=False) if dev in ("cuda", "cpu") else nullcontext():  # meta: no autocast
            return _Chunked._forward(ctx, h_s, w_s, b_s, part, chunk)

    @staticmethod
    def _forward(ctx, h_s, w_s, b_s, part, chunk):
        w32 = w_s.detach().float()
        b32 = None if b_s is None else b_s.detach().float()
        grad_h = torch.empty(h_s.shape, dtype=torch.float32, device=h_s.device)
        grad_w = torch.zeros_like(w32)
        grad_b = None if b32 is None else torch.zeros_like(b32)
        total = torch.zeros((), dtype=torch.float32, device=h_s.device)
        # ``chunk``: a size, or the chunks' slices themselves (chunks that must not cut a group of positions)
        slices = chunk if isinstance(chunk, list) else [slice(s, s + chunk) for s in range(0, h_s.shape[0], chunk)]
        for sl in slices:
            hs = h_s[sl].detach().float()
            with torch.no_grad():
                logits = hs @ w32.T if b32 is None else torch.addmm(b32, hs, w32.T)
            with torch.enable_grad():
                logits.requires_grad_(True)
                value = part(logits, sl)
                (g_logits,) = torch.autograd.grad(value, logits)
            grad_h[sl] = g_logits @ w32
            grad_w.addmm_(g_logits.T, hs)
            if grad_b is not None:
                grad_b += g_logits.sum(0)
            total += value.detach()
            del logits, value, g_logits
        ctx.save_for_backward(grad_h, grad_w, *(() if grad_b is None else (grad_b,)))
        ctx.dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        ctx.has_bias = b_s is not None
        return total

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        # the common case (incoming gradient 1) needs no scaled copy; never in place: the graph may be walked again
        unit = g.device.type != "meta" and bool((g == 1).all())
        scaled = [t if unit else t * g for t in saved]
        dh, dw = scaled[0].to(ctx.dtypes[0]), scaled[1].to(ctx.dtypes[1])
        db = scaled[2].to(ctx.dtypes[2]) if ctx.has_bias else None
        return dh, dw, db, None, None


def _check(h_s: torch.Tensor, n: int, chunk_tokens: int) -> None:
    if h_s.dim() != 2 or h_s.shape[0] != n:
        raise ValueError(f"chunked loss: hidden states must be [n, d] with one n, got {tuple(h_s.shape)} for n = {n}")
    if chunk_tokens < 1:
        raise ValueError(f"chunked loss: chunk_tokens must be positive, got {chunk_tokens}")


def _denominator(n: int, mask: torch.Tensor | None, num_tokens: float | None) -> float:
    """What the chunks' sums are divided by: ``num_tokens``, else the counted positions of the whole set."""
    if num_tokens is not None:
        return num_tokens
    return float(n if mask is None else mask.sum())


@torch.no_grad()
def _teacher_logits(h_t: torch.Tensor, wt: torch.Tensor, bt: torch.Tensor | None, sl: slice) -> torch.Tensor:
    """The teacher's fp32 logits of chunk ``sl`` from its final hidden states and (detached fp32) head."""
    lt = h_t[sl].detach().float() @ wt.T
    return lt if bt is None else lt + bt


def chunked_divergence(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor, *,
                       divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                       alpha: float = 0.1, mask: torch.Tensor | None = None, num_tokens: float | None = None,
                       chunk_tokens: int = 256, b_s: torch.Tensor | None = None, b_t: torch.Tensor | None = None,
                       vocab: int | None = None) -> torch.Tensor:
    """``losses.divergence(divergence, h_s @ w_sᵀ + b_s, h_t @ w_tᵀ + b_t, …)`` computed ``chunk_tokens``
    tokens at a time: h_s [n, d_s], h_t [n, d_t] (final hidden states at the task positions; the
    teacher's carry no gradient), w_s [V_s, d_s], w_t [V_t, d_t] (LM head weights), optional biases,
    ``vocab`` (compare over the first ``vocab`` entries: the tokenizer's real vocabulary). The mean
    over counted positions (``mask`` [n]), or the sum ÷ ``num_tokens``. Gradients reach h_s, w_s, b_s."""
    _check(h_s, h_t.shape[0] if h_t.dim() == 2 else -1, chunk_tokens)
    if divergence not in L.DIVERGENCES:
        raise ValueError(f"divergence {divergence!r}: expected one of {', '.join(L.DIVERGENCES)}")
    denom = _denominator(h_s.shape[0], mask, num_tokens)
    wt = w_t.detach().float()
    bt = None if b_t is None else b_t.detach().float()

    def part(ls: torch.Tensor, sl: slice) -> torch.Tensor:
        lt = _teacher_logits(h_t, wt, bt, sl)
        if vocab is not None:
            ls, lt = ls[..., :vocab], lt[..., :vocab]
        return L.divergence(divergence, ls, lt, temperature=temperature, beta=beta, alpha=alpha,
                            mask=None if mask is None else mask[sl], num_tokens=denom)

    return _Chunked.apply(h_s, w_s, b_s, part, chunk_tokens)


def chunked_cross_entropy(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, *, b: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None, num_tokens: float | None = None,
                          chunk_tokens: int = 256, vocab: int | None = None) -> torch.Tensor:
    """``losses.token_cross_entropy(h @ wᵀ + b, labels, …)`` computed ``chunk_tokens`` tokens at a
    time (h [n, d], w [V, d], labels [n]); gradients reach h, w, b. Nats per token."""
    _check(h, labels.shape[0], chunk_tokens)
    denom = _denominator(h.shape[0], mask, num_tokens)

    def part(logits: torch.Tensor, sl: slice) -> torch.Tensor:
        if vocab is not None:
            logits = logits[..., :vocab]
        return L.token_cross_entropy(logits, labels[sl], mask=None if mask is None else mask[sl], num_tokens=denom)

    return _Chunked.apply(h, w, b, part, chunk_tokens)


def chunked_topk_divergence(h_s: torch.Tensor, w_s: torch.Tensor, ids: torch.Tensor, teacher_lp: torch.Tensor, *,
                            divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                            alpha: float = 0.1, mask: torch.Tensor | None = None, num_tokens: float | None = None,
                            chunk_tokens: int = 256, b_s: torch.Tensor | None = None,
                            vocab: int | None = None) -> torch.Tensor:
    """``topk.sparse_divergence`` against a cached top-k teacher (``ids`` [n, k], ``teacher_lp``
    [n, k + 1]) from the student's final hidden states h_s [n, d] and head (w_s, b_s), ``chunk_tokens``
    positions at a time; gradients reach h_s, w_s, b_s. Nats per counted position."""
    from .topk import sparse_divergence

    _check(h_s, ids.shape[0], chunk_tokens)
    if divergence not in L.DIVERGENCES:
        raise ValueError(f"divergence {divergence!r}: expected one of {', '.join(L.DIVERGENCES)}")
    denom = _denominator(h_s.shape[0], mask, num_tokens)

    def part(ls: torch.Tensor, sl: slice) -> torch.Tensor:
        if vocab is not None:
            ls = ls[..., :vocab]
        return sparse_divergence(divergence, ls, ids[sl], teacher_lp[sl], temperature=temperature, beta=beta,
                                 alpha=alpha, mask=None if mask is None else mask[sl], num_tokens=denom)

    return _Chunked.apply(h_s, w_s, b_s, part, chunk_tokens)


def chunked_uld(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor, *,
                temperature: float = 1.0, mask: torch.Tensor | None = None, num_tokens: float | None = None,
                chunk_tokens: int = 256, b_s: torch.Tensor | None = None, b_t: torch.Tensor | None = None,
                vocab_s: int | None = None, vocab_t: int | None = None) -> torch.Tensor:
    """``losses.uld_distance(h_s @ w_sᵀ + b_s, h_t @ w_tᵀ + b_t, …)`` computed ``chunk_tokens`` aligned
    positions at a time: h_s [n, d_s] and h_t [n, d_t] (row i of each is one aligned pair of positions;
    the teacher's carry no gradient), w_s [V_s, d_s] and w_t [V_t, d_t] — two vocabularies, compared
    over their first ``vocab_s`` / ``vocab_t`` entries (the tokenizers' real sizes). The mean over
    counted positions (``mask`` [n]) or the sum ÷ ``num_tokens``; gradients reach h_s, w_s, b_s."""
    _check(h_s, h_t.shape[0] if h_t.dim() == 2 else -1, chunk_tokens)
    denom = _denominator(h_s.shape[0], mask, num_tokens)
    wt = w_t.detach().float()
    bt = None if b_t is None else b_t.detach().float()

    def part(ls: torch.Tensor, sl: slice) -> torch.Tensor:
        lt = _teacher_logits(h_t, wt, bt, sl)
        ls = ls if vocab_s is None else ls[..., :vocab_s]
        lt = lt if vocab_t is None else lt[..., :vocab_t]
        return L.uld_distance(ls, lt, temperature=temperature, mask=None if mask is None else mask[sl],
                              num_tokens=denom)

    return _Chunked.apply(h_s, w_s, b_s, part, chunk_tokens)


def span_chunks(spans: torch.Tensor, chunk_tokens: int) -> list[slice]:
    """Contiguous slices of positions, each about ``chunk_tokens`` long, cut only where the span number
    changes (``spans`` [n], non-decreasing: a span's positions stay in one chunk). On the meta device
    (no values to read): one chunk."""
    n = spans.shape[0]
    if spans.device.type == "meta" or n == 0:
        return [slice(0, n)]
    values = spans.tolist()
    out, start = [], 0
    for i in range(1, n + 1):
        if i == n or (i - start >= chunk_tokens and values[i] != values[i - 1]):
            out.append(slice(start, i))
            start = i
    return out


def chunked_gold(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                 student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, student_spans: torch.Tensor,
                 teacher_spans: torch.Tensor, *, num_tokens: float, temperature: float = 1.0,
                 shared: tuple[torch.Tensor, torch.Tensor] | None = None, beta: float = 0.5,
                 matched_weight: float | None = None, num_spans: int | None = None, chunk_tokens: int = 256,
                 b_s: torch.Tensor | None = None, b_t: torch.Tensor | None = None, vocab_s: int | None = None,
                 vocab_t: int | None = None) -> torch.Tensor:
    """``losses.gold_distance`` from final hidden states and heads (student h_s [n_s, d_s], w_s; teacher
    h_t [n_t, d_t], w_t, no gradient), about ``chunk_tokens`` student positions at a time, never cutting a
    span: each chunk takes the teacher positions of its own spans. Only positions in a span are used
    (span numbers non-decreasing along each side, as ``cross_tokenizer.span_ids`` gives them). The sum
    over spans ÷ ``num_tokens``; value and gradients equal the plain form. Gradients reach h_s, w_s, b_s."""
    keep_s, keep_t = student_spans >= 0, teacher_spans >= 0
    h_s, tok_s, sp_s = h_s[keep_s], student_tokens[keep_s], student_spans[keep_s]
    h_t, tok_t, sp_t = h_t[keep_t.to(h_t.device)], teacher_tokens[keep_t], teacher_spans[keep_t]
    wt = w_t.detach().float()
    bt = None if b_t is None else b_t.detach().float()

    def part(ls: torch.Tensor, sl: slice) -> torch.Tensor:
        mine = sp_s[sl]
        if mine.numel() == 0:  # no span in this batch: nothing to compare (a zero with a graph)
            return ls.sum() * 0.0
        if mine.device.type == "meta":
            theirs = torch.ones_like(sp_t, dtype=torch.bool)
        else:
            theirs = (sp_t >= mine.min()) & (sp_t <= mine.max())  # spans are numbered in position order
        with torch.no_grad():
            lt = h_t[theirs].detach().float() @ wt.T
            lt = lt if bt is None else lt + bt
        ls = ls if vocab_s is None else ls[..., :vocab_s]
        lt = lt if vocab_t is None else lt[..., :vocab_t]
        return L.gold_distance(ls, lt, tok_s[sl], tok_t[theirs], mine, sp_t[theirs], temperature=temperature,
                               shared=shared, beta=beta, matched_weight=matched_weight, num_tokens=num_tokens,
                               num_spans=num_spans)

    return _Chunked.apply(h_s, w_s, b_s, part, span_chunks(sp_s, chunk_tokens))
