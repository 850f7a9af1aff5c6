"""Metrics: identities, invariances, chance levels and hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raykd.metrics import representation as metrics

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
    assert metrics.debiased_linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)


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
    # q0 → sims (0, 0, .74): true answer 0 ranks 3 (a tie and a better one count against it);
    # q1 → sims (1, 1, .67): its true answer ties with answer 0 → rank 2; q2 → rank 1
    assert metrics.qa_retrieval(qq, aa) == {"mrr@10": pytest.approx((1 / 3 + 1 / 2 + 1) / 3),
                                            "recall@1": pytest.approx(1 / 3)}
    # determinism under the seed with subsampled candidates
    a = torch.randn(300, 16, generator=g)
    assert metrics.qa_retrieval(q, a, 20, seed=3) == metrics.qa_retrieval(q, a, 20, seed=3)


def test_qa_retrieval_constant_representation_scores_zero():
    q = torch.randn(200, 8, generator=g)
    const = torch.ones(200, 8)
    assert metrics.qa_retrieval(const, const) == {"mrr@10": 0.0, "recall@1": 0.0}
    assert metrics.qa_retrieval(q, const)["mrr@10"] == 0.0


def test_qa_retrieval_answer_keys_keep_duplicates_of_the_true_answer_out():
    # answers 0 and 1 are the same text: without keys, each is a tie for the other (rank 2)
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.qa_retrieval(q, a)["recall@1"] == pytest.approx(1 / 3)
    r = metrics.qa_retrieval(q, a, answer_keys=["x", "x", "y"])
    assert r == {"mrr@10": pytest.approx(1.0), "recall@1": pytest.approx(1.0)}
    with pytest.raises(ValueError):
        metrics.qa_retrieval(q, a, answer_keys=["x"])


def _reference_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Written independently from Kornblith's published recipe: uncentred linear Grams, the unbiased
    centring of the Gram matrix (zero diagonal, then the U-centring), HSIC = <K̃, L̃>/(n(n−3))."""
    def u_center(gram):
        n = gram.shape[0]
        gram = gram.copy()
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
        return gram

    kx, ky = u_center(x @ x.T), u_center(y @ y.T)
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


def test_debiased_cka_matches_an_independent_implementation():
    rng = np.random.default_rng(0)
    for n, p, q in ((10, 3, 5), (64, 32, 8), (128, 64, 128)):
        x = rng.normal(size=(n, p)) + 2.0
        y = x @ rng.normal(size=(p, q)) + rng.normal(size=(n, q)) * 3.0 - 1.0
        assert metrics.debiased_linear_cka(x, y) == pytest.approx(_reference_debiased_cka(x, y), abs=1e-9)
    with pytest.raises(ValueError):
        metrics.debiased_linear_cka(np.ones((3, 2)), np.ones((3, 2)))


@pytest.mark.parametrize("width", [64, 768])
def test_semantic_alignment_has_no_chance_floor(width):
    rng = np.random.default_rng(width)
    sa = [metrics.semantic_alignment(rng.normal(size=(128, width)), rng.normal(size=(128, width))) for _ in range(10)]
    biased = [100 * metrics.linear_cka(rng.normal(size=(128, width)), rng.normal(size=(128, width))) for _ in range(3)]
    assert np.mean(np.abs(sa)) <= 5.0
    assert np.mean(biased) > 25.0  # the floor the biased estimator has at this n (why it is not the metric)


def test_semantic_alignment_of_a_rotated_scaled_copy():
    x = torch.randn(128, 64, generator=g)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    assert metrics.semantic_alignment(x, 3.0 * x @ q) >= 99.5
    assert metrics.semantic_alignment(x, np.ones((128, 4))) == 0.0


def _bert_pair(vocab=60, hidden=32, layers=2, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64)).eval()


