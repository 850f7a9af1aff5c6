"""The causal-LM family end to end without Ray: the template and collation, one training step of every
causal method on tiny LLaMA / Qwen2 / GPT-2 models (loss finite, gradients reach the student), vocab
padding, token-count normalisation in a method, on-policy generation, and the causal metrics against
values written out here (a metric must be able to fail: chance for a constant model, the vocabulary
size as the perplexity of a uniform one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raykd.metrics import causal as CM
from raykd.data.template import PLAIN, causal_template
from raykd.data.tokenizer import train_bpe
from raykd.distill.methods import build_method, make_inputs
from raykd.models.families import TeacherShape, family
from raykd.models.student import build_student, enable_checkpointing

pytestmark = pytest.mark.unit
from tests.helpers.tiny_causal import BOS, EOS, PAD, TEMPLATE, TOKENS, VOCAB  # noqa: E402
from tests.helpers.tiny_causal import causal_batch as _batch  # noqa: E402

CAUSAL_METHODS = {"sft": {}, "kd": {"divergence": "skew_kl", "temperature": 2.0, "kd_weight": 0.5},
                  "gkd": {"beta": 0.3, "lmbda": 1.0, "max_new_tokens": 4}, "feature_align": {},
                  "structural": {"projection_dim": 16}, "minillm": {}, "no_distill": {}, "uld": {"uld_weight": 0.5},
                  "gold": {"gold_weight": 0.5}}


def test_template_and_collate_mark_the_response_tokens_only():
    batch, q, a = _batch()
    for i in range(len(q)):
        n = int(batch["attention_mask"][i].sum())
        seq = batch["input_ids"][i, :n].tolist()
        assert seq == [BOS, 5, *q[i], 6, 7, *a[i], EOS]
        resp = batch["response_mask"][i, :n].tolist()
        assert resp == [0] * (len(q[i]) + 4) + [1] * (len(a[i]) + 1)
        assert batch["response_mask"][i, n:].sum() == 0
    inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=family("causal_lm"))
    # the logits at p predict p + 1: the chosen positions are those just before each response token
    assert torch.equal(inputs["chosen"][:, :-1], batch["response_mask"][:, 1:].bool())
    assert not inputs["chosen"][:, -1].any()
    labels = family("causal_lm").labels_at(inputs["ids"], inputs["chosen"])
    assert torch.equal(labels, batch["input_ids"][batch["response_mask"].bool()])
    # specials carried by the shards' ids are stripped from the turns
    assert TEMPLATE.prompt([BOS, 9, EOS]) == [BOS, 5, 9, 6, 7]


def test_plain_and_chat_templates_of_a_trained_bpe_tokenizer():
    tok = train_bpe(["患者：头痛三天了", "医生：建议休息，多喝水", "hello world"] * 20, 300)
    t = causal_template(tok)
    assert t.kind == "plain" and t.eos == tok.eos_token_id and t.pad == tok.pad_token_id
    assert tok.decode(list(t.prefix), skip_special_tokens=True) == PLAIN[0]
    assert tok.decode(list(t.middle)) == PLAIN[1] and t.prefix[0] == tok.bos_token_id and t.suffix == (tok.eos_token_id,)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    c = causal_template(tok)
    assert c.kind == "chat" and c.suffix[-1] == tok.eos_token_id
    q, a = tok("头痛", add_special_tokens=False)["input_ids"], tok("休息", add_special_tokens=False)["input_ids"]
    text = tok.decode(c.prompt(q) + c.response(a))
    assert text.startswith("<s>user: 头痛\n<s>assistant: 休息") and text.endswith("</s>")
    with pytest.raises(ValueError, match="eos"):
        tok2 = train_bpe(["abc"] * 5, 270)
        tok2.eos_token = None
        causal_template(tok2)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("name", sorted(CAUSAL_METHODS))
def test_one_training_step_of_every_causal_method(arch, name):
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, arch), VOCAB, PAD, BOS, EOS).eval()
    student = build_student(teacher, 2, aggregation=name == "structural")
    method = build_method(name, student, teacher.config, n_departments=1, seed=0, **CAUSAL_METHODS[name])
    method.train()
    batch, _, _ = _batch()
    inputs = make_inputs(batch, TOKENS, corrupt=method.uses_mlm, vocab_size=VOCAB, family=fam)
    targets = method.teacher_targets(teacher, inputs)
    out = method(inputs, targets)
    assert math.isfinite(float(out["loss"])) and float(out["loss"]) > 0
    out["loss"].backward()
    grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    if name == "gkd":  # λ = 1: every batch's responses were sampled from the student
        assert method.generated["student"] == 1 and inputs["num_tokens"] is None


@pytest.mark.parametrize("lmbda,has_ce", [(1.0, False), (0.0, True)])
def test_gkd_cross_entropy_only_on_responses_that_are_not_the_students_own_samples(lmbda, has_ce):
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    method = build_method("gkd", build_student(teacher, 2), teacher.config, lmbda=lmbda, ce_weight=0.5,
                          max_new_tokens=4, seed=0).train()
    batch, _, _ = _batch()
    inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    out = method(inputs, method.teacher_targets(teacher, inputs))
    assert ("ce" in out) is has_ce
    if has_ce:
        assert float(out["loss"]) == pytest.approx(float(out["jsd"]) + 0.5 * float(out["ce"]), rel=1e-6)


def test_logits_compared_over_the_tokenizers_vocabulary_when_embeddings_are_padded():
    """A student whose embedding matrix is padded beyond the tokenizer (as 151,936 vs 152,064 rows)
    is distilled over the tokenizer's real vocabulary: padding rows never enter the divergence."""
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    padded = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), VOCAB + 14, PAD, BOS, EOS)
    from raykd.models.student import Student

    method = build_method("kd", Student(padded), teacher.config)
    method.vocab = VOCAB
    batch, _, _ = _batch()
    inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    targets = method.teacher_targets(teacher, inputs)
    out = method(inputs, targets)
    logits = padded(input_ids=inputs["ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]][:, :VOCAB]
    lt = torch.log_softmax(targets["logits"], -1)
    ls = torch.log_softmax(logits, -1)
    assert float(out["kd"]) == pytest.approx(float((lt.exp() * (lt - ls)).sum(-1).mean()), rel=1e-5)


def test_sft_with_num_tokens_sums_over_micro_batches_to_the_big_batch_gradient():
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    method = build_method("sft", build_student(teacher, 2), teacher.config)
    batch, _, _ = _batch(rows=6, seed=3)
    full = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    method(full, {})["loss"].backward()
    g_full = [p.grad.clone() for p in method.parameters() if p.grad is not None]
    method.zero_grad()
    n = int(batch["response_mask"].sum())
    for sl in (slice(0, 2), slice(2, 6)):
        part = make_inputs({k: v[sl] for k, v in batch.items()}, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
        part["num_tokens"] = n / 2  # the loop's convention: global count / (world × grad_accum); loss ÷ grad_accum
        (method(part, {})["loss"] / 2).backward()
    g_acc = [p.grad for p in method.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_acc, g_full))


def test_selection_accuracy_ties_and_chance():
    assert CM.selection_accuracy([[1.0, 0.0, 0.0]], [0]) == 1.0
    assert CM.selection_accuracy([[0.0, 1.0, 0.0]], [0]) == 0.0
    assert CM.selection_accuracy(np.zeros((7, 5)), [0] * 7) == pytest.approx(0.2)  # a constant model: chance
    assert CM.selection_accuracy([[2.0, 2.0, 1.0]], [1]) == 0.5


def test_rouge_l_and_lcs_hand_values():
    assert CM.lcs_length("ABCBDAB", "BDCABA") == 4
    assert CM.rouge_l("头痛 休息", "头痛，多休息") == pytest.approx(2 * (4 / 4) * (4 / 6) / (4 / 4 + 4 / 6))
    assert CM.rouge_l("", "abc") == 0.0 and CM.rouge_l("xyz", "abc") == 0.0 and CM.rouge_l("abc", "abc") == 1.0


class _Uniform(torch.nn.Module):
    """A causal LM whose logits are all zero: every token has probability 1/V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) * self.w)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size_and_its_answer_accuracy_is_chance():
    prompts = [[1, 5, 9, 6], [1, 5, 10, 11, 6]]
    responses = [[12, 13, 2], [14, 2]]
    s, n = CM.score_pairs(_Uniform(VOCAB), prompts, responses, PAD)
    assert n.tolist() == [3, 2]
    assert CM.perplexity(-float(s.sum()), int(n.sum())) == pytest.approx(VOCAB, rel=1e-6)
    per = (s / n).reshape(1, 2)
    assert CM.selection_accuracy(per, [0]) == pytest.approx(0.5)


def test_chance_and_retained_accuracy_above_chance_of_an_untrained_student_is_near_zero():
    """An untrained tiny LLaMA picks answers among 5 candidates at chance: its plain retained accuracy
    (student ÷ teacher) sits at chance ÷ teacher, far from 0; the chance-corrected one near 0."""
    torch.manual_seed(0)
    model = family("causal_lm").build(TeacherShape(layers=2, hidden=32, heads=4, intermediate=64, arch="llama"),
                                      VOCAB, PAD, BOS, EOS).eval()
    g = np.random.default_rng(0)
    questions, k = 400, 5
    prompts = [[BOS, 5, *g.integers(8, VOCAB, size=4).tolist(), 6] for _ in range(questions)]
    flat_p = [p for p in prompts for _ in range(k)]
    flat_r = [[*g.integers(8, VOCAB, size=int(g.integers(2, 6))).tolist(), EOS] for _ in flat_p]
    s, n = CM.score_pairs(model, flat_p, flat_r, PAD)
    rows = (s / n).reshape(questions, k)
    rows[:40, 4] = -np.inf  # some questions have only 4 candidates: chance is the mean of 1/k
    truth = g.integers(0, 4, size=questions)
    chance = CM.selection_chance([4] * 40 + [5] * 360)
    assert chance == pytest.approx((360 / 5 + 40 / 4) / 400)
    student = CM.selection_accuracy(rows, truth)
    teacher = 0.6
    assert student / teacher > 0.25  # the plain ratio "retains" a third of the teacher untrained
    assert abs(CM.retained_above_chance(student, teacher, chance)) < 0.1
    assert CM.retained_above_chance(teacher, teacher, chance) == pytest.approx(1.0)
    assert CM.retained_above_chance(0.2, 0.2, 0.2) != CM.retained_above_chance(0.2, 0.2, 0.2)  # NaN: no margin


def test_a_student_spec_with_another_tokenizer_stops_before_ray_naming_both(synth_prepared, tmp_path):
    from raykd.errors import RaykdError
    from raykd.ray_layer.inputs import check_student_matches_data

    _, prepared, manifest = synth_prepared  # WordPiece, trained on the generated corpus
    fam = family("causal_lm")
    other = train_bpe(["患者：头痛三天了", "医生：建议休息"] * 10, 300)
    student = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), len(other), other.pad_token_id)
    student.save_pretrained(tmp_path / "s")
    other.save_pretrained(tmp_path / "s")
    with pytest.raises(RaykdError) as e:
        check_student_matches_data(str(tmp_path / "s"), None, str(prepared), manifest)
    msg = str(e.value)
    assert "\n" not in msg and f"{len(other):,} tokens" in msg and f"{manifest['tokenizer']['vocab_size']:,} tokens" in msg
    # the data's own tokenizer with an embedding matrix padded beyond it: accepted
    from transformers import AutoTokenizer

    same = AutoTokenizer.from_pretrained(str(prepared / "tokenizer"))
    padded = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), len(same) + 64, same.pad_token_id)
    padded.save_pretrained(tmp_path / "p")
    same.save_pretrained(tmp_path / "p")
    check_student_matches_data(str(tmp_path / "p"), None, str(prepared), manifest)
    small = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), 100, 0)
    small.save_pretrained(tmp_path / "q")
    with pytest.raises(RaykdError, match="smaller than the data's tokenizer"):
        check_student_matches_data(str(tmp_path / "q"), None, str(prepared), manifest)


def test_token_groups_give_every_micro_batch_the_steps_token_count():
    """The loop's step grouping: each micro-batch gets (the step's counted tokens) / (world × accum),
    steps aligned to the micro-steps already done (a step spanning two epochs is grouped as it runs)."""
    from raykd.ray_layer.loop import token_groups

    fam = family("causal_lm")
    batches = [{"response_mask": torch.ones(1, n)} for n in (3, 5, 2, 4, 6)]
    out = [b["num_tokens"] for b in token_groups(batches, fam, grad_accum=2, world=1, micro=0)]
    assert out == [4.0, 4.0, 3.0, 3.0, 3.0]  # steps (3+5), (2+4), then a lone last micro-batch (6) / 2
    again = [{"response_mask": torch.ones(1, n)} for n in (3, 5, 2)]
    out = [b["num_tokens"] for b in token_groups(again, fam, grad_accum=2, world=1, micro=1)]
    assert out == [1.5, 3.5, 3.5]  # one micro-step of the step done in the previous epoch
    masked = [{"q_input_ids": torch.ones(1, 3)}]
    assert "num_tokens" not in next(token_groups(masked, family("masked_lm"), 2, 1, 0))


@pytest.mark.parametrize("name", ["sft", "kd", "feature_align", "gkd", "minillm", "uld", "gold"])
def test_a_chunked_training_step_equals_the_plain_one(name):
    """Above train.chunked_loss_tokens the logit terms run chunk by chunk from the trunks' hidden states
    and the heads: the same loss terms and the same gradients as with the full logits."""
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    # gold with one tokenizer and its hybrid split is a pure JSD of a student cut from this teacher (~4e-4, where
    # fp32 summation order alone moves it 1e-5): its sorted-L1 form here; the hybrid's chunked form is tested
    # against the plain one in tests/unit/test_gold.py
    kw = {"kd": {"divergence": "jsd", "temperature": 2.0}, "feature_align": {"dynamic_weights": False},
          "gold": {"hybrid": False}}.get(name, {})
    runs = []
    for chunk in (0, 3):
        torch.manual_seed(1)
        method = build_method(name, build_student(teacher, 2), teacher.config, seed=0, **kw)
        method.vocab, method.chunk_tokens = VOCAB, chunk
        batch, _, _ = _batch(rows=5, seed=2)
        inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
        out = method(inputs, method.teacher_targets(teacher, inputs))
        assert inputs["chunked"] == (chunk > 0)
        out["loss"].backward()
        runs.append(({k: float(v) for k, v in out.items()},
                     {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}))
    (plain, g_plain), (chunked, g_chunked) = runs
    assert plain.keys() == chunked.keys()
    for k in plain:
        assert chunked[k] == pytest.approx(plain[k], rel=1e-5), k
    assert g_plain.keys() == g_chunked.keys()
    for n in g_plain:
        assert float((g_chunked[n] - g_plain[n]).norm()) <= 1e-4 * float(g_plain[n].norm()) + 1e-8, n


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.4, rng.random(5000) < 0.4
    lo_s, hi_s = CM.bootstrap_ci(lambda i: small[i].mean(), len(small), 300, 1)
    lo_l, hi_l = CM.bootstrap_ci(lambda i: large[i].mean(), len(large), 300, 1)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert CM.selection_credit([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], [0, 2]).tolist() == [0.5, 0.0]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("name", ["sft", "kd", "feature_align", "gkd", "minillm", "structural", "uld", "gold"])
def test_every_causal_method_runs_on_the_meta_device(name, chunked, meta_nonzero, monkeypatch):
    """Forward + backward with every tensor on `meta` (plain and chunked logit terms): a tensor a
    method creates on the CPU meets a meta tensor and raises, as it would meet a CUDA one."""
    import transformers.masking_utils as mu

    monkeypatch.setattr(mu, "_ignore_causal_mask_sdpa", lambda *a, **k: False, raising=False)
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    kw = {"structural": {"projection_dim": 16}, "feature_align": {"dynamic_weights": True}}.get(name, {})
    method = build_method(name, build_student(teacher, 2, aggregation=name == "structural"), teacher.config,
                          n_departments=1, seed=0, **kw).train()
    method.vocab, method.chunk_tokens = VOCAB, 3
    batch, _, _ = _batch()
    inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    method.to("meta")
    teacher.to("meta")
    inputs = {k: (v.to("meta") if torch.is_tensor(v) else v) for k, v in inputs.items()}
    inputs["chunked"] = chunked and method.chunkable  # decided before the move (the count needs the host)
    method.set_progress(0.0)
    out = method(inputs, method.teacher_targets(teacher, inputs))
    assert out["loss"].device.type == "meta"
    out["loss"].backward()


def test_precision_auto_is_bf16_for_causal_and_fp16_with_a_scaler_for_encoders_on_cuda():
    from raykd.train.precision import precision_policy

    cuda = torch.device("cuda")
    assert precision_policy(cuda, "auto", "causal_lm").name == "bf16" and not precision_policy(cuda, "auto",
                                                                                            "causal_lm").scaler
    assert precision_policy(cuda, "auto", "masked_lm").name == "fp16" and precision_policy(cuda, "auto").scaler
    assert precision_policy(cuda, "fp16", "causal_lm").name == "fp16"  # on request
    assert precision_policy(torch.device("cpu"), "auto", "causal_lm").name == "fp32"


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS).eval()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        student = build_student(teacher, 2)
        if ckpt:
            enable_checkpointing(student.mlm)
        method = build_method("kd", student, teacher.config).train()
        batch, _, _ = _batch()
        inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
        method(inputs, method.teacher_targets(teacher, inputs))["loss"].backward()
        grads.append([p.grad.clone() for p in method.parameters() if p.grad is not None])
    assert any(getattr(m, "gradient_checkpointing", False) for m in student.mlm.modules())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("chunked", [False, True])
def test_a_bf16_teacher_serves_every_causal_method_under_bf16_autocast(chunked):
    """What a trial on CUDA does (``precision.frozen_on`` + bf16 autocast), run here with CPU's bf16:
    the student is cut from the fp32 teacher first, the teacher then holds bf16 weights and no
    gradients, and every method's step runs (no dtype mix-up) with a finite loss and fp32 student
    gradients; an encoder teacher keeps fp32 weights."""
    from raykd.evaluation.causal_lm import in_dtype_of
    from raykd.train.precision import Precision, frozen_on

    bf16 = Precision("cpu", torch.bfloat16, False)
    fam = family("causal_lm")
    for name in sorted(CAUSAL_METHODS):
        torch.manual_seed(0)
        teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS)
        student = build_student(teacher, 2, aggregation=name == "structural")
        frozen_on(teacher, torch.device("cpu"), bf16, "causal_lm")
        assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
        assert not any(p.requires_grad for p in teacher.parameters())
        assert {p.dtype for p in student.parameters()} == {torch.float32}
        params = {**CAUSAL_METHODS[name], **({"lmbda": 0.0} if name == "gkd" else {})}
        method = build_method(name, student, teacher.config, n_departments=1, seed=0, **params)
        method.chunk_tokens = 1 if chunked else 0
        method.train()
        batch, _, _ = _batch()
        inputs = make_inputs(batch, TOKENS, vocab_size=VOCAB, family=fam)
        with bf16.autocast():
            out = method(inputs, method.teacher_targets(teacher, inputs))
        assert math.isfinite(float(out["loss"].detach())), name
        out["loss"].backward()
        grads = [p.grad for p in method.student.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads), name
    # latencies are compared in one dtype: a bf16 copy of the fp32 student, the student itself untouched
    timed = in_dtype_of(student.mlm, teacher)
    assert next(timed.parameters()).dtype == torch.bfloat16 and next(student.mlm.parameters()).dtype == torch.float32
    assert in_dtype_of(student.mlm, student.mlm) is student.mlm
    encoder = family("masked_lm").build(TeacherShape(2, 32, 2, 64, 64, None), VOCAB, PAD, None, None)
    frozen_on(encoder, torch.device("cpu"), bf16, "masked_lm")
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}


def test_answers_are_scored_without_dropout_and_the_mode_is_restored():
    """GPT-2 has dropout 0.1: a student evaluated in training mode would score differently each call."""
    torch.manual_seed(0)
    model = family("causal_lm").build(TeacherShape(2, 32, 2, 64, 64, "gpt2"), VOCAB, PAD, BOS, EOS).train()
    prompts = [[BOS, 7, 8, 9], [BOS, 10, 11]]
    responses = [[12, 13, EOS], [14, 15, 16, EOS]]
    first, second = CM.score_pairs(model, prompts, responses, PAD), CM.score_pairs(model, prompts, responses, PAD)
    assert np.array_equal(first[0], second[0]) and model.training
    model.eval()
    assert np.array_equal(CM.score_pairs(model, prompts, responses, PAD)[0], first[0])
