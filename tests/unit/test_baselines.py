"""Each baseline's objective is its paper's (task / cross-entropy term included), checked against the
formula written here independently with numpy; ``structural``'s relation term never compares a question
with an answer under ``relation_scope: within``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.distill.methods import build_method, make_inputs
from raykd.models.student import build_student
from tests.helpers.tiny import TOK, VOCAB
from tests.helpers.tiny import tiny_batch as _batch
from tests.helpers.tiny import tiny_teacher as _teacher

pytestmark = pytest.mark.unit


def tiny_teacher():
    torch.manual_seed(0)
    return _teacher().eval()


def tiny_batch():
    return _batch(t=12, min_len=6)


def student_of(teacher, seed=0):
    """A 2-layer student cut from the teacher, its weights moved away from the teacher's so that the
    divergences are far from 0 (a random tiny teacher is nearly uniform)."""
    s = build_student(teacher, 2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return s


def _np(x):
    return x.detach().double().numpy()


def _softmax(z, T=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / T)
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    p = _softmax(z)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def _kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


def _masked_inputs(method, seed=1):
    return make_inputs(tiny_batch(), TOK, torch.Generator().manual_seed(seed), corrupt=True, vocab_size=VOCAB)


def test_ddk_is_ce_plus_gamma_kl_without_the_hidden_mse():
    teacher = tiny_teacher()
    student = student_of(teacher)
    T, gamma = 2.0, 0.7
    m = build_method("ddk", student, teacher.config, n_departments=3, temperature=T, kd_weight=gamma).eval()
    inputs = _masked_inputs(m)
    out = m(inputs, m.teacher_targets(teacher, inputs))
    assert set(out) == {"loss", "ce", "kd"}  # no hidden MSE unless asked (not in the paper)
    with torch.no_grad():
        zs = _np(student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]])
        zt = _np(teacher(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]])
    y = inputs["ids"][inputs["chosen"]].numpy()
    ce, kd = _ce(zs, y), T * T * _kl(_softmax(zt, T), _softmax(zs, T))
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(ce + gamma * kd, rel=1e-5)
    with_hidden = build_method("ddk", build_student(teacher, 2), teacher.config, hidden_mse=True)
    assert "hidden" in with_hidden(inputs, with_hidden.teacher_targets(teacher, inputs))


def test_mixkd_is_task_ce_mixup_ce_and_kd_on_masked_content_positions():
    teacher = tiny_teacher()
    student = student_of(teacher)
    alpha, T, w, seed = 0.4, 2.0, 0.5, 7
    torch.manual_seed(123)  # the global RNG must not matter: λ and π come from the method's own seed
    m = build_method("mixkd", student, teacher.config, alpha=alpha, temperature=T, kd_weight=w, seed=seed).eval()
    inputs = _masked_inputs(m)
    torch.manual_seed(999)
    out = m(inputs, m.teacher_targets(teacher, inputs))
    assert set(out) == {"loss", "ce", "mix_ce", "kd_clean", "kd"}
    # the paper's pieces, independently: λ ~ Beta(α, α) from numpy's generator seeded with the method's seed,
    # π a seeded permutation; embeddings of the (masked) inputs mixed for teacher and student alike
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(inputs["ids"].shape[0], generator=torch.Generator().manual_seed(seed))
    ids, x, mask, chosen = inputs["ids"], inputs["input_ids"], inputs["mask"], inputs["chosen"]
    mixed_mask = (mask.bool() | mask.bool()[perm]).long()
    with torch.no_grad():
        def run(model, mixed):
            if not mixed:
                return _np(model(input_ids=x, attention_mask=mask).logits)
            e = model.get_input_embeddings()(x)
            return _np(model(inputs_embeds=lam * e + (1 - lam) * e[perm], attention_mask=mixed_mask).logits)
        s_clean, t_clean = run(student.mlm, False), run(teacher, False)
        s_mix, t_mix = run(student.mlm, True), run(teacher, True)
    c, cp = chosen.numpy(), chosen[perm].numpy()
    kd_at = c | cp
    want = {"ce": _ce(s_clean[c], ids.numpy()[c]),
            "mix_ce": lam * _ce(s_mix[c], ids.numpy()[c]) + (1 - lam) * _ce(s_mix[cp], ids[perm].numpy()[cp]),
            "kd_clean": T * T * _kl(_softmax(t_clean[c], T), _softmax(s_clean[c], T)),
            "kd": T * T * _kl(_softmax(t_mix[kd_at], T), _softmax(s_mix[kd_at], T))}
    for k, v in want.items():
        assert float(out[k]) == pytest.approx(v, rel=1e-4), k
    assert float(out["loss"]) == pytest.approx(want["ce"] + want["mix_ce"] + w * (want["kd_clean"] + want["kd"]),
                                               rel=1e-4)
    # KD never sits on [CLS] / [SEP] / padding: only masked content positions
    specials = np.isin(ids.numpy(), [TOK.cls, TOK.sep, TOK.pad])
    assert not (c & specials).any() and not (cp & specials[perm.numpy()]).any()


def test_mixkd_draws_lambda_from_its_seed_only():
    teacher = tiny_teacher()
    lams = []
    for seed, global_seed in ((3, 0), (3, 1), (4, 0)):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        m = build_method("mixkd", build_student(teacher, 2), teacher.config, seed=seed)
        inputs = _masked_inputs(m)
        lams.append(m._mix(inputs)[0])
    assert lams[0] == lams[1] != lams[2]


def test_minillm_is_t2_reverse_kl_plus_its_language_modelling_term():
    teacher = tiny_teacher()
    student = student_of(teacher)
    T, w = 2.0, 0.3
    m = build_method("minillm", student, teacher.config, temperature=T, ce_weight=w).eval()
    inputs = _masked_inputs(m)
    out = m(inputs, m.teacher_targets(teacher, inputs))
    with torch.no_grad():
        zs = _np(student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]])
        zt = _np(teacher(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]])
    rkl, ce = T * T * _kl(_softmax(zs, T), _softmax(zt, T)), _ce(zs, inputs["ids"][inputs["chosen"]].numpy())
    assert float(out["reverse_kl"]) == pytest.approx(rkl, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(rkl + w * ce, rel=1e-5)


def test_gkd_carries_cross_entropy_only_when_asked():
    teacher = tiny_teacher()
    inputs = _masked_inputs(None)
    plain = build_method("gkd", student_of(teacher), teacher.config).eval()
    assert set(plain(inputs, plain.teacher_targets(teacher, inputs))) == {"loss", "jsd"}  # the paper's objective
    m = build_method("gkd", student_of(teacher), teacher.config, ce_weight=0.5).eval()
    out = m(inputs, m.teacher_targets(teacher, inputs))
    assert float(out["loss"]) == pytest.approx(float(out["jsd"]) + 0.5 * float(out["ce"]), rel=1e-6)


def test_out_of_range_settings_are_refused_by_the_declaration():
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match=r"gkd: beta: 1.5 must be in \[0, 1\]"):
        build_method("gkd", student_of(teacher), teacher.config, beta=1.5)
    with pytest.raises(ValueError, match="relation_scope: 'pairs' is not one of within, all"):
        build_method("structural", build_student(teacher, 2, aggregation=True), teacher.config, relation_scope="pairs")


def _rotate(x, seed=0):
    q, _ = torch.linalg.qr(torch.randn(x.shape[-1], x.shape[-1], generator=torch.Generator().manual_seed(seed),
                                       dtype=x.dtype))
    return x @ q


def test_relation_scope_within_never_compares_a_question_with_an_answer():
    """Rotating the teacher's answers (only) keeps every answer–answer and question–question cosine
    and changes every question–answer one: the ``within`` relation term cannot see it, ``all`` does."""
    from raykd.distill import losses as L

    g = torch.Generator().manual_seed(2)
    b = 5
    y_s, y_t = torch.randn(2 * b, 8, generator=g, dtype=torch.float64), torch.randn(2 * b, 12, generator=g,
                                                                                    dtype=torch.float64)
    groups = torch.cat([torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)])
    y_t_rot = torch.cat([y_t[:b], _rotate(y_t[b:])])
    within = L.relation_loss_within(y_s, y_t, groups)
    assert float(L.relation_loss_within(y_s, y_t_rot, groups)) == pytest.approx(float(within), rel=1e-12)
    assert abs(float(L.relation_loss_within(y_s, y_t_rot)) - float(L.relation_loss_within(y_s, y_t))) > 1e-3
    # and the value is the mean over same-group pairs, written out
    def cos(y):
        n = y / y.norm(dim=-1, keepdim=True)
        return n @ n.T
    d = (cos(y_s) - cos(y_t)).pow(2)
    want = (d[:b, :b].sum() + d[b:, b:].sum()) / (2 * b * b)
    assert float(within) == pytest.approx(float(want), rel=1e-12)


def test_structural_in_training_uses_the_within_scope_by_default():
    """Through the method: the masked-LM batch marks questions 0 and answers 1 (``group``), and the
    structural loss is unchanged when the teacher's answer representations are rotated against its
    questions' — only with the default scope."""
    from raykd.distill import losses as L

    teacher = tiny_teacher()
    inputs = make_inputs(tiny_batch(), TOK)
    assert inputs["group"].tolist() == [0] * 4 + [1] * 4
    seen = {}
    real = L.relation_loss_within

    def spy(y_s, y_t, groups=None):
        seen["groups"] = groups
        return real(y_s, y_t, groups)
    for scope, want in (("within", [0] * 4 + [1] * 4), ("all", None)):
        m = build_method("structural", build_student(teacher, 2, aggregation=True), teacher.config, depth=2,
                         projection_dim=8, relation_scope=scope, fusion=False)
        L.relation_loss_within = spy
        try:
            m(inputs, m.teacher_targets(teacher, inputs))
        finally:
            L.relation_loss_within = real
        assert (seen["groups"].tolist() if seen["groups"] is not None else None) == want


def test_ddk_measures_its_gap_on_the_first_evaluation_pairs_in_their_order_not_the_shortest():
    """Evaluation batches made by length carry ``pair_index``: DDK's ``eval_pairs`` are the first pairs in hash
    order (a random subset), wherever their batch; batches without it are read in order."""
    import torch

    from raykd.distill.methods import first_pairs

    by_length = [{"q_input_ids": torch.zeros(3, 4 + i, dtype=torch.long), "department": torch.tensor([0, 1, 2]),
                  "pair_index": torch.tensor(idx)} for i, idx in enumerate(([5, 0, 8], [2, 7, 1], [3, 6, 4]))]
    got = list(first_pairs(by_length, 4))
    assert sorted(int(i) for b in got for i in b["pair_index"]) == [0, 1, 2, 3]
    assert [b["q_input_ids"].shape for b in got] == [(1, 4), (2, 5), (1, 6)]
    assert [b["department"].tolist() for b in got] == [[1], [0, 2], [0]]
    plain = [{"q_input_ids": torch.zeros(3, 4)} for _ in range(3)]
    assert len(list(first_pairs(plain, 4))) == 2