def _batches(n=48, seed=0, vocab=60):
    """Padded pair batches with [CLS]=2 … [SEP]=3 and padding 0; content tokens 5..vocab."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, 16):
        b = {}
        for side in ("q", "a"):
            lens = rng.integers(4, 12, 16)
            ids = np.zeros((16, 13), dtype=np.int64)
            mask = np.zeros((16, 13), dtype=np.int64)
            for i, length in enumerate(lens):
                ids[i, : length + 2] = [2, *rng.integers(5, vocab, length), 3]
                mask[i, : length + 2] = 1
            b[f"{side}_input_ids"], b[f"{side}_attention_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
        out.append(b)
    return out


def test_evaluate_teacher_against_itself_unrelated_model_and_cis():
    teacher = _bert_pair(seed=0)
    other = _bert_pair(seed=1)
    batches = _batches(64)
    same = metrics.evaluate(teacher, teacher, batches, special_ids=(0, 1, 2, 3, 4), bootstrap=50)
    assert same["semantic_alignment"] == pytest.approx(100.0)
    assert same["structural_consistency"] == pytest.approx(100.0)
    assert same["representation_compactness"] > 95.0
    assert same["mrr@10"] == pytest.approx(same["teacher_mrr@10"])
    assert same["eval_pairs"] == 64
    for k in ("semantic_alignment", "mrr@10", "representation_compactness", "structural_consistency"):
        assert same[f"{k}_ci_low"] <= same[k] + 1e-9 <= same[f"{k}_ci_high"] + 2e-9
    diff = metrics.evaluate(other, teacher, batches, special_ids=(0, 1, 2, 3, 4), bootstrap=50)
    assert diff["semantic_alignment"] < same["semantic_alignment"] - 5
    assert diff["semantic_alignment_ci_high"] > diff["semantic_alignment_ci_low"]


def test_evaluate_with_a_teacher_cache_gives_the_same_numbers_without_running_the_teacher():
    teacher, student = _bert_pair(seed=0), _bert_pair(seed=1)
    ev, fit = _batches(48, seed=0), _batches(32, seed=1)
    direct = metrics.evaluate(student, teacher, ev, fit, special_ids=(0, 1, 2, 3, 4), bootstrap=20)
    cache = (metrics.teacher_outputs(teacher, ev, torch.device("cpu"), True, (0, 1, 2, 3, 4)),
             metrics.teacher_outputs(teacher, fit, torch.device("cpu"), False, (0, 1, 2, 3, 4)))
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    cached = metrics.evaluate(student, teacher, ev, fit, special_ids=(0, 1, 2, 3, 4), bootstrap=20,
                              teacher_cache=cache)
    assert calls == []
    assert cached == pytest.approx(direct, rel=0, abs=1e-9)
    with pytest.raises(ValueError, match="teacher cache has 3 batches for 2"):
        metrics.evaluate(student, teacher, ev[:2], special_ids=(0, 1, 2, 3, 4), teacher_cache=(cache[0], None))


def _rebatched(batches: list[dict], size: int) -> list[dict]:
    """The same pairs batched by the length of the longer side (as ``masked_lm._eval_batches``), each batch
    carrying its pairs' places in the original order as ``pair_index``, and padded to its own longest."""
    rows = [{k: b[k][i] for k in b} for b in batches for i in range(b["q_input_ids"].shape[0])]
    longer = np.array([max(int(r["q_attention_mask"].sum()), int(r["a_attention_mask"].sum())) for r in rows])
    order = np.argsort(longer, kind="stable")
    out = []
    for start in range(0, len(order), size):
        idx = order[start: start + size]
        b = {}
        for side in ("q", "a"):
            width = max(int(rows[i][f"{side}_attention_mask"].sum()) for i in idx)
            for key in (f"{side}_input_ids", f"{side}_attention_mask"):
                b[key] = torch.stack([rows[i][key][:width] for i in idx])
        b["pair_index"] = torch.from_numpy(idx.astype(np.int64))
        out.append(b)
    return out


