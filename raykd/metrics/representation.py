"""The study's metrics (README, *Metrics*), computed on the student alone. Imports no other raykd module.

Inputs are torch tensors (numpy arrays accepted); arithmetic is float64. Scores are 0–100 where
noted, else 0–1. Sentence representations: the teacher's Y_T = masked mean of its last hidden layer
over real tokens (no learned parts: the same target for every method); the student's Y_S = its
output representation (its ``encode`` method when it has one, else the masked mean of its last layer).
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np
import torch


def _f64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().to(device="cpu", dtype=torch.float64)


def linear_cka(x, y) -> float:
    """Linear CKA of x [n, p] and y [n, q] (Kornblith et al. 2019), in [0, 1] — the biased estimator,
    kept for comparison: it has a large chance floor at small n (two independent Gaussian
    representations of 128 rows score ≈ 0.33 at width 64, ≈ 0.86 at width 768), so the study's
    Semantic Alignment uses ``debiased_linear_cka``.

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


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two n×n Gram matrices whose "diagonal"
    (pairs of one sample with itself) is already zero: 1/(n(n−3)) · [tr(KL) + 1ᵀK1·1ᵀL1/((n−1)(n−2))
    − 2/(n−2) · 1ᵀKL1]."""
    n = k.shape[0]
    kl1 = k @ l.sum(1)
    return ((k * l).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1.sum()) / (n * (n - 3))


def _hsic_unbiased_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``_hsic_unbiased`` of the linear kernels K = XXᵀ, L = YYᵀ (diagonals zeroed) from the features
    x [n, p], y [n, q] themselves, in O(n·p·q) instead of two n×n Grams: with d_K = diag(K),
    tr(K̃L̃) = ‖XᵀY‖²_F − Σ d_K d_L, K̃1 = X(Xᵀ1) − d_K, 1ᵀK̃L̃1 = (K̃1)ᵀ(L̃1). The same value (float64
    rounding aside; tested against the Gram form)."""
    n = x.shape[0]
    dk, dl = x.pow(2).sum(1), y.pow(2).sum(1)
    tr = (x.T @ y).pow(2).sum() - (dk * dl).sum()
    uk, ul = x @ x.sum(0) - dk, y @ y.sum(0) - dl
    return (tr + uk.sum() * ul.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (uk * ul).sum()) / (n * (n - 3))


def _zero_diagonal(gram: torch.Tensor) -> torch.Tensor:
    return gram - torch.diag_embed(torch.diagonal(gram))


def _debiased_cka_from_grams(kx: torch.Tensor, ky: torch.Tensor) -> float:
    hxy, hxx, hyy = _hsic_unbiased(kx, ky), _hsic_unbiased(kx, kx), _hsic_unbiased(ky, ky)
    den = hxx * hyy
    return float(hxy / den.sqrt()) if den > 0 else 0.0


