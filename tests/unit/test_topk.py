"""The top-k teacher distribution the logit cache stores, and the sparse divergences that read it,
checked against formulas written out here: the cached ids / log-probabilities / tail buckets, the
re-normalisation at another temperature and a smaller k, the (k + 1)-category divergences (exact at
k = V − 1, increasing in k as the data-processing inequality says for nested coarsenings) and their
chunked form."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.distill import losses as L
from raykd.distill.chunked import chunked_topk_divergence
from raykd.distill.topk import sparse_divergence, student_log_probs, teacher_log_probs, teacher_topk

pytestmark = pytest.mark.unit
NAMES = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd"]


def _setup(n=9, d=6, v=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w, b = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g), torch.randn(v, generator=g)
    return h, w, b, h @ w.T + b


def test_teacher_topk_matches_its_definition():
    h, w, b, z = _setup()
    ids, logp, tails = teacher_topk(h, w, b, 5, [1.0, 2.5], chunk_tokens=4)
    assert ids.dtype == torch.int32 and logp.shape == (9, 5) and tails.shape == (9, 2)
    for i in range(9):
        order = sorted(range(23), key=lambda j: -float(z[i, j]))[:5]
        assert ids[i].tolist() == order
        p1 = torch.softmax(z[i].double(), -1)
        assert torch.allclose(logp[i].double(), p1[order].log(), atol=1e-5)
        for col, t in enumerate((1.0, 2.5)):
            pt = torch.softmax(z[i].double() / t, -1)
            rest = 1.0 - float(pt[order].sum())
            assert float(tails[i, col]) == pytest.approx(math.log(rest), abs=1e-5)
    # a padded head: only the first `vocab` rows compete
    ids_v, _, _ = teacher_topk(h, w, b, 30, [1.0], vocab=20)
    assert ids_v.shape == (9, 19) and int(ids_v.max()) < 20


def test_teacher_log_probs_at_another_temperature_and_smaller_k():
    h, w, b, z = _setup(seed=3)
    ids, logp, tails = teacher_topk(h, w, b, 12, [1.0, 2.0])
    got = teacher_log_probs(logp, tails[:, 1], 2.0, k=5)
    pt = torch.softmax(z.double() / 2.0, -1)
    top = pt.gather(-1, ids[:, :5].long())
    want = torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1).log()
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(9), atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        teacher_log_probs(logp, tails[:, 0], 1.0, k=13)


def _dense_teacher(h, w, b, k, t):
    ids, logp, tails = teacher_topk(h, w, b, k, [t])
    return ids, teacher_log_probs(logp, tails[:, 0], t)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_divergence_is_exact_at_v_minus_one_and_grows_with_k(name):
    h, w, b, z_t = _setup(n=11, v=17, seed=5)
    g = torch.Generator().manual_seed(8)
    z_s = torch.randn(11, 17, generator=g, requires_grad=True)
    t, kw = 1.6, dict(beta=0.3, alpha=0.2)
    dense = L.divergence(name, z_s, z_t, temperature=t, **kw)
    ids, lp = _dense_teacher(h, w, b, 16, t)
    sparse = sparse_divergence(name, z_s, ids, lp, temperature=t, **kw)
    assert float(sparse.detach()) == pytest.approx(float(dense.detach()), rel=1e-4)
    gd, = torch.autograd.grad(dense, z_s)
    gs, = torch.autograd.grad(sparse, z_s)
    assert float((gd - gs).norm()) <= 1e-4 * float(gd.norm())
    values = []
    for k in (1, 2, 4, 8, 16):
        ids, lp = _dense_teacher(h, w, b, k, t)
        values.append(float(sparse_divergence(name, z_s, ids, lp, temperature=t, **kw)))
    assert all(a <= b_ + 1e-6 for a, b_ in zip(values, values[1:])), values  # coarser never exceeds finer


def test_sparse_forward_kl_against_the_written_out_formula():
    h, w, b, z_t = _setup(n=4, v=10, seed=9)
    z_s = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    t, k = 2.0, 3
    ids, lp = _dense_teacher(h, w, b, k, t)
    want = 0.0
    for i in range(4):
        p = torch.softmax(z_t[i].double() / t, -1)
        q = torch.softmax(z_s[i].double() / t, -1)
        top = ids[i].long()
        pk, qk = p[top], q[top]
        pr, qr = 1 - pk.sum(), 1 - qk.sum()
        want += float((pk * (pk / qk).log()).sum() + pr * (pr / qr).log())
    want = t * t * want / 4
    assert float(sparse_divergence("forward_kl", z_s, ids, lp, temperature=t)) == pytest.approx(want, rel=1e-5)
    s = student_log_probs(z_s, ids, t)
    assert torch.allclose(s.exp().sum(-1), torch.ones(4), atol=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "tvd"])
def test_chunked_topk_equals_unchunked(name):
    g = torch.Generator().manual_seed(4)
    n, d, v, vocab = 37, 12, 50, 45
    h_s = torch.randn(n, d, generator=g, requires_grad=True)
    w_s = (torch.randn(v, d, generator=g) * 0.3).requires_grad_(True)
    b_s = (torch.randn(v, generator=g) * 0.1).requires_grad_(True)
    ht, wt = torch.randn(n, 8, generator=g), torch.randn(v, 8, generator=g)
    ids, lp = _dense_teacher(ht, wt[:vocab], None, 6, 1.3)
    mask = (torch.rand(n, generator=g) < 0.8).long()
    kw = dict(temperature=1.3, beta=0.4, mask=mask, num_tokens=50.0)
    ref = sparse_divergence(name, (h_s @ w_s.T + b_s)[:, :vocab], ids, lp, **kw)
    gr = torch.autograd.grad(ref, (h_s, w_s, b_s))
    got = chunked_topk_divergence(h_s, w_s, ids, lp, divergence=name, b_s=b_s, vocab=vocab, chunk_tokens=5, **kw)
    gc = torch.autograd.grad(got, (h_s, w_s, b_s))
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    for a, b_ in zip(gc, gr):
        assert float((a - b_).norm()) <= 1e-5 * float(b_.norm())
