"""Models, modules, weighting and every registered method on tiny models (shapes, semantics, gradients)."""

from __future__ import annotations

import pytest
import torch

from raykd.distill.methods import TokenIds, build_method, make_inputs
from raykd.distill.weighting import FixedWeights, GradNormWeights
from raykd.models.modules import DomainAwareFusion, MultiGranularityAggregation, StructuralProjection
from raykd.models.student import build_student
from raykd.models.teacher import TeacherShape, build_teacher, mask_tokens
from raykd.registry import METHODS

pytestmark = pytest.mark.unit
TOK = TokenIds(pad=0, cls=2, sep=3, mask=4, unk=1)
VOCAB = 60


def tiny_teacher(layers=4, hidden=32):
    return build_teacher(TeacherShape(layers=layers, hidden=hidden, heads=4, intermediate=64, max_position=64), VOCAB)


def tiny_batch(b=4, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    def side():
        ids = torch.randint(5, VOCAB, (b, t), generator=g)
        ids[:, 0] = TOK.cls
        lengths = torch.randint(5, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids[torch.arange(b), lengths - 1] = TOK.sep
        return ids * mask, mask
    q, qm = side()
    a, am = side()
    return {"q_input_ids": q, "q_attention_mask": qm, "a_input_ids": a, "a_attention_mask": am,
            "department": torch.tensor([0, 1, -1, 2])[:b]}


def test_student_is_initialised_from_mapped_teacher_layers():
    t = tiny_teacher()
    s = build_student(t, 2)
    assert s.config.num_hidden_layers == 2
    for i, g in ((0, 1), (1, 3)):
        assert torch.equal(s.mlm.base_model.encoder.layer[i].output.dense.weight,
                           t.base_model.encoder.layer[g].output.dense.weight)
    assert torch.equal(s.mlm.get_input_embeddings().weight, t.get_input_embeddings().weight)
    narrow = build_student(t, 2, hidden=16, heads=2)
    assert narrow.config.hidden_size == 16
    h, y = narrow.encode(torch.randint(5, VOCAB, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    assert h.shape == (3, 7, 16) and y.shape == (3, 16)


def test_projection_fusion_aggregation_shapes_and_semantics():
    p = StructuralProjection(16, 32, 8)
    s, t = p(torch.randn(2, 5, 16), torch.randn(2, 5, 32))
    assert s.shape == t.shape == (2, 5, 8)
    w = p.teacher.weight
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)  # orthonormal rows: no collapse
    f = DomainAwareFusion(16, 8, n_departments=3).train()
    e, z = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    zm, dept = torch.ones(2, 6), torch.tensor([1, -1])
    assert not torch.allclose(f(e, z, zm, dept), e)
    f.anneal.fill_(0.0)
    assert torch.equal(f(e, z, zm, dept), e)  # annealed: the student runs alone
    f.anneal.fill_(1.0)
    assert torch.equal(f.eval()(e, z, zm, dept), e)  # never in eval
    agg = MultiGranularityAggregation(16)
    h = torch.randn(3, 6, 16)
    m = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    v = agg.views(h, m)
    assert v.shape == (3, 5, 16)
    assert torch.allclose(v[1, 0], h[1, :3].mean(0), atol=1e-6)  # token view = masked mean
    assert torch.allclose(v[1, 1], (h[1, 0:2].mean(0) + h[1, 1:3].mean(0)) / 2, atol=1e-6)  # width-2 windows
    assert torch.allclose(v[2, 3], h[2, 0], atol=1e-6)  # too short for width 3 → token view
    assert torch.equal(v[0, 4], h[0, 0])  # sentence view = [CLS]
    y = agg(h, m)
    assert y.shape == (3, 16)
    h2 = h.clone()
    h2[1, 3:] = 99.0  # padding never leaks into Y
    assert torch.allclose(agg(h2, m)[1], y[1], atol=1e-5)


def test_mask_tokens_only_real_non_special_tokens():
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]] * 200)
    mask = (ids != 0).long()
    out, chosen = mask_tokens(ids, mask, 4, VOCAB, 0.5, torch.Generator().manual_seed(0), TOK.special)
    assert not chosen[:, [0, 4, 5, 6]].any() and chosen[:, 1:4].float().mean() == pytest.approx(0.5, abs=0.06)
    assert (out[chosen] == 4).float().mean() == pytest.approx(0.8, abs=0.06)


def test_fixed_and_gradnorm_weighting():
    x = torch.ones(3, requires_grad=True)
    terms = {"a": (x * 10).sum(), "b": x.sum()}
    assert float(FixedWeights({"a": 0.5}).combine(terms)) == pytest.approx(15 + 3)
    gw = GradNormWeights(every=1, momentum=1.0, alpha=0.0)
    gw.combine(terms, [x])
    w = gw.current(["a", "b"])
    # α = 0: weights equalise gradient norms: w ∝ 1/G, G_a = 10·G_b → w_a ≈ 2/11, w_b ≈ 20/11
    assert w["a"] == pytest.approx(2 / 11, rel=1e-4) and w["b"] == pytest.approx(20 / 11, rel=1e-4)


def test_registry_lists_every_method_and_suggests_names():
    assert METHODS.names() == sorted(["structural", "no_distill", "tinybert", "minilm", "minillm", "gkd", "ddk",
                                      "mixkd", "distillseq"])
    with pytest.raises(Exception, match="did you mean 'tinybert'"):
        METHODS.get("tinybrt")


@pytest.mark.parametrize("name", ["structural", "no_distill", "tinybert", "minilm", "minillm", "gkd", "ddk", "mixkd",
                                  "distillseq"])
def test_every_method_gives_finite_terms_and_gradients(name):
    torch.manual_seed(0)
    teacher = tiny_teacher().eval()
    student = build_student(teacher, 2, aggregation=name == "structural")
    method = build_method(name, student, teacher.config, n_departments=3, depth=2, projection_dim=16).train()
    inputs = make_inputs(tiny_batch(), TOK, torch.Generator().manual_seed(1), corrupt=method.uses_mlm, vocab_size=VOCAB)
    out = method(inputs, method.teacher_targets(teacher, inputs))
    assert set(out) > {"loss"} and all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


def test_structural_depth_and_switches():
    teacher = tiny_teacher()
    student = build_student(teacher, 2, aggregation=True)
    m = build_method("structural", student, teacher.config, depth=1, projection_dim=8, relation=False,
                     contrastive=False, fusion=False)
    assert m.teacher_layers() == [2] and m.fusion is None
    inputs = make_inputs(tiny_batch(), TOK)
    assert set(m(inputs, m.teacher_targets(teacher, inputs))) == {"loss", "align", "sentence"}
    with pytest.raises(Exception, match="depth 3"):
        build_method("structural", student, teacher.config, depth=3)
