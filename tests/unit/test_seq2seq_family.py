"""The seq2seq plugin family (``examples/seq2seq_family.py``) through raykd's family seam, without Ray: what it
offers decides which methods load, raykd tells its models from the built-in families', its models read the
patient's turn into the encoder and the reply into the decoder (the task loss checked against transformers' own
``labels=`` loss), a student cut from it copies the mapped layers, and its evaluation scores a model that cannot
tell the replies apart at exactly chance."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from raykd import config as C
from raykd.models.families import TeacherShape, family, family_of
from raykd.models.families import spec as specs
from raykd.models.mapping import layer_map
from raykd.models.student import build_student

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "search_spaces" / "seq2seq_smoke.yaml"
PLUGIN = "examples.seq2seq_family"
SHAPE = TeacherShape(layers=4, hidden=32, heads=2, intermediate=64, max_position=64, arch="bart")
VOCAB, PAD, CLS, SEP = 80, 0, 2, 3


@pytest.fixture
def s2s():
    """The plugin imported afresh (its import registers ``seq2seq_lm``), and the registry as it was afterwards."""
    from raykd.models import families

    before = dict(specs._SPECS)
    sys.modules.pop(PLUGIN, None)
    import importlib

    yield importlib.import_module(PLUGIN)
    specs._SPECS.clear()
    specs._SPECS.update(before)
    families._IMPLEMENTATIONS.pop("seq2seq_lm", None)
    sys.modules.pop(PLUGIN, None)


def _pairs(n=3, seed=0):
    """A collated pair batch: questions and replies of different lengths, each reply [CLS] … [SEP]."""
    from raykd.data.collate import PairCollate

    g = torch.Generator().manual_seed(seed)
    qs = [torch.randint(5, VOCAB, (5 + i,), generator=g).tolist() for i in range(n)]
    rs = [[CLS] + torch.randint(5, VOCAB, (3 + 2 * i,), generator=g).tolist() + [SEP] for i in range(n)]
    return PairCollate(PAD)({"q_input_ids": qs, "a_input_ids": rs})


def test_the_plugin_study_loads_and_what_the_family_offers_decides_what_runs(s2s):
    cfg = C.load_config(YAML)
    assert cfg.teacher.family == "seq2seq_lm" and cfg.experiment.metric == "val/answer_accuracy"
    for ok in ("kd", "sft", "minillm", "gkd"):
        C.load_config(YAML, {"method.name": ok, "method.params": {}, "space": {}})
    with pytest.raises(C.ConfigError, match="method 'tinybert' does not run on a seq2seq_lm teacher"):
        C.load_config(YAML, {"method.name": "tinybert", "method.params": {}, "space": {}})
    with pytest.raises(C.ConfigError, match="lmbda: 0.5 needs a model family that offers 'generates'"):
        C.load_config(YAML, {"method.name": "gkd", "method.params": {"lmbda": 0.5}, "space": {}})


def test_raykd_tells_an_encoder_decoder_from_an_encoder_and_a_decoder(s2s):
    bart = family("seq2seq_lm").build(SHAPE, VOCAB, PAD, CLS, SEP)
    bert = family("masked_lm").build(TeacherShape(2, 32, 2, 64, 64), VOCAB, PAD)
    llama = family("causal_lm").build(TeacherShape(2, 32, 2, 64, 64, "llama"), VOCAB, PAD)
    assert [family_of(m).name for m in (bart, bert, llama)] == ["seq2seq_lm", "masked_lm", "causal_lm"]


def test_the_models_read_the_turn_and_the_reply_and_the_task_loss_is_transformers_own(s2s, tmp_path):
    fam = family("seq2seq_lm")
    torch.manual_seed(0)
    teacher = fam.build(SHAPE, VOCAB, PAD, CLS, SEP).eval()
    fam.save(teacher, tmp_path / "t")
    loaded = fam.load(str(tmp_path / "t")).eval()
    assert {k: v.shape for k, v in fam.skeleton(str(tmp_path / "t")).state_dict().items()} == \
        {k: v.shape for k, v in loaded.state_dict().items()}
    batch = _pairs()
    from raykd.distill.methods import TokenIds

    inputs = fam.inputs(batch, TokenIds(PAD, CLS, SEP, 4), None, False, 0.15, VOCAB)
    out = fam.run(loaded, inputs)
    a = batch["a_input_ids"]
    assert out.logits.shape == (*a.shape, VOCAB) and len(out.hidden_states) == SHAPE.layers + 1
    assert out.hidden_states[-1].shape[:2] == batch["q_input_ids"].shape  # the encoder's states
    assert int(inputs["chosen"].sum()) == fam.count_tokens(batch) == int(batch["a_attention_mask"].sum()) - 3
    # transformers' own seq2seq loss: decoder reads reply[:-1], labels reply[1:] (padding → -100)
    labels = a[:, 1:].masked_fill(batch["a_attention_mask"][:, 1:] == 0, -100)
    with torch.no_grad():
        theirs = loaded(input_ids=batch["q_input_ids"], attention_mask=batch["q_attention_mask"],
                        decoder_input_ids=a[:, :-1], decoder_attention_mask=batch["a_attention_mask"][:, :-1],
                        labels=labels).loss
        mine = fam.task_loss(out.logits, inputs["ids"], inputs["chosen"])
    assert float(mine) == pytest.approx(float(theirs), rel=1e-5)


def test_a_student_cut_from_the_teacher_copies_the_mapped_encoder_and_decoder_layers(s2s):
    fam = family("seq2seq_lm")
    torch.manual_seed(0)
    teacher = fam.build(SHAPE, VOCAB, PAD, CLS, SEP)
    student = build_student(teacher, 2)
    assert student.config.encoder_layers == student.config.decoder_layers == 2
    t_sd, s_sd = teacher.state_dict(), student.mlm.state_dict()
    for i, g in layer_map(SHAPE.layers, 2):
        for side in ("encoder", "decoder"):
            key = f"model.{side}.layers.{{}}.fc1.weight"
            assert torch.equal(s_sd[key.format(i - 1)], t_sd[key.format(g - 1)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small generated corpus prepared (WordPiece, max length 32): (directory, manifest)."""
    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus

    base = tmp_path_factory.mktemp("s2s")
    write_corpus(base / "raw", 200, seed=3)
    return base / "p", prepare(PrepareSettings(raw=[str(base / "raw")], out=str(base / "p"), max_length=32,
                                               quiet=True))