def test_batches_made_by_length_give_the_metrics_of_the_pairs_in_their_order():
    """Batching by length only saves padding: every metric and CI equals the one of the pairs in their own order
    (to float rounding), candidates, halves and resamples drawn over the same order."""
    teacher, student = _bert_pair(seed=0), _bert_pair(seed=1)
    ev, fit = _batches(48, seed=0), _batches(32, seed=1)
    for b, r in ((0, 1), (0, 2), (1, 5), (2, 7)):  # answers that repeat one another: their keys decide competitors
        for key in ("a_input_ids", "a_attention_mask"):
            ev[b][key][r] = ev[0][key][0]
    plain = metrics.evaluate(student, teacher, ev, fit, special_ids=(0, 1, 2, 3, 4), bootstrap=20)
    sorted_ev = _rebatched(ev, 16)
    assert [b["q_input_ids"].shape[1] for b in sorted_ev] != [b["q_input_ids"].shape[1] for b in ev]
    by_length = metrics.evaluate(student, teacher, sorted_ev, _rebatched(fit, 16), special_ids=(0, 1, 2, 3, 4),
                                 bootstrap=20)
    assert by_length == pytest.approx(plain, rel=1e-5, abs=1e-6)
    # without putting them back in order the draws differ: the test can fail
    no_order = [{k: v for k, v in b.items() if k != "pair_index"} for b in sorted_ev]
    shuffled = metrics.evaluate(student, teacher, no_order, fit, special_ids=(0, 1, 2, 3, 4), bootstrap=20)
    assert shuffled != pytest.approx(plain, rel=1e-5, abs=1e-6)


def test_evaluate_y_ignores_special_tokens():
    """Y is the content-token mean: appending extra [SEP]/padding to every sequence changes nothing."""
    teacher = _bert_pair(seed=0)
    batches = _batches(32)
    y = metrics.content_repr(teacher, batches[0]["q_input_ids"], batches[0]["q_attention_mask"], (0, 1, 2, 3, 4))[2]
    manual = []
    for ids, m in zip(batches[0]["q_input_ids"], batches[0]["q_attention_mask"]):
        h = teacher(input_ids=ids[None], attention_mask=m[None]).last_hidden_state[0]
        keep = (ids >= 5) & (m > 0)
        manual.append(h[keep].mean(0))
    assert torch.allclose(y, torch.stack(manual), atol=1e-5)


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


def test_resampled_debiased_cka_equals_the_estimator_on_the_resampled_list():
    """The vectorised bootstrap (weighted sums over the original Gram matrices) gives exactly the
    unbiased estimator computed on the gathered resample with same-pair positions zeroed."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))
    y[:, :3] += x[:, :3]
    kx, ky = metrics._linear_grams(x, y)
    kx0, ky0 = metrics._zero_diagonal(kx), metrics._zero_diagonal(ky)
    draws = [rng.integers(0, 40, 40) for _ in range(5)]
    fast = metrics.debiased_cka_resampled(kx0, ky0, torch.cat([metrics._counts(d, 40) for d in draws], 1))
    for d, f in zip(draws, fast.tolist()):
        t = torch.from_numpy(d)
        same = t[:, None] == t[None, :]
        slow = metrics._debiased_cka_from_grams(kx[t][:, t].masked_fill(same, 0.0), ky[t][:, t].masked_fill(same, 0.0))
        assert f == pytest.approx(slow, rel=1e-9, abs=1e-12)
    # the same from the features (no Gram): what a study's CIs use when it is cheaper
    feat = metrics.debiased_cka_resampled_features(*metrics._centred(x, y), torch.cat([metrics._counts(d, 40)
                                                                                       for d in draws], 1))
    np.testing.assert_allclose(feat.numpy(), fast.numpy(), rtol=1e-10, atol=1e-12)
    assert metrics.resample_from_features(4096, 32, 64) and not metrics.resample_from_features(4096, 32, 384)
    # no duplicates in a draw: the plain estimator on that subset
    perm = rng.permutation(40)
    w = metrics._counts(perm, 40)
    assert float(metrics.debiased_cka_resampled(kx0, ky0, w)[0]) == pytest.approx(metrics.debiased_linear_cka(x, y))


def test_aggregated_y_is_the_students_own_encoding():
    """A student with its own aggregation is scored on Y = its ``encode`` output (``_aggregated`` keys),
    computed from the same forward pass as the content-mean Y."""
    from raykd.models.student import build_student

    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64)).eval()
    student = build_student(teacher, 1, aggregation=True).eval()
    batches = _batches(32)
    got = metrics._collect(student, teacher, batches, torch.device("cpu"), True, (0, 1, 2, 3, 4))
    with torch.no_grad():
        want_q = torch.cat([student.encode(b["q_input_ids"], b["q_attention_mask"])[1] for b in batches])
        want_a = torch.cat([student.encode(b["a_input_ids"], b["a_attention_mask"])[1] for b in batches])
    assert torch.allclose(got["ya_q"], want_q, atol=1e-6) and torch.allclose(got["ya_a"], want_a, atol=1e-6)
    assert not torch.allclose(got["ya_q"], got["ys_q"], atol=1e-3)  # not the content mean


def _reference_ranks(q, a, candidates, seed, keys):
    """qa_retrieval's reciprocal ranks written as its docstring says, one question at a time."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    sims, n = qn @ an.T, len(q)
    rng, out = np.random.default_rng(seed), np.zeros(n)
    for i in range(n):
        pool = np.array([j for j in range(n) if j != i and (keys is None or keys[j] != keys[i])], dtype=np.int64)
        k = min(candidates - 1, len(pool))
        others = pool if k == len(pool) else rng.choice(pool, size=k, replace=False)
        rank = 1 + int((sims[i, others] >= sims[i, i] - metrics.TIE_TOLERANCE).sum())
        out[i] = 1.0 / rank if rank <= 10 else 0.0
    return out


