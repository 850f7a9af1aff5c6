"""Distillation across tokenizers, without Ray: ``uld_distance`` against a NumPy implementation written
here (softmax, sort descending, zero-pad the shorter vocabulary, Σ |·|), its chunked form, the alignment
of the two sides' response positions, one ``uld`` training step with a teacher of another vocabulary,
and the load-time refusal of every same-vocabulary objective when the declared tokenizers differ."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from raykd import config as C
from raykd.config.tokenizers import identify, tokenizer_mismatch
from raykd.data.collate import CausalCollate
from raykd.data.template import CausalTemplate
from raykd.data.tokenizer import train_bpe
from raykd.distill import losses as L
from raykd.distill.chunked import chunked_uld
from raykd.distill.cross_tokenizer import aligned_positions
from raykd.distill.methods import build_method, make_inputs
from raykd.models.families import TeacherShape, family
from raykd.models.student import build_student
from raykd.ray_layer.tune import main as tune_main
from tests.helpers.tiny_causal import BOS, EOS, PAD, TOKENS, VOCAB
from tests.helpers.tiny_causal import causal_batch

pytestmark = pytest.mark.unit
CAUSAL = "search_spaces/causal_smoke.yaml"


def np_uld(s: np.ndarray, t: np.ndarray, temperature: float = 1.0, mask=None, num_tokens=None) -> float:
    """ULD written out: per position, both softmaxes sorted descending, the shorter padded with zeros, the
    sum of absolute differences; the mean over counted positions (or the sum ÷ num_tokens)."""
    def sorted_probs(z):
        z = z / temperature
        p = np.exp(z - z.max(-1, keepdims=True))
        return -np.sort(-(p / p.sum(-1, keepdims=True)), axis=-1)

    ps, pt = sorted_probs(s.astype(np.float64)), sorted_probs(t.astype(np.float64))
    width = max(ps.shape[-1], pt.shape[-1])
    pad = lambda x: np.concatenate([x, np.zeros(x.shape[:-1] + (width - x.shape[-1],))], -1)  # noqa: E731
    d = np.abs(pad(ps) - pad(pt)).sum(-1)
    m = np.ones(d.shape) if mask is None else mask.astype(np.float64)
    return float((d * m).sum() / (num_tokens if num_tokens is not None else m.sum()))


@pytest.mark.parametrize("v_s,v_t", [(7, 11), (11, 7), (9, 9)])
def test_uld_distance_equals_the_written_out_formula(v_s, v_t):
    g = torch.Generator().manual_seed(v_s * 100 + v_t)
    s, t = torch.randn(3, 4, v_s, generator=g) * 2, torch.randn(3, 4, v_t, generator=g) * 2
    mask = torch.rand(3, 4, generator=g) > 0.4
    for kw in ({}, {"temperature": 2.5}, {"mask": mask}, {"mask": mask, "num_tokens": 17.0}):
        got = float(L.uld_distance(s.double(), t.double(), **kw))
        want = np_uld(s.numpy(), t.numpy(), kw.get("temperature", 1.0),
                      None if "mask" not in kw else mask.numpy(), kw.get("num_tokens"))
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12), kw


def test_uld_distance_hand_values_and_what_it_cannot_see():
    one_hot = torch.tensor([[50.0, 0.0, 0.0, 0.0]])  # ≈ [1, 0, 0, 0]
    two = torch.tensor([[0.0, 0.0]])  # [0.5, 0.5], padded to [0.5, 0.5, 0, 0]
    assert float(L.uld_distance(one_hot, two)) == pytest.approx(1.0, abs=1e-6)
    z = torch.randn(5, 13)
    assert float(L.uld_distance(z, z)) == pytest.approx(0.0, abs=1e-7)
    # it compares shapes of distributions, not which token is which: a permuted vocabulary is at distance 0
    assert float(L.uld_distance(z, z[:, torch.randperm(13)])) == pytest.approx(0.0, abs=1e-6)
    far = L.uld_distance(torch.tensor([[30.0] + [0.0] * 99]), torch.zeros(1, 3))
    assert 1.2 < float(far) <= 2.0
    s = torch.randn(4, 6, requires_grad=True)
    L.uld_distance(s, torch.randn(4, 9)).backward()
    assert float(s.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="positions"):
        L.uld_distance(torch.randn(3, 5), torch.randn(4, 5))


def test_chunked_uld_equals_the_plain_distance_in_value_and_gradients():
    torch.manual_seed(0)
    h_s, w_s, b_s = torch.randn(11, 8, requires_grad=True), torch.randn(20, 8, requires_grad=True), torch.randn(20)
    h_t, w_t = torch.randn(11, 6), torch.randn(33, 6)
    b_s.requires_grad_(True)
    mask = torch.rand(11) > 0.3
    plain = L.uld_distance(h_s @ w_s.T + b_s, h_t @ w_t.T, temperature=2.0, mask=mask)
    grads = torch.autograd.grad(plain, (h_s, w_s, b_s))
    chunked = chunked_uld(h_s, w_s, h_t, w_t, b_s=b_s, temperature=2.0, mask=mask, chunk_tokens=4)
    grads_c = torch.autograd.grad(chunked, (h_s, w_s, b_s))
    assert float(chunked) == pytest.approx(float(plain), rel=1e-5)
    for a, b in zip(grads, grads_c):
        assert float((a - b).norm()) <= 1e-5 * float(a.norm()) + 1e-8
    # the tokenizers' real vocabularies: entries beyond them are never compared
    cut = chunked_uld(h_s, w_s, h_t, w_t, b_s=b_s, vocab_s=15, vocab_t=30, chunk_tokens=4)
    assert float(cut) == pytest.approx(float(L.uld_distance((h_s @ w_s.T + b_s)[:, :15], (h_t @ w_t.T)[:, :30])),
                                       rel=1e-5)


def test_aligned_positions_pair_each_rows_first_common_response_positions():
    s = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)  # 3 and 2 task positions
    t = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # 2 and 3
    si, ti = aligned_positions(s, t)
    # student list: row 0 → 0, 1, 2; row 1 → 3, 4. teacher list: row 0 → 0, 1; row 1 → 2, 3, 4
    assert si.tolist() == [0, 1, 3, 4] and ti.tolist() == [0, 1, 2, 3]
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert aligned_positions(s, empty)[0].numel() == 0


T_VOCAB = 61  # the teacher's tokenizer: another size, other special ids
T_TEMPLATE = CausalTemplate(prefix=(3, 9), middle=(10,), suffix=(4,), strip=(5, 3, 4), eos=4, pad=5)


def _cross_batch(seed: int = 0):
    """A student batch and the teacher's tokenization of the 'same' pairs: other ids and lengths."""
    batch, q, a = causal_batch(rows=4, seed=seed)
    g = np.random.default_rng(seed + 7)
    tq = [list(g.integers(11, T_VOCAB, size=len(x) + int(g.integers(-1, 3)))) for x in q]
    ta = [list(g.integers(11, T_VOCAB, size=max(1, len(x) + int(g.integers(-1, 3))))) for x in a]
    batch["teacher"] = CausalCollate(T_TEMPLATE)({"q_input_ids": tq, "a_input_ids": ta})
    return batch


