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
    with pytest.raises(RaykdError, match="multiple"):
        layer_map(10, 4)


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
    assert L.temperature_kl(zs, zt).item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert L.temperature_kl(zs, zt, temperature=2.0).item() == pytest.approx(
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
    # temperature divides the logits before the softmax (no T² factor)
    pt, qt = torch.softmax(zt[0] / 3, 0), torch.softmax(zs[0] / 3, 0)
    mt = 0.5 * pt + 0.5 * qt
    jsd_t = 0.5 * (pt * (pt / mt).log()).sum() + 0.5 * (qt * (qt / mt).log()).sum()
    assert L.generalized_jsd(zs, zt, beta=0.5, temperature=3.0).item() == pytest.approx(float(jsd_t), rel=1e-5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            L.generalized_jsd(zs, zt, beta=bad)