def test_a_teacher_adapted_for_the_study_is_the_familys_and_keyed_by_it(s2s, prepared, tmp_path):
    from raykd.stages.adapt import AdaptSettings, adapt_key, adapt_prepared

    shape = TeacherShape(2, 32, 2, 64, 64)  # one architecture: the study names none (inputs.prepare_inputs)
    settings = AdaptSettings(steps=2, batch_size=4, max_length=32)
    out = adapt_prepared(str(prepared[0]), str(tmp_path / "t"), shape=shape, settings=settings,
                         family="seq2seq_lm", log=lambda m: None)
    import json

    assert json.loads((out / "config.json").read_text())["architectures"] == ["BartForConditionalGeneration"]
    key = prepared[1]["key"]
    assert adapt_key(key, "config", shape, settings, "masked_lm") == adapt_key(key, "config", shape, settings)
    assert adapt_key(key, "config", shape, settings, "seq2seq_lm") != adapt_key(key, "config", shape, settings)


def test_a_model_that_cannot_tell_replies_apart_scores_chance(s2s, prepared):
    tmp_path, manifest = prepared[0].parent, prepared[1]
    t = manifest["tokenizer"]
    model = family("seq2seq_lm").build(SHAPE, t["vocab_size"], t["pad_token_id"], t["cls_token_id"],
                                      t["sep_token_id"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0: every reply token has probability 1 / V
    ev = s2s.Seq2SeqEvaluation.for_trial(str(tmp_path / "p"), manifest, 24)
    m = ev.split(model, model, "val")
    assert m["val/answer_chance"] == pytest.approx(0.2) and m["val/answer_accuracy"] == pytest.approx(0.2)
    assert m["val/perplexity"] == pytest.approx(t["vocab_size"], rel=1e-4)


def test_replies_are_scored_without_dropout_and_the_mode_is_restored(s2s):
    torch.manual_seed(0)
    model = family("seq2seq_lm").build(SHAPE, VOCAB, PAD, CLS, SEP).train()  # BART's dropout is 0.1
    batch = _pairs(4)
    qs = [r[m.bool()].tolist() for r, m in zip(batch["q_input_ids"], batch["q_attention_mask"])]
    rs = [r[m.bool()].tolist() for r, m in zip(batch["a_input_ids"], batch["a_attention_mask"])]
    first, second = s2s.reply_logprobs(model, qs, rs, PAD), s2s.reply_logprobs(model, qs, rs, PAD)
    assert (first[0] == second[0]).all() and model.training