@pytest.mark.parametrize("chunk", [0, 3])
def test_a_uld_step_with_a_teacher_of_another_vocabulary(chunk):
    """The teacher reads its own tokenization (``teacher_inputs``); the ULD term equals the formula over
    response positions paired row by row; plain and chunked agree; gradients reach the student."""
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), T_VOCAB, 5, 3, 4).eval()
    base = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS)
    torch.manual_seed(1)
    method = build_method("uld", build_student(base, 2), teacher.config, seed=0, uld_weight=0.7, temperature=1.5)
    method.vocab, method.teacher_vocab, method.chunk_tokens = VOCAB, T_VOCAB, chunk
    inputs = make_inputs(_cross_batch(), TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    assert inputs["teacher_inputs"]["input_ids"].max() >= VOCAB  # ids only the teacher's vocabulary has
    inputs["num_tokens"] = float(inputs["chosen"].sum())
    out = method(inputs, method.teacher_targets(teacher, inputs))
    with torch.no_grad():
        s_logits = method.student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits
        t_in = inputs["teacher_inputs"]
        t_logits = teacher(input_ids=t_in["input_ids"], attention_mask=t_in["mask"]).logits
    total, count = 0.0, float(inputs["chosen"].sum())
    for r in range(s_logits.shape[0]):
        ps, pt = s_logits[r][inputs["chosen"][r]], t_logits[r][t_in["chosen"][r]]
        n = min(len(ps), len(pt))
        total += np_uld(ps[:n].numpy(), pt[:n].numpy(), 1.5) * n
    assert float(out["uld"]) == pytest.approx(total / count, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(out["ce"]) + 0.7 * float(out["uld"]), rel=1e-5)
    assert inputs["chunked"] == (chunk > 0)
    out["loss"].backward()
    assert float(method.student.mlm.get_input_embeddings().weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------ load-time refusal
def _load(path=CAUSAL, **sets):
    return C.load_config(path, C.parse_set([f"{k}={v}" for k, v in sets.items()]))


def test_same_vocabulary_objectives_are_refused_when_the_declared_tokenizers_differ():
    with pytest.raises(C.ConfigError) as e:
        _load(**{"teacher.tokenizer": "train:1000"})  # causal_smoke: method kd, data train-bpe:2000
    msg = str(e.value)
    assert "tokenizer" in msg and "train:1000" in msg and "train-bpe:2000" in msg and "uld" in msg and "'kd'" in msg
    for name in ("gkd", "minillm", "feature_align"):
        with pytest.raises(C.ConfigError, match="one tokenizer"):
            _load(**{"teacher.tokenizer": "train:1000", "method.name": name, "method.params": "{}", "space": "{}"})
    with pytest.raises(C.ConfigError, match=r"space\.method\.name: value 'kd'"):
        _load(**{"teacher.tokenizer": "train:1000", "method.name": "uld", "method.params": "{}",
                 "space": "{method.name: {choice: [uld, kd]}}"})
    with pytest.raises(C.ConfigError, match="teacher.cache: logits: the top-k logit cache"):
        _load(**{"teacher.tokenizer": "train:1000", "method.name": "uld", "method.params": "{}", "space": "{}",
                 "teacher.cache": "logits"})
    with pytest.raises(C.ConfigError, match="masked_lm study distils over one tokenizer"):
        _load("search_spaces/smoke.yaml", **{"teacher.tokenizer": "train:500"})
    ok = _load(**{"teacher.tokenizer": "train:1000", "method.name": "uld", "method.params": "{}",
                  "space": "{method.params.uld_weight: {choice: [0.5, 2.0]}}"})
    assert ok.method.name == "uld" and tokenizer_mismatch(ok) is not None
    same = _load(**{"teacher.tokenizer": "train-bpe:2000"})  # the data's own spec: one tokenizer, kd runs
    assert tokenizer_mismatch(same) is None


def test_searched_tokenizers_are_refused_and_a_compare_study_is_judged_by_its_contenders():
    for key in ("teacher.tokenizer", "data.tokenizer"):
        with pytest.raises(C.ConfigError, match=rf"space\.{key}: a study prepares its data and teacher for one pair"):
            _load(**{"space": f"{{{key}: {{choice: [train-bpe:2000, train:1000]}}}}"})
    # causal_losses.yaml keeps method.name kd at the top; its contenders decide (the top-level name is unused)
    cfg = _load("search_spaces/causal_losses.yaml", **{
        "teacher.tokenizer": "train:1000", "search.algorithm": "optuna", "experiment.seeds": "[0, 1]",
        "compare": "{methods: [uld, {uld: {temperature: 2.0}}], tune: {trials: 1}, against: method=uld, "
                   "metrics: [test/answer_accuracy]}", "space": "{lr: {loguniform: [1.0e-4, 1.0e-3]}}"})
    assert [k.label for k in C.compare_contenders(cfg, "x")] == ["uld", "uld[temperature=2.0]"]


def test_a_compare_study_with_a_same_vocabulary_contender_is_refused():
    with pytest.raises(C.ConfigError, match=r"compare\.methods\[1\].*'kd'.*tokenizer"):
        _load("search_spaces/causal_losses.yaml", **{"teacher.tokenizer": "train:1000",
                                                      "compare": "{methods: [uld, kd], tune: {trials: 1}, "
                                                                 "against: method=uld, metrics: [test/answer_accuracy]}",
                                                      "method.name": "uld", "method.params": "{}", "space": "{lr: "
                                                      "{loguniform: [1.0e-4, 1.0e-3]}}", "experiment.seeds": "[0, 1]"})


def test_saved_tokenizer_directories_are_told_apart_by_their_vocabulary(tmp_path):
    texts = ["头痛发热三天了，需要吃什么药？", "血压 140/90 mmHg, is it high?", "咳嗽 cough 🙂 两周"] * 30
    a, b = train_bpe(texts, 300), train_bpe([t[::-1] for t in texts], 300)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    ia, ib, ic = identify(str(tmp_path / "a")), identify(str(tmp_path / "b")), identify(str(tmp_path / "a_copy"))
    assert ia.fingerprint == ic.fingerprint != ib.fingerprint
    assert ia.vocab_size == len(a) and ia.special_ids == tuple(sorted(a.all_special_ids))
    cfg = _load(**{"data.tokenizer": str(tmp_path / "a"), "teacher.tokenizer": str(tmp_path / "a_copy")})
    assert tokenizer_mismatch(cfg) is None  # another path, the same tokenizer: kd is allowed
    with pytest.raises(C.ConfigError, match="tokenizer"):
        _load(**{"data.tokenizer": str(tmp_path / "a"), "teacher.tokenizer": str(tmp_path / "b")})
    with pytest.raises(C.ConfigError, match=r"teacher\.tokenizer: .*missing: no saved tokenizer"):
        _load(**{"teacher.tokenizer": str(tmp_path / "missing")})
    # one vocabulary, cased and uncased: two tokenizers (the same ids would mean other text)
    for name, lower in (("cased", False), ("uncased", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
        (tmp_path / name / "tokenizer_config.json").write_text(f'{{"do_lower_case": {str(lower).lower()}}}')
    assert identify(str(tmp_path / "cased")).fingerprint != identify(str(tmp_path / "uncased")).fingerprint
    assert identify("train-bpe:02000").fingerprint == identify("train-bpe:2000").fingerprint


def test_the_cli_refuses_kd_across_tokenizers_in_one_error_line_before_anything_runs(tmp_path, capsys):
    rc = tune_main(["--config", CAUSAL, "--storage", str(tmp_path / "exp"), "--set", "teacher.tokenizer=train:1000",
                    f"data.work_dir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "tokenizer" in lines[0]
    assert not (tmp_path / "exp").exists() and not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------ the data and the student
def test_a_student_with_its_own_tokenizer_copies_the_blocks_and_draws_its_embeddings_afresh():
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), T_VOCAB, 5, 3, 4)
    for v in (VOCAB, T_VOCAB):  # another size, and the same size (a row of the teacher's is still another token)
        s = build_student(teacher, 2, tokens={"vocab_size": v, "pad_token_id": PAD, "bos_token_id": BOS,
                                              "eos_token_id": EOS}).mlm
        assert s.get_input_embeddings().weight.shape[0] == v and s.get_output_embeddings().weight.shape[0] == v
        assert s.config.vocab_size == v and (s.config.pad_token_id, s.config.eos_token_id) == (PAD, EOS)
        if v == T_VOCAB:
            assert not torch.equal(s.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
            assert not torch.equal(s.get_output_embeddings().weight, teacher.get_output_embeddings().weight)
        # block 2 of the student is the teacher's block 4 (the uniform map 4 → 2), bit for bit
        assert torch.equal(s.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
        assert torch.equal(s.model.norm.weight, teacher.model.norm.weight)
        ids = torch.randint(0, v, (2, 7))
        assert s(input_ids=ids).logits.shape == (2, 7, v)


def test_the_collate_carries_the_teachers_tokenization_through_its_own_template():
    from tests.helpers.tiny_causal import TEMPLATE

    rows = {"q_input_ids": [[20, 21], [22]], "a_input_ids": [[30], [31, 32, 33]],
            "teacher_q_input_ids": [[40, 41, 42], [43]], "teacher_a_input_ids": [[50, 51], [52]],
            "department": np.array(["x", "x"])}
    out = CausalCollate(TEMPLATE, {"x": 0}, T_TEMPLATE)(rows)
    t = out["teacher"]
    assert t["input_ids"][0].tolist() == [3, 9, 40, 41, 42, 10, 50, 51, 4]  # prefix q middle | a suffix
    assert t["response_mask"][0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert t["input_ids"][1].tolist()[:6] == [3, 9, 43, 10, 52, 4] and t["attention_mask"][1].sum() == 6
    assert out["input_ids"][0].tolist()[:6] == [BOS, 5, 20, 21, 6, 7]
    assert "teacher" not in CausalCollate(TEMPLATE, {"x": 0})(rows)


def test_the_teacher_view_holds_the_same_rows_in_the_teachers_tokens(tmp_path):
    import pyarrow.parquet as pq

    from raykd.data.shards import PrepareSettings, load_manifest, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.teacher_view import paired_paths, prepare_view
    from raykd.data.tokenizer import load_tokenizer
    from raykd.errors import RaykdError

    write_corpus(tmp_path / "raw", 120, seed=2)
    m = prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), tokenizer="train-bpe:400",
                                max_length=24, quiet=True, shard_rows=150))
    view, vm = prepare_view(tmp_path / "p", m, "train-bpe:700", quiet=True)
    load_manifest(view, deep=True)  # a prepared directory of its own, every shard hashed
    assert vm["tokenizer"]["spec"] == "train-bpe:700" and vm["view_of"] == m["key"] != vm["key"]
    tok = load_tokenizer(f"{view}/tokenizer")
    for split in ("train", "test"):
        assert [s["rows"] for s in vm["splits"][split]["shards"]] == [s["rows"] for s in m["splits"][split]["shards"]]
    paired = pq.read_table(paired_paths(view, vm)).to_pydict()
    mine = pq.read_table(f"{tmp_path}/p/train").to_pydict()
    assert paired["pair_id"] == mine["pair_id"] and paired["q_input_ids"] == mine["q_input_ids"]
    k = 3  # the teacher's ids are its tokenizer's encoding of the same text, cut at max_length
    assert paired["teacher_a_input_ids"][k] == tok(mine["answer"][k], truncation=True, max_length=24)["input_ids"]
    assert paired["teacher_q_input_ids"][k] != paired["q_input_ids"][k]
    again, _ = prepare_view(tmp_path / "p", m, "train-bpe:700", quiet=True)
    assert again == view
    p0 = tmp_path / "p" / "teacher_view" / view.rsplit("/", 1)[1] / vm["paired"][0]["file"]
    p0.write_bytes(p0.read_bytes()[:-10])
    with pytest.raises(RaykdError, match="paired train shard"):
        paired_paths(view, vm)


def test_the_plan_of_a_cross_tokenizer_study_adapts_and_scores_the_teacher_on_its_own_tokens(tmp_path):
    """``prepare_inputs`` (driver, no Ray): a teacher view, the teacher's adaptation over it, its own template."""
    from raykd.ray_layer.inputs import prepare_inputs

    cfg = _load("search_spaces/causal_xtok.yaml", **{"data.synth": "{dialogs: 150, seed: 1}",
                                                    "data.work_dir": str(tmp_path / "w"), "data.tokenizer": "train-bpe:350",
                                                    "teacher.tokenizer": "train-bpe:500"})
    plan = prepare_inputs(cfg)
    v = plan.teacher_view
    assert v and v["prepared"].startswith(plan.prepared + "/teacher_view/") and v["vocab"] > 350
    assert plan.adapt["prepared"] == v["prepared"] and v["template"] != plan.template
    same = prepare_inputs(_load("search_spaces/causal_xtok.yaml", **{
        "data.synth": "{dialogs: 150, seed: 1}", "data.work_dir": str(tmp_path / "w"), "data.tokenizer": "train-bpe:350",
        "teacher.tokenizer": "train-bpe:350", "method.name": "kd", "method.params": "{}", "space": "{}"}))
    assert same.teacher_view is None and same.adapt["prepared"] == same.prepared


def test_the_teacher_is_scored_on_its_own_tokens_with_the_students_candidates_and_references(tmp_path):
    from transformers import AutoTokenizer

    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.teacher_view import prepare_view
    from raykd.data.template import causal_template
    from raykd.evaluation.causal_lm import CausalEvaluation

    write_corpus(tmp_path / "raw", 150, seed=4)
    m = prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), tokenizer="train-bpe:350",
                                max_length=12, quiet=True))  # short: truncation makes some answers' ids collide
    view, vm = prepare_view(tmp_path / "p", m, "train-bpe:600", quiet=True)
    tpl = lambda d: causal_template(AutoTokenizer.from_pretrained(f"{d}/tokenizer")).as_dict()  # noqa: E731
    ev = CausalEvaluation.for_trial(str(tmp_path / "p"), m, 40, template=tpl(tmp_path / "p"),
                                    teacher_view={"prepared": view, "template": tpl(view), "vocab": 600})
    mine, theirs = ev.data("test"), ev.teacher_side.data("test")
    assert mine.pair_ids == theirs.pair_ids and mine.candidate_rows == theirs.candidate_rows
    assert mine.rouge_refs == theirs.rouge_refs and mine.prompts != theirs.prompts  # other ids, same questions
    assert ev.teacher_side is not ev and CausalEvaluation.for_trial(
        str(tmp_path / "p"), m, 40, template=tpl(tmp_path / "p")).teacher_side.paired_with is None
