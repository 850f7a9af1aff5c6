"""Metrics: identities, invariances, chance levels and hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raykd import metrics

pytestmark = pytest.mark.unit
g = torch.Generator().manual_seed(0)


def test_cka_identity_rotation_scaling_and_random():
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert metrics.linear_cka(x, x) == pytest.approx(1.0)
    assert metrics.linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)
    assert metrics.semantic_alignment(x, x) == pytest.approx(100.0)
    assert metrics.linear_cka(torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)) < 0.02
    assert metrics.linear_cka(np.ones((5, 3)), np.random.rand(5, 3)) == 0.0


def test_cka_hand_computed():
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    # centred: x=(-1,0,1), y=(-1,1,0); <x,y>²/(|x|²|y|²) = 1/4
    assert metrics.linear_cka(x, y) == pytest.approx(0.25)
    # Gram and feature forms agree
    a, b = torch.randn(10, 40, generator=g), torch.randn(10, 30, generator=g)
    xc, yc = a - a.mean(0), b - b.mean(0)
    feature = ((yc.T @ xc).pow(2).sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())).item()
    assert metrics.linear_cka(a, b) == pytest.approx(feature, rel=1e-6)


def test_compactness_linear_map_perfect_and_noise_zero():
    xs = torch.randn(300, 8, generator=g)
    w = torch.randn(8, 5, generator=g)
    assert metrics.representation_compactness(xs[:200], xs[:200] @ w + 1, xs[200:], xs[200:] @ w + 1, ridge=1e-9) \
        == pytest.approx(100.0, abs=1e-4)
    assert metrics.representation_compactness(xs[:200], torch.randn(200, 5, generator=g), xs[200:],
                                              torch.randn(100, 5, generator=g)) < 8.0


def test_compactness_hand_computed_ridge():
    xf = torch.tensor([[0.0], [1.0], [2.0]])
    yf = torch.tensor([[0.0], [2.0], [4.0]])
    # centred x = (-1,0,1), XᵀX = 2, λ = 0.5·2/1 = 1 → w = (XᵀY)/(2+1) = 4/3, intercept = 2 − 4/3·1
    xe, ye = torch.tensor([[3.0], [0.0]]), torch.tensor([[6.0], [0.0]])
    pred = np.array([2 + 4 / 3 * 2, 2 - 4 / 3])
    r2 = 1 - ((np.array([6, 0]) - pred) ** 2).sum() / ((np.array([6, 0]) - 3) ** 2).sum()
    assert metrics.representation_compactness(xf, yf, xe, ye, ridge=0.5) == pytest.approx(100 * r2)


def test_structural_consistency_identity_scaled_skip_and_hand_case():
    h = torch.randn(4, 7, 12, generator=g)
    mask = torch.ones(4, 7)
    mask[1, 2:] = 0  # 2 tokens → skipped
    assert metrics.structural_consistency(h, 2 * h, mask) == pytest.approx(100.0)
    assert math.isnan(metrics.structural_consistency(h, h, torch.zeros(4, 7)))
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    # upper triangles: a → (0, .7071, .7071), b → (1, 0, 0): Pearson = −1
    assert metrics.structural_consistency(a, b, torch.ones(1, 3)) == pytest.approx(-100.0)


def test_qa_retrieval_perfect_chance_and_hand_case():
    q = torch.randn(300, 16, generator=g)
    assert metrics.qa_retrieval(q, q) == {"mrr@10": pytest.approx(1.0), "recall@1": pytest.approx(1.0)}
    r = metrics.qa_retrieval(q, torch.randn(300, 16, generator=g), candidates=100, seed=1)
    assert r["recall@1"] < 0.05 and r["mrr@10"] < 0.1
    qq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    aa = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.9]])
    # q0 → sims (0, 0, .74): true answer 0 ranks 2 (one strictly better) ; q1 → rank 1; q2 → rank 1
    assert metrics.qa_retrieval(qq, aa) == {"mrr@10": pytest.approx((0.5 + 1 + 1) / 3), "recall@1": pytest.approx(2 / 3)}
    # determinism under the seed with subsampled candidates
    a = torch.randn(300, 16, generator=g)
    assert metrics.qa_retrieval(q, a, 20, seed=3) == metrics.qa_retrieval(q, a, 20, seed=3)


def test_content_mask_drops_cls_sep_and_padding():
    am = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert metrics.content_mask(am).tolist() == [[False, True, True, False, False], [False, True, True, True, False]]


def test_efficiency_reports_params_and_latency():
    from transformers import BertConfig, BertModel

    m = BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                             vocab_size=100))
    e = metrics.efficiency(m, batch_sizes=(1, 4), seq_len=16, repeats=3)
    assert e["params"] == sum(p.numel() for p in m.parameters())
    assert e["latency_ms_b1"] > 0 and e["latency_ms_b4"] > 0