@pytest.mark.parametrize("n,candidates,with_keys", [(40, 100, False), (300, 20, False), (300, 20, True), (6, 3, True)])
def test_reciprocal_ranks_equal_the_one_question_at_a_time_definition(n, candidates, with_keys):
    rng = np.random.default_rng(n)
    q = rng.normal(size=(n, 8))
    a = q + rng.normal(size=(n, 8)) * 1.5
    keys = [str(i % 7 if i % 3 == 0 else i) for i in range(n)] if with_keys else None  # duplicates of answers
    for seed in (0, 5):
        got, want = metrics.reciprocal_ranks(q, a, candidates, seed, keys), _reference_ranks(q, a, candidates, seed, keys)
        assert np.array_equal(got, want) and 0 < want.mean() <= 1


def test_consistency_of_a_batch_equals_each_sequence_alone():
    g2 = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(6, 9, 5, generator=g2), torch.randn(6, 9, 7, generator=g2)
    ht[1] = hs[1] @ torch.randn(5, 7, generator=g2)  # a related pair
    mask = torch.ones(6, 9)
    mask[2, 2:] = 0  # 2 tokens: skipped
    mask[3, 5:] = 0
    hs[4] = 1.0  # constant similarities: skipped
    per = metrics._consistency_per_sequence(hs, ht, mask)
    for i in range(6):
        alone = metrics._consistency_scores(hs[i: i + 1], ht[i: i + 1], mask[i: i + 1])
        idx = mask[i].nonzero().squeeze(1)
        if i in (2, 4):
            assert np.isnan(per[i]) and alone == []
            continue
        a = torch.nn.functional.normalize(hs[i, idx].double(), dim=-1)
        b = torch.nn.functional.normalize(ht[i, idx].double(), dim=-1)
        iu = torch.triu_indices(len(idx), len(idx), 1)
        x, y = (a @ a.T)[iu[0], iu[1]].numpy(), (b @ b.T)[iu[0], iu[1]].numpy()
        assert per[i] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12) and alone == [pytest.approx(per[i])]


def test_consistency_ignores_what_lies_outside_the_mask_and_works_in_chunks(monkeypatch):
    g2 = torch.Generator().manual_seed(4)
    hs, ht = torch.randn(5, 8, 4, generator=g2), torch.randn(5, 8, 6, generator=g2)
    mask = torch.ones(5, 8)
    mask[:, 6:] = 0
    clean = metrics._consistency_per_sequence(hs, ht, mask)
    assert np.isfinite(clean).all()
    hs[:, 7], ht[:, 6] = float("nan"), float("inf")  # padding garbage
    assert np.allclose(metrics._consistency_per_sequence(hs, ht, mask), clean, rtol=0, atol=1e-12)
    monkeypatch.setattr(metrics, "CONSISTENCY_CHUNK", 2 * 8 * 8)  # two sequences at a time
    assert np.allclose(metrics._consistency_per_sequence(hs, ht, mask), clean, rtol=0, atol=1e-12)
