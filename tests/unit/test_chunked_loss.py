"""The chunked KD loss equals the unchunked one — value and gradients, every divergence, with a mask,
biases, different student/teacher widths, a padded vocabulary and num_tokens — to 1e-5 relative."""

from __future__ import annotations

import pytest
import torch

from raykd.distill import losses as L
from raykd.distill.chunked import chunked_divergence

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_naive_value_and_gradients(name, chunk):
    g = torch.Generator().manual_seed(11)
    n, ds, dt, v, vocab = 53, 24, 40, 97, 90
    h_s = torch.randn(n, ds, generator=g, requires_grad=True)
    w_s = (torch.randn(v, ds, generator=g) * 0.3).requires_grad_(True)
    b_s = (torch.randn(v, generator=g) * 0.1).requires_grad_(True)
    h_t, w_t, b_t = torch.randn(n, dt, generator=g), torch.randn(v + 5, dt, generator=g) * 0.3, torch.randn(v + 5,
                                                                                                        generator=g)
    mask = (torch.rand(n, generator=g) < 0.7).long()
    kw = dict(temperature=1.7, beta=0.3, alpha=0.2, mask=mask)
    naive = L.divergence(name, (h_s @ w_s.T + b_s)[:, :vocab], (h_t @ w_t.T + b_t)[:, :vocab], **kw)
    gn = torch.autograd.grad(naive, (h_s, w_s, b_s))
    got = chunked_divergence(h_s, w_s, h_t, w_t, divergence=name, b_s=b_s, b_t=b_t, vocab=vocab,
                             chunk_tokens=chunk, **kw)
    gc = torch.autograd.grad(got, (h_s, w_s, b_s))
    assert float(got) == pytest.approx(float(naive), rel=1e-5)
    for a, b in zip(gc, gn):  # relative error of the whole gradient (fp32 sums in another order)
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()), name
    # num_tokens: the sum ÷ the given count, as the unchunked loss
    n_tok = 3 * int(mask.sum())
    ref = L.divergence(name, (h_s @ w_s.T + b_s)[:, :vocab], (h_t @ w_t.T + b_t)[:, :vocab], num_tokens=n_tok, **kw)
    got = chunked_divergence(h_s, w_s, h_t, w_t, divergence=name, b_s=b_s, b_t=b_t, vocab=vocab, chunk_tokens=chunk,
                             num_tokens=n_tok, **kw)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_chunked_scales_the_incoming_gradient_and_refuses_bad_shapes():
    g = torch.Generator().manual_seed(2)
    h_s = torch.randn(10, 8, generator=g, requires_grad=True)
    w_s = torch.randn(30, 8, generator=g, requires_grad=True)
    h_t, w_t = torch.randn(10, 8, generator=g), torch.randn(30, 8, generator=g)
    (3.0 * chunked_divergence(h_s, w_s, h_t, w_t, chunk_tokens=4)).backward()
    ref_h, ref_w = h_s.grad.clone(), w_s.grad.clone()
    h_s.grad = w_s.grad = None
    (3.0 * L.forward_kl(h_s @ w_s.T, h_t @ w_t.T)).backward()
    assert torch.allclose(ref_h, h_s.grad, rtol=1e-5) and torch.allclose(ref_w, w_s.grad, rtol=1e-5)
    with pytest.raises(ValueError, match="hidden states"):
        chunked_divergence(h_s[None], w_s, h_t, w_t)
    with pytest.raises(ValueError, match="divergence"):
        chunked_divergence(h_s, w_s, h_t, w_t, divergence="kl")


def test_chunked_cross_entropy_equals_the_token_cross_entropy():
    from raykd.distill.chunked import chunked_cross_entropy

    g = torch.Generator().manual_seed(5)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(45, (37,), generator=g)
    mask = (torch.rand(37, generator=g) < 0.8).long()
    naive = L.token_cross_entropy((h @ w.T)[:, :45], y, mask=mask)
    gn = torch.autograd.grad(naive, (h, w))
    got = chunked_cross_entropy(h, w, y, mask=mask, chunk_tokens=5, vocab=45)
    gc = torch.autograd.grad(got, (h, w))
    assert float(got) == pytest.approx(float(naive), rel=1e-5)
    assert all(float((a - b).norm()) <= 1e-5 * float(b.norm()) for a, b in zip(gc, gn))


def test_walking_the_graph_twice_gives_the_same_gradient_twice():
    """GradNorm-style weights take a term's gradient with retain_graph before the main backward: the
    stored chunk gradients must not be scaled in place."""
    g = torch.Generator().manual_seed(3)
    h_s = torch.randn(9, 8, generator=g, requires_grad=True)
    w_s = torch.randn(20, 8, generator=g, requires_grad=True)
    h_t, w_t = torch.randn(9, 8, generator=g), torch.randn(20, 8, generator=g)
    loss = 0.5 * chunked_divergence(h_s, w_s, h_t, w_t, chunk_tokens=4)
    (first,) = torch.autograd.grad(loss, h_s, retain_graph=True)
    (second,) = torch.autograd.grad(loss, h_s)
    assert torch.equal(first, second)
    ref = torch.autograd.grad(0.5 * L.forward_kl(h_s @ w_s.T, h_t @ w_t.T), h_s)[0]
    assert torch.allclose(first, ref, rtol=1e-5, atol=1e-7)
