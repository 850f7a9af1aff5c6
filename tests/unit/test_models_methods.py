"""Models, modules, weighting and every registered method on tiny models (shapes, semantics, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.distill.methods import build_method, make_inputs
from raykd.distill.weighting import FixedWeights, GradNormWeights
from raykd.models.modules import DomainAwareFusion, MultiGranularityAggregation, StructuralProjection
from raykd.models.student import build_student
from raykd.models.families.masked_lm import mask_tokens
from raykd.registry import METHODS
from tests.helpers.tiny import TOK, VOCAB, tiny_batch, tiny_teacher

pytestmark = pytest.mark.unit
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
    f.set_anneal(0.0)
    assert torch.equal(f(e, z, zm, dept), e)  # annealed: the student runs alone
    f.set_anneal(1.0)
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
    assert float(w["a"]) == pytest.approx(2 / 11, rel=1e-4) and float(w["b"]) == pytest.approx(20 / 11, rel=1e-4)


def test_registry_lists_every_method_and_suggests_names():
    assert METHODS.names() == sorted(["structural", "no_distill", "tinybert", "minilm", "minillm", "gkd", "ddk", "sft", "kd", "feature_align",
                                      "mixkd", "distillseq", "uld", "gold"])
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


ALL_METHODS = ["structural", "no_distill", "tinybert", "minilm", "minillm", "gkd", "ddk", "mixkd", "distillseq"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_runs_on_the_meta_device(name, meta_nonzero, monkeypatch):
    """One forward + backward and a gradient-aware weighting update with every tensor on `meta`: a
    tensor a method creates on the CPU meets a meta tensor and raises, as it would meet a CUDA one."""
    import transformers.masking_utils as mu

    # transformers asks the host whether an attention mask is all ones (a shortcut, fine on CUDA, not on meta)
    monkeypatch.setattr(mu, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False)
    torch.manual_seed(0)
    teacher = tiny_teacher().eval()
    student = build_student(teacher, 2, aggregation=name == "structural")
    method = build_method(name, student, teacher.config, n_departments=3, depth=2, projection_dim=16,
                          dynamic_weights=True).train()
    method.weighting.every = 1
    inputs = make_inputs(tiny_batch(), TOK, torch.Generator().manual_seed(1), corrupt=method.uses_mlm, vocab_size=VOCAB)
    method.to("meta")
    teacher.to("meta")
    inputs = {k: (v.to("meta") if torch.is_tensor(v) else v) for k, v in inputs.items()}
    method.set_progress(0.0)
    out = method(inputs, method.teacher_targets(teacher, inputs))
    assert out["loss"].device.type == "meta"
    out["loss"].backward()
    if len(out) > 2:  # more than one term: the weighting updated on meta tensors
        assert all(w.device.type == "meta" for w in method.weighting.weights.values())


def test_samplers_transform_one_batch_with_tokenizer_special_ids():
    from raykd.data.sampling import build_sampler

    batch = {"pair_id": np.array(["a", "b"], dtype=object),
             "q_input_ids": np.array([np.array([2, 100, 7, 8, 3]), np.array([2, 9, 3])], dtype=object),
             "a_input_ids": np.array([np.array([2, 10, 11, 3]), np.array([2, 12, 3])], dtype=object)}
    noisy = build_sampler("random_masked", None, 0, prob=1.0, mask_id=103, special_ids=(0, 2, 3, 100, 103))(batch)
    assert noisy["q_input_ids"][0].tolist() == [2, 100, 103, 103, 3]  # [UNK]=100 is special here: kept


def test_mask_tokens_never_draws_a_special_token_as_the_random_replacement():
    from raykd.models.families.masked_lm import mask_tokens

    ids = torch.randint(5, 50, (64, 32))
    specials = (0, 1, 2, 3, 4, 17, 30)
    out, chosen = mask_tokens(ids, torch.ones_like(ids), 4, 50, 1.0, torch.Generator().manual_seed(0), specials)
    replaced = chosen & (out != 4) & (out != ids)
    assert replaced.sum() > 50
    assert not torch.isin(out[replaced], torch.tensor(specials)).any()


def test_method_params_table_matches_the_methods_and_refuses_unknown_ones(tmp_path):
    from raykd import config as C
    from raykd.distill.methods import method_params

    import inspect

    from raykd.distill import settings as S
    from raykd.registry import METHODS

    for name in ALL_METHODS:  # the declaration and the constructor take the same settings
        takes = [p for p in list(inspect.signature(METHODS.get(name).__init__).parameters)[3:]
                 if p not in S.STUDY_SETTINGS]
        assert set(takes) == set(method_params(name)) - set(S.TRIAL_SETTINGS), name
        for key, f in S.declared(name).items():  # every declared default is the constructor's default
            if key in takes:
                assert inspect.signature(METHODS.get(name).__init__).parameters[key].default == f.default, (name, key)
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match="unknown parameter.*betta.*allowed: beta, temperature"):
        build_method("gkd", build_student(teacher, 2), teacher.config, betta=0.3)
    f = tmp_path / "x.yaml"
    f.write_text("method: {name: gkd, params: {betta: 0.3}}\n")
    with pytest.raises(C.ConfigError, match=r"x.yaml: method.params.betta: .*did you mean 'beta'.*allowed: beta"):
        C.load_config(f)
    f.write_text("method: {name: gkd, params: {beta: 1.5}}\n")
    with pytest.raises(C.ConfigError, match=r"method.params.beta: 1.5 must be in \[0, 1\]"):
        C.load_config(f)
    f.write_text("space: {method: {grid: [gkd, tinybert]}}\nmethod: {name: gkd, params: {beta: 0.2}}\n"
                 "search: {algorithm: grid}\n")
    with pytest.raises(C.ConfigError, match="space.method: value 'tinybert' is invalid.*takes no 'beta'"):
        C.load_config(f)


def test_ddk_samples_departments_where_the_student_lags_more():
    torch.manual_seed(0)
    teacher = tiny_teacher().eval()
    student = build_student(teacher, 2)
    m = build_method("ddk", student, teacher.config, n_departments=2, smoothing=1.0, tau=0.1)
    batch = tiny_batch()
    batch["department"] = torch.tensor([0, 0, 1, 1])
    m.update_domain_weights(teacher, [batch], TOK, VOCAB)
    w = m.domain_weights()
    assert w.shape == (3,) and float(w.mean()) == pytest.approx(1.0, rel=1e-5)
    d = m.discrepancy
    assert (w[0] > w[1]) == (d[0] > d[1])  # more weight where the student lags the teacher more
    m.dept_weight.copy_(torch.tensor([3.0, 0.0, 0.0]))
    drawn = m.resample_batch(batch, torch.Generator().manual_seed(0))
    assert drawn["department"].tolist() == [0] * len(drawn["department"])


@pytest.mark.parametrize("d_shared", [16, 32, 64])
def test_the_teacher_side_projection_stays_orthonormal_under_adamw_with_weight_decay(d_shared):
    """The teacher side of a StructuralProjection (width 32 → d') keeps orthonormal rows (d' < 32),
    is orthogonal (d' = 32) or keeps orthonormal columns (d' > 32) while AdamW with weight decay trains
    it: it can rotate the target but never shrink it (torch's householder map collapsed to zero)."""
    from raykd.models.modules import StructuralProjection

    torch.manual_seed(0)
    proj = StructuralProjection(8, 32, d_shared)
    opt = torch.optim.AdamW(proj.parameters(), lr=5e-4, weight_decay=0.01)
    x_s, x_t = torch.randn(64, 8), torch.randn(64, 32)
    for _ in range(40):
        zs, zt = proj(x_s, x_t)
        loss = (zs - zt).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(proj.parameters(), 1.0)
        opt.step()
    w = proj.teacher.weight.detach()
    gram = w @ w.T if d_shared <= 32 else w.T @ w
    assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4), float((gram - torch.eye(gram.shape[0])).abs().max())
    norms = proj(x_s, x_t)[1].norm(dim=-1) / x_t.norm(dim=-1)
    assert float(norms.max()) <= 1 + 1e-4 and (d_shared < 32 or torch.allclose(norms, torch.ones_like(norms), atol=1e-4))
