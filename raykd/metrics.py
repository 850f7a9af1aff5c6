"""The study's metrics (DESIGN.md §5), computed on the student alone. Imports no other raykd module.

Inputs are torch tensors (numpy arrays accepted); arithmetic is float64. Scores are 0–100 where
noted, else 0–1. Sentence representations: the teacher's Y_T = masked mean of its last hidden layer
over real tokens (no learned parts: the same target for every method); the student's Y_S = its
output representation (its ``encode`` method when it has one, else the masked mean of its last layer).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def _f64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to(device="cpu", dtype=torch.float64)


def linear_cka(x, y) -> float:
    """Linear CKA of x [n, p] and y [n, q] (Kornblith et al. 2019), in [0, 1].

    CKA = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F · ‖Ỹᵀ Ỹ‖_F) with column-centred X̃, Ỹ; invariant to orthogonal
    transforms and isotropic scaling of either side. 0 when either side has no variance.
    """
    x, y = _f64(x), _f64(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: x has {x.shape[0]} rows, y has {y.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    # Gram form (n×n) when n is small, feature form otherwise: identical values.
    if x.shape[0] <= max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        num, den = (kx * ky).sum(), kx.norm() * ky.norm()
    else:
        num, den = (y.T @ x).pow(2).sum(), (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else 0.0


def semantic_alignment(y_student, y_teacher) -> float:
    """Semantic Alignment = 100 · linear CKA(Y_S, Y_T), 0–100."""
    return 100.0 * linear_cka(y_student, y_teacher)


def representation_compactness(ys_fit, yt_fit, ys_eval, yt_eval, ridge: float = 1e-3) -> float:
    """Representation Compactness = 100 · R² of a ridge regression (with intercept) Y_S → Y_T fitted on
    (ys_fit, yt_fit) and scored on (ys_eval, yt_eval); 0–100, clipped below at 0.

    R² = 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖² summed over all teacher dimensions (variance-weighted; ȳ is the
    mean of the scored set); the penalty is ``ridge · trace(XᵀX)/p`` on the centred fit inputs.
    """
    xf, yf, xe, ye = _f64(ys_fit), _f64(yt_fit), _f64(ys_eval), _f64(yt_eval)
    xm, ym = xf.mean(0, keepdim=True), yf.mean(0, keepdim=True)
    xc, yc = xf - xm, yf - ym
    p = xc.shape[1]
    gram = xc.T @ xc
    lam = ridge * torch.trace(gram) / p
    w = torch.linalg.solve(gram + lam * torch.eye(p, dtype=gram.dtype), xc.T @ yc)
    pred = (xe - xm) @ w + ym
    ss_res = (ye - pred).pow(2).sum()
    ss_tot = (ye - ye.mean(0, keepdim=True)).pow(2).sum()
    if ss_tot <= 0:
        return 0.0
    return max(0.0, 100.0 * float(1.0 - ss_res / ss_tot))


def structural_consistency(h_student, h_teacher, mask) -> float:
    """Structural Consistency = 100 · mean over sequences of the Pearson correlation between the strict
    upper triangles of the student's and the teacher's token×token cosine-similarity matrices.

    h_student [b, t, ds], h_teacher [b, t, dt], mask [b, t] (1 = a token to compare; callers exclude
    padding and special tokens). Sequences with fewer than 3 such tokens, or whose similarities are
    constant on either side, are skipped; NaN when none is left. Range −100…100.
    """
    scores = _consistency_scores(h_student, h_teacher, mask)
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


def _consistency_scores(h_student, h_teacher, mask) -> list[float]:
    """Per-sequence Pearson correlations of structural_consistency (skipped sequences left out)."""
    hs, ht, m = _f64(h_student), _f64(h_teacher), _f64(mask) > 0
    scores = []
    for i in range(hs.shape[0]):
        idx = m[i].nonzero().squeeze(1)
        n = idx.numel()
        if n < 3:
            continue
        a = torch.nn.functional.normalize(hs[i, idx], dim=-1)
        b = torch.nn.functional.normalize(ht[i, idx], dim=-1)
        iu = torch.triu_indices(n, n, offset=1)
        sa, sb = (a @ a.T)[iu[0], iu[1]], (b @ b.T)[iu[0], iu[1]]
        sa, sb = sa - sa.mean(), sb - sb.mean()
        den = sa.norm() * sb.norm()
        if den <= 1e-12:
            continue
        scores.append(float((sa * sb).sum() / den))
    return scores


def qa_retrieval(q, a, candidates: int = 100, seed: int = 0) -> dict:
    """QA retrieval of each question's own answer among ``candidates`` answers, by cosine similarity.

    For question i the candidates are answer i plus ``candidates − 1`` other answers drawn uniformly
    without replacement (numpy ``default_rng(seed)``, questions in order; all others when fewer
    exist). Rank = 1 + the number of candidates strictly more similar than the true answer.
    Returns ``{"mrr@10": mean(1/rank if rank ≤ 10 else 0), "recall@1": mean(rank == 1)}`` in [0, 1].
    """
    qn = torch.nn.functional.normalize(_f64(q), dim=-1)
    an = torch.nn.functional.normalize(_f64(a), dim=-1)
    n = qn.shape[0]
    if n == 0 or an.shape[0] != n:
        raise ValueError(f"qa_retrieval: need as many answers as questions (got {n} and {an.shape[0]})")
    sims = qn @ an.T
    rng = np.random.default_rng(seed)
    k = min(candidates - 1, n - 1)
    rr, hit = 0.0, 0
    for i in range(n):
        if k == n - 1:
            others = np.r_[0:i, i + 1:n]
        else:
            others = rng.choice(n - 1, size=k, replace=False)
            others = others + (others >= i)
        rank = 1 + int((sims[i, torch.from_numpy(others)] > sims[i, i]).sum())
        rr += 1.0 / rank if rank <= 10 else 0.0
        hit += rank == 1
    return {"mrr@10": rr / n, "recall@1": hit / n}


@torch.no_grad()
def efficiency(model, batch_sizes=(1, 32), seq_len: int = 128, repeats: int = 5) -> dict:
    """Parameters and latency of ``model`` on random token ids: ``params`` and ``latency_ms_b{B}`` =
    milliseconds per sample at batch B (median of ``repeats`` timed runs after two warm-up runs)."""
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1000
    was_training = model.training
    model.eval()
    out = {"params": params}
    for bs in batch_sizes:
        ids = torch.randint(5, vocab, (bs, seq_len), device=first.device)
        mask = torch.ones_like(ids)
        times = []
        for r in range(repeats + 2):
            if first.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode():  # inference latency: no autograd graph
                model(input_ids=ids, attention_mask=mask)
            if first.is_cuda:
                torch.cuda.synchronize()
            if r >= 2:
                times.append(time.perf_counter() - t)
        out[f"latency_ms_b{bs}"] = 1000.0 * statistics.median(times) / bs
    model.train(was_training)
    return out


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def last_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    """The model's last hidden layer [b, t, d] for these inputs (HF models or raykd students)."""
    if hasattr(model, "encode"):
        return model.encode(input_ids, attention_mask)[0]
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


