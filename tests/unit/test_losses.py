"""Losses against hand-computed values, and the layer map."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.distill import losses as L
from raykd.errors import RaykdError
from raykd.models.mapping import layer_map

pytestmark = pytest.mark.unit


def test_layer_map_uniform_and_errors():
    assert layer_map(24, 6) == [(1, 4), (2, 8), (3, 12), (4, 16), (5, 20), (6, 24)]
    assert layer_map(24, 6, 2) == [(1, 4), (2, 8)]
    assert layer_map(4, 2, 1) == [(1, 2)]
    with pytest.raises(RaykdError, match="depth 7"):
        layer_map(24, 6, 7)
    # L_S need not divide L_T: g(i) = round(i·L_T/L_S), halves up (LLaMA-2 32 → TinyLLaMA 22)
    assert layer_map(10, 4) == [(1, 3), (2, 5), (3, 8), (4, 10)]
    m = layer_map(32, 22)
    assert [g for _, g in m] == [int(i * 32 / 22 + 0.5) for i in range(1, 23)]
    assert m[0] == (1, 1) and m[-1] == (22, 32) and len({g for _, g in m}) == 22
    with pytest.raises(RaykdError, match="student layers"):
        layer_map(4, 6)


def test_hidden_mse_and_cosine_with_mask():
    hs = torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
    ht = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    assert L.hidden_mse(hs, ht).item() == pytest.approx((0.5 + 4.0) / 2)
    assert L.hidden_mse(hs, ht, torch.tensor([[1, 0]])).item() == pytest.approx(0.5)
    ht2 = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert L.hidden_cosine(hs, ht2).item() == pytest.approx((1.0 + 0.0) / 2)


def test_relation_loss_hand_value():
    hs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # S = I
    ht = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # S = all ones
    assert L.relation_loss(hs, ht).item() == pytest.approx(2 / 4)
    assert L.relation_loss(hs, torch.cat([hs, hs], -1)).item() == pytest.approx(0.0)  # widths may differ


def test_info_nce_hand_value_and_hard_negatives():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    expected = -math.log(math.exp(10) / (math.exp(10) + math.exp(0)))
    assert L.info_nce(a, a, temperature=0.1).item() == pytest.approx(expected, rel=1e-5)
    neg = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with_neg = -(math.log(math.exp(10) / (2 * math.exp(10) + 1)) + math.log(math.exp(10) / (math.exp(10) + 2))) / 2
    assert L.info_nce(a, a, neg, temperature=0.1).item() == pytest.approx(with_neg, rel=1e-5)


def test_attention_relation_kl_zero_on_equal_and_hand_value():
    x = torch.randn(2, 5, 8)
    assert L.attention_relation_kl(x, x, heads=2).item() == pytest.approx(0.0, abs=1e-6)
    xs = torch.tensor([[[0.0], [0.0]]])
    xt = torch.tensor([[[1.0], [-1.0]]])
    # teacher rows: softmax([1,-1]) and softmax([-1,1]); student uniform → KL = Σ p log(2p)
    p = torch.softmax(torch.tensor([1.0, -1.0]), 0)
    kl = float((p * torch.log(2 * p)).sum())
    assert L.attention_relation_kl(xs, xt, heads=1).item() == pytest.approx(kl, rel=1e-5)
    mask = torch.tensor([[1, 0]])  # key 2 masked: both rows become one-hot on key 1 → 0, only query 1 counts
    assert L.attention_relation_kl(xs, xt, heads=1, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_family_hand_values():
    zs, zt = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # q=(.5,.5) p=(.75,.25)
    p, q = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])
    assert L.forward_kl(zs, zt).item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert L.forward_kl(zs, zt, temperature=2.0).item() == pytest.approx(
        4 * float((lambda pp: (pp * (pp / q).log()).sum())(torch.softmax(zt[0] / 2, 0))), rel=1e-5)
    assert L.reverse_kl(zs, zt).item() == pytest.approx(float((q * (q / p).log()).sum()), rel=1e-5)
    m = 0.5 * p + 0.5 * q
    jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert L.generalized_jsd(zs, zt, beta=0.5).item() == pytest.approx(float(jsd), rel=1e-5)
    b = 0.1
    m = b * p + (1 - b) * q
    jsd = b * (p * (p / m).log()).sum() + (1 - b) * (q * (q / m).log()).sum()
    assert L.generalized_jsd(zs, zt, beta=b).item() == pytest.approx(float(jsd), rel=1e-5)
    assert L.soft_cross_entropy(zs, zt).item() == pytest.approx(float(-(p * q.log()).sum()), rel=1e-5)
    # closed interval, as TRL: β = 0 is the forward KL(p‖q), β = 1 the reverse KL(q‖p)
    assert L.generalized_jsd(zs, zt, beta=0.0).item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert L.generalized_jsd(zs, zt, beta=1.0).item() == pytest.approx(float((q * (q / p).log()).sum()), rel=1e-5)
    # temperature divides the logits before the softmax, and the divergence is multiplied by T² (one rule)
    pt, qt = torch.softmax(zt[0] / 3, 0), torch.softmax(zs[0] / 3, 0)
    mt = 0.5 * pt + 0.5 * qt
    jsd_t = 0.5 * (pt * (pt / mt).log()).sum() + 0.5 * (qt * (qt / mt).log()).sum()
    assert L.generalized_jsd(zs, zt, beta=0.5, temperature=3.0).item() == pytest.approx(9 * float(jsd_t), rel=1e-5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            L.generalized_jsd(zs, zt, beta=bad)


# ---------------------------------------------------------------- causal-family divergences (independent)
def _np_softmax(z, T):
    import numpy as np

    e = np.exp((z - z.max(-1, keepdims=True)) / T)
    return e / e.sum(-1, keepdims=True)


def _reference(name, zs, zt, T=1.0, beta=0.5, alpha=0.1):
    """Each divergence per position, written with numpy from its definition, times T² (raykd's one
    temperature rule for every divergence)."""
    return T * T * _unscaled(name, zs, zt, T, beta, alpha)


def _unscaled(name, zs, zt, T, beta, alpha):
    import numpy as np

    p, q = _np_softmax(zt, T), _np_softmax(zs, T)
    kl = lambda a, b: (a * (np.log(a) - np.log(b))).sum(-1)  # noqa: E731
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        if beta == 0:
            return kl(p, q)
        if beta == 1:
            return kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew_rkl":
        return kl(q, alpha * q + (1 - alpha) * p)
    if name == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd"])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_divergences_against_numpy_with_mask(name, T):
    import numpy as np

    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(2, 5, 11, generator=g, dtype=torch.float64), torch.randn(2, 5, 11, generator=g,
                                                                                  dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    ref = _reference(name, zs.numpy(), zt.numpy(), T=T, beta=0.3, alpha=0.2)
    want = float((ref * mask.numpy()).sum() / mask.sum())
    got = L.divergence(name, zs, zt, temperature=T, beta=0.3, alpha=0.2, mask=mask)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # without a mask: the mean over every position; identical distributions: zero
    assert L.divergence(name, zs, zt, temperature=T, beta=0.3, alpha=0.2).item() == pytest.approx(float(ref.mean()),
                                                                                                  rel=1e-5)
    assert L.divergence(name, zt, zt, temperature=T, beta=0.3, alpha=0.2).item() == pytest.approx(0.0, abs=1e-9)
    assert np.all(ref >= -1e-12)


def test_jsd_endpoints_and_skew_zero_are_the_plain_kls():
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    for T in (1.0, 2.0):
        assert L.generalized_jsd(zs, zt, beta=0.0, temperature=T).item() == pytest.approx(
            L.forward_kl(zs, zt, temperature=T).item(), rel=1e-5)
        assert L.generalized_jsd(zs, zt, beta=1.0, temperature=T).item() == pytest.approx(
            L.reverse_kl(zs, zt, temperature=T).item(), rel=1e-5)
        assert L.skew_kl(zs, zt, alpha=0.0, temperature=T).item() == pytest.approx(
            L.forward_kl(zs, zt, temperature=T).item(), rel=1e-5)
        assert L.skew_kl(zs, zt, alpha=0.0, reverse=True, temperature=T).item() == pytest.approx(
            L.reverse_kl(zs, zt, temperature=T).item(), rel=1e-5)
    with pytest.raises(ValueError):
        L.skew_kl(zs, zt, alpha=1.0)
    with pytest.raises(ValueError):
        L.divergence("kl", zs, zt)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"])
def test_num_tokens_makes_accumulation_equal_one_big_batch(name):
    """Two micro-batches with unequal response-token counts: summing each micro-batch's loss with
    num_tokens = the global count gives the same value and gradient as the whole batch at once
    (and so does DDP, whose all-reduce averages per-rank gradients: num_tokens = global / world)."""
    g = torch.Generator().manual_seed(5)
    zs = torch.randn(4, 6, 13, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 6, 13, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) < 0.6).long()
    mask[0] = 1  # micro-batch 1 holds more counted tokens than micro-batch 2
    mask[2:, 3:] = 0
    full = L.divergence(name, zs, zt, temperature=2.0, mask=mask)
    (g_full,) = torch.autograd.grad(full, zs)
    n = int(mask.sum())
    parts = [L.divergence(name, zs[i:i + 2], zt[i:i + 2], temperature=2.0, mask=mask[i:i + 2], num_tokens=n)
             for i in (0, 2)]
    (g_acc,) = torch.autograd.grad(sum(parts), zs)
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-10)
    assert torch.allclose(g_acc, g_full, rtol=1e-9, atol=1e-12)
    # the per-micro-batch mean divided by the accumulation steps (the naive way) is not the same
    naive = sum(L.divergence(name, zs[i:i + 2], zt[i:i + 2], temperature=2.0, mask=mask[i:i + 2]) / 2 for i in (0, 2))
    assert abs(float(naive) - float(full)) > 1e-6
    # DDP: two ranks, each normalising by global/world; the all-reduce mean of their gradients
    ranks = [torch.autograd.grad(L.divergence(name, zs[i:i + 2], zt[i:i + 2], temperature=2.0, mask=mask[i:i + 2],
                                              num_tokens=n / 2), zs)[0] for i in (0, 2)]
    assert torch.allclose((ranks[0] + ranks[1]) / 2, g_full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd"])
def test_every_divergence_follows_the_one_temperature_rule(name):
    """D_T(z_s, z_t) = T² · D_1(z_s / T, z_t / T) for all six divergences: the same factor on each,
    so a search over T changes no divergence's weight against cross-entropy relative to another's."""
    g = torch.Generator().manual_seed(8)
    zs, zt = torch.randn(5, 17, generator=g, dtype=torch.float64), torch.randn(5, 17, generator=g, dtype=torch.float64)
    for T in (0.5, 2.0, 4.0):
        at_t = L.divergence(name, zs, zt, temperature=T, beta=0.3, alpha=0.2).item()
        at_1 = L.divergence(name, zs / T, zt / T, temperature=1.0, beta=0.3, alpha=0.2).item()
        assert at_t == pytest.approx(T * T * at_1, rel=1e-10)
    # forward_kl at T = 2 is 4·KL, as it always was
    p, q = torch.softmax(zt / 2, -1), torch.softmax(zs / 2, -1)
    if name == "forward_kl":
        assert L.forward_kl(zs, zt, temperature=2.0).item() == pytest.approx(
            float(4 * (p * (p / q).log()).sum(-1).mean()), rel=1e-10)


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "skew_kl", "skew_rkl", "tvd"])
def test_divergences_finite_where_teacher_logits_are_minus_inf(name):
    """A masked vocabulary entry (teacher logit −inf, probability 0) adds 0·log 0 = 0, and the
    student's gradient stays finite; the value equals the divergence over the other entries with the
    student renormalised... i.e. the dense formula with p = 0 there, written independently."""
    import numpy as np

    g = torch.Generator().manual_seed(9)
    zs = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 6, generator=g, dtype=torch.float64)
    zt[:, 4:] = float("-inf")
    out = L.divergence(name, zs, zt, temperature=2.0, beta=0.3, alpha=0.2)
    assert torch.isfinite(out)
    (grad,) = torch.autograd.grad(out, zs)
    assert torch.isfinite(grad).all()
    p = _np_softmax(zt.numpy(), 2.0)
    q = _np_softmax(zs.detach().numpy(), 2.0)
    assert (p[:, 4:] == 0).all()

    def kl(a, b):  # 0·log 0 = 0, written out
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0).sum(-1)
    per = {"forward_kl": lambda: kl(p, q), "tvd": lambda: 0.5 * np.abs(p - q).sum(-1),
           "jsd": lambda: 0.3 * kl(p, 0.3 * p + 0.7 * q) + 0.7 * kl(q, 0.3 * p + 0.7 * q),
           "skew_kl": lambda: kl(p, 0.2 * p + 0.8 * q), "skew_rkl": lambda: kl(q, 0.2 * q + 0.8 * p)}[name]()
    assert out.item() == pytest.approx(4 * float(per.mean()), rel=1e-10)


def test_token_cross_entropy_matches_log_softmax():
    g = torch.Generator().manual_seed(6)
    z, y = torch.randn(3, 4, 7, generator=g), torch.randint(7, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    lp = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)
    assert L.token_cross_entropy(z, y, mask=mask).item() == pytest.approx(float(-(lp * mask).sum() / mask.sum()),
                                                                          rel=1e-6)
    assert L.token_cross_entropy(z, y, mask=mask, num_tokens=12).item() == pytest.approx(
        float(-(lp * mask).sum() / 12), rel=1e-6)