def _centred(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y in float64, column-centred (the estimator is translation invariant; centring keeps it well
    conditioned); ValueError unless they have one number of rows, at least 4."""
    x, y = _f64(x), _f64(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"debiased_linear_cka: x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 4:
        raise ValueError(f"debiased_linear_cka: needs n >= 4 rows, got {x.shape[0]}")
    return x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)


def _linear_grams(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _centred(x, y)
    return x @ x.T, y @ y.T


def _debiased_cka_from_features(x: torch.Tensor, y: torch.Tensor) -> float:
    """``_debiased_cka_from_grams`` of the linear Grams of centred x, y, computed from the features."""
    hxy, hxx, hyy = _hsic_unbiased_features(x, y), _hsic_unbiased_features(x, x), _hsic_unbiased_features(y, y)
    den = hxx * hyy
    return float(hxy / den.sqrt()) if den > 0 else 0.0


def debiased_linear_cka(x, y) -> float:
    """Debiased linear CKA of x [n, p] and y [n, q], n ≥ 4: HSIC₁(K, L) / √(HSIC₁(K, K)·HSIC₁(L, L))
    with linear kernels K = XXᵀ, L = YYᵀ and Song et al.'s (2012) unbiased HSIC estimator, as used for
    CKA by Nguyen, Raghu & Kornblith (2021). Unlike ``linear_cka`` it has no chance floor: two
    independent representations score ≈ 0 at any width (it can be slightly negative); 1 for
    representations equal up to rotation and isotropic scaling. 0 when either side has no variance."""
    x, y = _centred(x, y)
    if x.shape[0] > max(x.shape[1], y.shape[1]):  # the feature form: no n×n Gram (identical values)
        return _debiased_cka_from_features(x, y)
    return _debiased_cka_from_grams(_zero_diagonal(x @ x.T), _zero_diagonal(y @ y.T))


def semantic_alignment(y_student, y_teacher) -> float:
    """Semantic Alignment = 100 · debiased linear CKA(Y_S, Y_T), unclipped (≈ 0 for unrelated
    representations, may be slightly negative; 100 for equal ones up to rotation and scale)."""
    return 100.0 * debiased_linear_cka(y_student, y_teacher)


def representation_compactness(ys_fit, yt_fit, ys_eval, yt_eval, ridge: float = 1e-3) -> float:
    """Representation Compactness = 100 · R² of a ridge regression (with intercept) Y_S → Y_T fitted on
    (ys_fit, yt_fit) and scored on (ys_eval, yt_eval) — pass disjoint pairs, else R² is in-sample;
    0–100, clipped below at 0.

    R² = 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖² summed over all teacher dimensions (variance-weighted; ȳ is the
    mean of the scored set); the penalty is ``ridge · trace(XᵀX)/p`` on the centred fit inputs.
    """
    res, tot = _compactness_rows(ys_fit, yt_fit, ys_eval, yt_eval, ridge)
    return _r2_percent(res, tot)


def _compactness_rows(ys_fit, yt_fit, ys_eval, yt_eval, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scored row: (squared residual of the ridge prediction, squared deviation from the scored
    set's mean), summed over teacher dimensions."""
    xf, yf, xe, ye = _f64(ys_fit), _f64(yt_fit), _f64(ys_eval), _f64(yt_eval)
    xm, ym = xf.mean(0, keepdim=True), yf.mean(0, keepdim=True)
    xc, yc = xf - xm, yf - ym
    p = xc.shape[1]
    gram = xc.T @ xc
    lam = ridge * torch.trace(gram) / p
    w = torch.linalg.solve(gram + lam * torch.eye(p, dtype=gram.dtype), xc.T @ yc)
    pred = (xe - xm) @ w + ym
    return (ye - pred).pow(2).sum(1), (ye - ye.mean(0, keepdim=True)).pow(2).sum(1)


def _r2_percent(res: torch.Tensor, tot: torch.Tensor) -> float:
    ss_tot = float(tot.sum())
    if ss_tot <= 0:
        return 0.0
    return max(0.0, 100.0 * (1.0 - float(res.sum()) / ss_tot))


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
    per = _consistency_per_sequence(h_student, h_teacher, mask)
    return [float(x) for x in per if np.isfinite(x)]


CONSISTENCY_CHUNK = 1 << 21  # elements of one [sequences, t, t] similarity tensor (16 MiB in float64)


def _consistency_per_sequence(h_student, h_teacher, mask) -> np.ndarray:
    """structural_consistency's Pearson correlation of every sequence of the batch at once [b] (NaN
    where skipped: fewer than 3 tokens, or constant similarities on either side): per sequence, the
    correlation over the pairs i < j of its masked tokens between the two cosine-similarity matrices."""
    hs, ht, m = _f64(h_student), _f64(h_teacher), _f64(mask) > 0
    t = m.shape[1]
    step = max(1, CONSISTENCY_CHUNK // max(t * t, 1))  # sequences at a time: [step, t, t] float64 tensors
    if hs.shape[0] > step:
        return np.concatenate([_consistency_per_sequence(hs[i: i + step], ht[i: i + step], m[i: i + step])
                               for i in range(0, hs.shape[0], step)])
    # tokens outside the mask never enter (a NaN there must not reach a sequence's sums)
    hs, ht = torch.where(m[..., None], hs, 0.0), torch.where(m[..., None], ht, 0.0)
    a, b = torch.nn.functional.normalize(hs, dim=-1), torch.nn.functional.normalize(ht, dim=-1)
    pairs = (m[:, :, None] & m[:, None, :]) & torch.ones(t, t, dtype=torch.bool).triu(1)
    w = pairs.to(torch.float64)
    count = w.sum((1, 2)).clamp_min(1.0)
    sa, sb = a @ a.transpose(1, 2), b @ b.transpose(1, 2)
    sa = (sa - ((sa * w).sum((1, 2)) / count)[:, None, None]) * w
    sb = (sb - ((sb * w).sum((1, 2)) / count)[:, None, None]) * w
    den = sa.pow(2).sum((1, 2)).sqrt() * sb.pow(2).sum((1, 2)).sqrt()
    r = (sa * sb).sum((1, 2)) / den.clamp_min(1e-300)
    keep = (m.sum(1) >= 3) & (den > 1e-12)
    return torch.where(keep, r, torch.full_like(r, float("nan"))).numpy()


TIE_TOLERANCE = 1e-12  # cosines (float64) closer than this are ties: a matmul's blocking leaves ~1e-17 noise


def qa_retrieval(q, a, candidates: int = 100, seed: int = 0, answer_keys=None) -> dict:
    """QA retrieval of each question's own answer among ``candidates`` answers, by cosine similarity.

    For question i the candidates are answer i plus ``candidates − 1`` competitors drawn uniformly
    without replacement (numpy ``default_rng(seed)``, questions in order; all eligible ones when
    fewer exist). With ``answer_keys`` (one hashable per answer, e.g. a hash of its text) competitors
    are drawn only among answers whose key differs from answer i's, so a duplicate of the true answer
    never competes with it. Ties count against the true answer: rank = 1 + the number of competitors
    at least as similar (within ``TIE_TOLERANCE``: rounding noise), so a constant representation scores 0.
    Returns ``{"mrr@10": mean(1/rank if rank ≤ 10 else 0), "recall@1": mean(rank == 1)}`` in [0, 1].
    """
    rr = reciprocal_ranks(q, a, candidates, seed, answer_keys)
    return {"mrr@10": float(rr.mean()), "recall@1": float((rr == 1.0).mean())}


def reciprocal_ranks(q, a, candidates: int = 100, seed: int = 0, answer_keys=None) -> np.ndarray:
    """Per question: 1/rank of its true answer if rank ≤ 10, else 0 (see ``qa_retrieval``)."""
    qn = torch.nn.functional.normalize(_f64(q), dim=-1)
    an = torch.nn.functional.normalize(_f64(a), dim=-1)
    n = qn.shape[0]
    if n == 0 or an.shape[0] != n:
        raise ValueError(f"qa_retrieval: need as many answers as questions (got {n} and {an.shape[0]})")
    if answer_keys is not None and len(answer_keys) != n:
        raise ValueError(f"qa_retrieval: {len(answer_keys)} answer keys for {n} answers")
    sims = (qn @ an.T).numpy()
    keys = None if answer_keys is None else tuple(hash(k) for k in answer_keys)
    others, valid = _competitors(n, candidates, seed, keys)
    own = sims[np.arange(n), np.arange(n)]
    beaten = (np.take_along_axis(sims, others, 1) >= own[:, None] - TIE_TOLERANCE) & valid
    rank = 1 + beaten.sum(1)
    return np.where(rank <= 10, 1.0 / rank, 0.0)


@functools.lru_cache(maxsize=8)
def _competitors(n: int, candidates: int, seed: int, keys: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """Each question's competitor answers (``qa_retrieval``'s draw: questions in order, one
    ``default_rng(seed)``), as indices [n, width] and a validity mask (rows with fewer eligible answers
    are padded). A function of (n, candidates, seed, answer keys) only: drawn once and reused by every
    evaluation of the same pairs (student, teacher, each report)."""
    keys_arr = None if keys is None else np.asarray(keys)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pool = np.r_[0:i, i + 1:n]
        if keys_arr is not None:
            pool = pool[keys_arr[pool] != keys_arr[i]]
        k = min(candidates - 1, len(pool))
        rows.append(pool if k == len(pool) else rng.choice(pool, size=k, replace=False))
    width = max((len(r) for r in rows), default=0)
    others, valid = np.zeros((n, width), dtype=np.int64), np.zeros((n, width), dtype=bool)
    for i, r in enumerate(rows):
        others[i, : len(r)], valid[i, : len(r)] = r, True
    others.flags.writeable = valid.flags.writeable = False  # shared by every caller of the cache
    return others, valid


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


def content_repr(model, input_ids, attention_mask, special_ids=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last hidden layer [b, t, d], content mask [b, t], Y [b, d] = the masked mean of the last layer
    over content tokens — no [CLS], [SEP], padding or other special tokens). The same definition for
    the teacher and for every student, whatever its own output head."""
    h = last_hidden(model, input_ids, attention_mask)
    cm = content_mask(attention_mask, input_ids, special_ids)
    return h, cm, _masked_mean(h, cm)


@torch.no_grad()
def teacher_outputs(teacher, batches, device, with_answers: bool, special_ids) -> list[tuple]:
    """What ``evaluate`` needs of the (fixed) teacher on these batches, on CPU, one tuple per batch:
    (last layer of the questions [b, t, d], Y of the questions [b, d], Y of the answers [b, d] or
    None). Compute once and pass as ``teacher_cache`` to every later evaluation on the same batches:
    the teacher is usually the larger model, so this is most of an evaluation's cost."""
    was = teacher.training
    teacher.eval()
    out = []
    try:
        for batch in batches:
            ht, _, yt = content_repr(teacher, batch["q_input_ids"].to(device), batch["q_attention_mask"].to(device),
                                     special_ids)
            ya = None
            if with_answers:
                ya = content_repr(teacher, batch["a_input_ids"].to(device), batch["a_attention_mask"].to(device),
                                  special_ids)[2].float().cpu()
            out.append((ht.float().cpu(), yt.float().cpu(), ya))
    finally:
        teacher.train(was)
    return out


@torch.no_grad()
def _collect(student, teacher, batches, device, with_answers: bool, special_ids, cache=None):
    """Per pair (questions, then answers): content Y of student and teacher, the student's own
    aggregated Y when it has one, last layers for structural consistency, answer keys. ``cache``:
    the teacher's part, from ``teacher_outputs`` on these batches (computed here when None)."""
    out = {k: [] for k in ("ys_q", "yt_q", "ya_q", "ys_a", "yt_a", "ya_a", "sc", "akeys")}
    core = getattr(student, "student", student)
    aggregated = getattr(core, "aggregation", None) is not None  # its own Y = core.represent(last layer, mask)
    if cache is None:
        cache = teacher_outputs(teacher, batches, device, with_answers, special_ids)
    if len(cache) != len(batches):
        raise ValueError(f"teacher cache has {len(cache)} batches for {len(batches)} evaluation batches")
    for batch, (ht, yt, yt_a) in zip(batches, cache):
        qi = batch["q_input_ids"].to(device)
        qm = batch["q_attention_mask"].to(device)
        if student is teacher:  # the teacher scored as its own student: its outputs are already here
            hs, cm, ys = ht, content_mask(qm, qi, special_ids), yt
        else:
            hs, cm, ys = content_repr(student, qi, qm, special_ids)
        out["ys_q"].append(ys.float().cpu())
        out["yt_q"].append(yt)
        if aggregated:
            out["ya_q"].append(core.represent(hs, qm).float().cpu())
        out["sc"].append((hs.float().cpu(), ht, cm.cpu()))
        if with_answers:
            ai = batch["a_input_ids"].to(device)
            am = batch["a_attention_mask"].to(device)
            if student is teacher:
                out["ys_a"].append(yt_a)
            else:
                hs_a, _, ys_a = content_repr(student, ai, am, special_ids)
                out["ys_a"].append(ys_a.float().cpu())
                if aggregated:
                    out["ya_a"].append(core.represent(hs_a, am).float().cpu())
            out["yt_a"].append(yt_a)
            ids, lengths = batch["a_input_ids"].cpu(), batch["a_attention_mask"].sum(1).cpu()
            out["akeys"].extend(tuple(ids[r, : int(lengths[r])].tolist()) for r in range(ids.shape[0]))
    out = {k: (torch.cat(v) if v and isinstance(v[0], torch.Tensor) else v) for k, v in out.items()}
    return _in_pair_order(out, batches)


def _in_pair_order(out: dict, batches) -> dict:
    """``_collect``'s per-pair entries put back in the pairs' order (each batch's ``pair_index``: batches made
    by length for less padding) — the metrics' candidates, halves and resamples are drawn over that order;
    ``sc`` stays per batch, its per-sequence values reordered by ``sc_order``. Unchanged without it."""
    if not batches or "pair_index" not in batches[0]:
        return out
    order = torch.argsort(torch.cat([b["pair_index"] for b in batches]))
    for k in ("ys_q", "yt_q", "ya_q", "ys_a", "yt_a", "ya_a"):
        if isinstance(out[k], torch.Tensor):
            out[k] = out[k][order]
    if out["akeys"]:
        out["akeys"] = [out["akeys"][i] for i in order.tolist()]
    out["sc_order"] = order.numpy()
    return out


def _per_sequence_consistency(sc: list) -> np.ndarray:
    """Structural consistency per sequence (NaN where skipped), in pair order."""
    return np.concatenate([_consistency_per_sequence(hs, ht, m) for hs, ht, m in sc]) if sc else np.zeros(0)


def split_fit_scored(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves of n evaluation pairs (even / odd positions; pairs come in hash-random order):
    (indices compactness's regression is fitted on, indices it is scored on)."""
    idx = np.arange(n)
    return idx[0::2], idx[1::2]


def evaluate(student, teacher, eval_batches, fit_batches=None, candidates: int = 100, seed: int = 0,
             special_ids: tuple[int, ...] | None = None, bootstrap: int = 0,
             teacher_cache: tuple[list, list | None] | None = None) -> dict:
    """Every metric of the student alone on ``eval_batches`` (dicts with ``q_input_ids,
    q_attention_mask, a_input_ids, a_attention_mask``).

    Y = the content-token mean of the last layer for both models (``content_repr``); a student with
    its own aggregation (``structural``) is also scored with that Y, under keys ending
    ``_aggregated``. Compactness's regression is fitted on ``fit_batches`` (pairs disjoint from the
    scored ones) or, without them, on one half of the evaluation pairs and scored on the other
    (``split_fit_scored``); the other metrics use every evaluation pair.
    Returns ``semantic_alignment, representation_compactness, structural_consistency`` (0–100),
    ``mrr@10, recall@1`` (0–1), ``teacher_mrr@10, teacher_recall@1``, ``retained_mrr`` (student ÷
    teacher MRR@10) and ``eval_pairs``; with ``bootstrap`` = B > 0 also ``<metric>_ci_low`` /
    ``<metric>_ci_high``: a percentile 95 % interval over B resamples of the evaluation pairs."""
    device = next(student.parameters()).device
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        ev_cache, fit_cache = teacher_cache if teacher_cache is not None else (None, None)
        ev = _collect(student, teacher, eval_batches, device, True, special_ids, ev_cache)
        fit = _collect(student, teacher, fit_batches, device, False, special_ids, fit_cache) if fit_batches else None
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    scores = _pair_scores(ev, fit, candidates, seed)
    out = {name: s.value() for name, s in scores.items()}
    t_rr = reciprocal_ranks(ev["yt_q"], ev["yt_a"], candidates, seed, ev["akeys"])
    out["teacher_mrr@10"] = float(t_rr.mean())
    out["teacher_recall@1"] = float((t_rr == 1.0).mean())
    out["retained_mrr"] = out["mrr@10"] / out["teacher_mrr@10"] if out["teacher_mrr@10"] > 0 else float("nan")
    out["eval_pairs"] = int(ev["ys_q"].shape[0])
    if bootstrap > 0:
        rng = np.random.default_rng(seed + 1)
        n = out["eval_pairs"]
        draws = [rng.integers(0, n, n) for _ in range(bootstrap)]
        for name, s in scores.items():
            vals = np.array(s.resampled(draws), dtype=float)
            vals = vals[np.isfinite(vals)]
            lo, hi = (np.percentile(vals, [2.5, 97.5]) if len(vals) else (float("nan"), float("nan")))
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
    return out


class _Score:
    """One metric as a function of a resample of the evaluation pairs (None = all of them); ``batch``
    (optional) computes many resamples at once."""

    def __init__(self, fn, batch=None):
        self.fn, self.batch = fn, batch

    def value(self, idx: np.ndarray | None = None) -> float:
        return float(self.fn(idx))

    def resampled(self, draws: list[np.ndarray]) -> list[float]:
        """The metric on each resample."""
        return self.batch(draws) if self.batch is not None else [self.value(idx) for idx in draws]


def _sa_score(ys: torch.Tensor, yt: torch.Tensor) -> _Score:
    """Semantic Alignment over a resample: the unbiased estimator on the resampled list of pairs, with
    every pair of positions drawn from one pair left out (its diagonal, extended to duplicates). The
    resamples' values come from the features or from the n×n Grams, whichever costs fewer operations
    (``resample_from_features``; the same values)."""
    grams: list = []  # the n×n Grams, built only when resamples are asked for (the final report's CIs)

    def batch(draws):
        n = ys.shape[0]
        w = torch.cat([_counts(idx, n) for idx in draws], 1)
        if resample_from_features(n, ys.shape[1], yt.shape[1]):
            return (100.0 * debiased_cka_resampled_features(*_centred(ys, yt), w)).tolist()
        if not grams:
            grams.extend(_zero_diagonal(g) for g in _linear_grams(ys, yt))
        return (100.0 * debiased_cka_resampled(*grams, w)).tolist()

    return _Score(lambda idx: 100.0 * debiased_linear_cka(ys, yt) if idx is None else batch([idx])[0], batch)


def _counts(idx: np.ndarray, n: int) -> torch.Tensor:
    """Multiplicities [n, 1] of each pair in a resample."""
    return torch.from_numpy(np.bincount(idx, minlength=n).astype(np.float64))[:, None]


def debiased_cka_resampled(kx0: torch.Tensor, ky0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Debiased CKA of many resamples at once, from zero-diagonal Gram matrices [n, n] and pair
    multiplicities w [n, B] (one column per resample): each column's value equals the unbiased
    estimator on the resampled list with pairs of positions drawn from one pair zeroed, computed as
    weighted sums (tr(K̃L̃) = wᵀ(K∘L)w, 1ᵀK̃1 = wᵀKw, 1ᵀK̃L̃1 = Σ_j w_j (Kw)_j (Lw)_j, n = Σw) —
    no n_B × n_B Gram is ever gathered. Returns [B]."""
    m = w.sum(0)
    kw, lw = kx0 @ w, ky0 @ w

    def hsic(a0, aw, b0, bw):
        tr = (w * ((a0 * b0) @ w)).sum(0)
        sa, sb = (w * aw).sum(0), (w * bw).sum(0)
        ab1 = (w * aw * bw).sum(0)
        return (tr + sa * sb / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * ab1) / (m * (m - 3))

    hxy, hxx, hyy = hsic(kx0, kw, ky0, lw), hsic(kx0, kw, kx0, kw), hsic(ky0, lw, ky0, lw)
    den = hxx * hyy
    return torch.where(den > 0, hxy / den.clamp_min(1e-300).sqrt(), torch.zeros_like(hxy))


def resample_from_features(n: int, p: int, q: int) -> bool:
    """Whether resampled debiased CKA is cheaper from the features (n·(pq + p² + q²) per resample) than
    from the Grams (≈ 5·n² per resample, plus building them)."""
    return n * (p * q + p * p + q * q) < 5 * n * n


def debiased_cka_resampled_features(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``debiased_cka_resampled`` from centred features x [n, p], y [n, q] and multiplicities w [n, B]
    without n×n Grams: with W = diag(w_b) and d_K = diag(XXᵀ), wᵀK̃L̃w = ‖XᵀWY‖²_F − Σ w² d_K d_L,
    wᵀK̃w = ‖Xᵀw‖² − Σ w² d_K, K̃w = X(Xᵀw) − d_K∘w. Returns [B], equal to the Gram form."""
    m = w.sum(0)
    dk, dl = x.pow(2).sum(1), y.pow(2).sum(1)
    kw, lw = x @ (x.T @ w) - dk[:, None] * w, y @ (y.T @ w) - dl[:, None] * w

    def trace(a, b, da, db):  # [B]: wᵀ(K̃∘L̃)w, one resample at a time (a [p, q] product each)
        return torch.stack([((a * w[:, j: j + 1]).T @ b).pow(2).sum() for j in range(w.shape[1])]) \
            - (w.pow(2) * (da * db)[:, None]).sum(0)

    def hsic(tr, aw, bw):
        sa, sb, ab1 = (w * aw).sum(0), (w * bw).sum(0), (w * aw * bw).sum(0)
        return (tr + sa * sb / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * ab1) / (m * (m - 3))

    hxy, hxx, hyy = hsic(trace(x, y, dk, dl), kw, lw), hsic(trace(x, x, dk, dk), kw, kw), hsic(trace(y, y, dl, dl), lw, lw)
    den = hxx * hyy
    return torch.where(den > 0, hxy / den.clamp_min(1e-300).sqrt(), torch.zeros_like(hxy))


def _pair_scores(ev: dict, fit: dict | None, candidates: int, seed: int) -> dict[str, _Score]:
    n = ev["ys_q"].shape[0]
    if fit is None:
        fit_idx, scored_idx = split_fit_scored(n)
    else:
        scored_idx = np.arange(n)
    row_of = np.full(n, -1, dtype=np.int64)  # evaluation pair → its row among the scored pairs (−1: a fit pair)
    row_of[scored_idx] = np.arange(len(scored_idx))
    sc = _per_sequence_consistency(ev["sc"])
    if ev.get("sc_order") is not None:
        sc = sc[ev["sc_order"]]
    views = {"": (ev["ys_q"], ev["ys_a"])}
    if len(ev["ya_q"]):
        views["_aggregated"] = (ev["ya_q"], ev["ya_a"])
    scores = {}
    for suffix, (yq, ya) in views.items():
        if fit is None:
            res, tot = _compactness_rows(yq[fit_idx], ev["yt_q"][fit_idx], yq[scored_idx], ev["yt_q"][scored_idx])
        else:
            fq = fit["ys_q"] if suffix == "" else fit["ya_q"]
            res, tot = _compactness_rows(fq, fit["yt_q"], yq, ev["yt_q"])
        rr = reciprocal_ranks(yq, ya, candidates, seed, ev["akeys"])
        scores["semantic_alignment" + suffix] = _sa_score(yq, ev["yt_q"])
        scores["representation_compactness" + suffix] = _Score(
            lambda idx, res=res, tot=tot: _r2_percent(res, tot) if idx is None else _r2_percent(
                *_rows_of_pairs(idx, row_of, res, tot)))
        scores["mrr@10" + suffix] = _Score(lambda idx, rr=rr: rr.mean() if idx is None else rr[idx].mean())
        scores["recall@1" + suffix] = _Score(
            lambda idx, rr=rr: (rr == 1.0).mean() if idx is None else (rr[idx] == 1.0).mean())
    scores["structural_consistency"] = _Score(lambda idx: _nanmean_percent(sc if idx is None else sc[idx]))
    return scores


def _rows_of_pairs(idx: np.ndarray, row_of: np.ndarray, res: torch.Tensor, tot: torch.Tensor):
    """The scored rows (with multiplicity) of the pairs in a resample: compactness's CI resamples the
    scored pairs; its regression stays the one fitted on all fit pairs."""
    rows = row_of[idx]
    rows = torch.from_numpy(rows[rows >= 0])
    return res[rows], tot[rows]


def _nanmean_percent(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return 100.0 * float(x.mean()) if len(x) else float("nan")