def sentence_repr(model, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden layer [b, t, d], sentence representation [b, d]): the model's own ``encode`` when
    it has one (a raykd student: its output representation), else the masked mean of the last layer."""
    if hasattr(model, "encode"):
        return model.encode(input_ids, attention_mask)
    h = last_hidden(model, input_ids, attention_mask)
    return h, _masked_mean(h, attention_mask)


def content_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                 special_ids: tuple[int, ...] | None = None) -> torch.Tensor:
    """Mask of real, non-special tokens: with ``special_ids``, tokens not in it; otherwise the first
    and the last real position ([CLS] … [SEP] in BERT-style encodings) are excluded."""
    m = attention_mask.clone().bool()
    if special_ids is not None and input_ids is not None:
        for s in special_ids:
            m &= input_ids != s
        return m
    lengths = attention_mask.sum(1)
    rows = torch.arange(m.shape[0], device=m.device)
    m[:, 0] = False
    m[rows, (lengths - 1).clamp_min(0)] = False
    return m


@torch.no_grad()
def _collect(student, teacher, loader, device, with_answers: bool, special_ids):
    out = {"ys_q": [], "yt_q": [], "ys_a": [], "yt_a": [], "sc": []}
    for batch in loader:
        qi = batch["q_input_ids"].to(device)
        qm = batch["q_attention_mask"].to(device)
        hs, ys = sentence_repr(student, qi, qm)
        ht, yt = sentence_repr(teacher, qi, qm)
        out["ys_q"].append(ys.float().cpu())
        out["yt_q"].append(yt.float().cpu())
        out["sc"].append((hs.float().cpu(), ht.float().cpu(), content_mask(qm, qi, special_ids).cpu()))
        if with_answers:
            ai = batch["a_input_ids"].to(device)
            am = batch["a_attention_mask"].to(device)
            out["ys_a"].append(sentence_repr(student, ai, am)[1].float().cpu())
            out["yt_a"].append(sentence_repr(teacher, ai, am)[1].float().cpu())
    return out


def evaluate(student, teacher, fit_loader, eval_loader, candidates: int = 100, seed: int = 0,
             special_ids: tuple[int, ...] | None = None) -> dict:
    """Every metric of the student alone on ``eval_loader``; ``fit_loader`` only fits compactness's
    regression. Loaders yield dicts with ``q_input_ids, q_attention_mask, a_input_ids,
    a_attention_mask``. Returns ``semantic_alignment, representation_compactness,
    structural_consistency`` (0–100) and ``mrr@10, recall@1, teacher_mrr@10, teacher_recall@1,
    retained_mrr`` (student ÷ teacher MRR@10)."""
    device = next(student.parameters()).device
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        ev = _collect(student, teacher, eval_loader, device, True, special_ids)
        fit = _collect(student, teacher, fit_loader, device, False, special_ids)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    ys, yt = torch.cat(ev["ys_q"]), torch.cat(ev["yt_q"])
    sc = [c for hs, ht, m in ev["sc"] for c in _consistency_scores(hs, ht, m)]
    s_ret = qa_retrieval(ys, torch.cat(ev["ys_a"]), candidates, seed)
    t_ret = qa_retrieval(yt, torch.cat(ev["yt_a"]), candidates, seed)
    return {
        "semantic_alignment": semantic_alignment(ys, yt),
        "representation_compactness": representation_compactness(torch.cat(fit["ys_q"]), torch.cat(fit["yt_q"]), ys, yt),
        "structural_consistency": 100.0 * float(np.mean(sc)) if sc else float("nan"),
        "mrr@10": s_ret["mrr@10"],
        "recall@1": s_ret["recall@1"],
        "teacher_mrr@10": t_ret["mrr@10"],
        "teacher_recall@1": t_ret["recall@1"],
        "retained_mrr": s_ret["mrr@10"] / t_ret["mrr@10"] if t_ret["mrr@10"] > 0 else float("nan"),
    }
