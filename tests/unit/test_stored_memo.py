"""The fixed teacher's evaluation outputs kept on disk (``protocol.stored``, ``Evaluation.memo(keep=True)``): a
later process reads them instead of running the teacher again and gets the very same metrics; other weights, a
damaged file or another code version mean computing again; timings are never kept."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit


@pytest.fixture
def masked_setup(tmp_path):
    """A prepared masked-LM corpus (120 dialogues), a tiny teacher matching its vocabulary, a student, and a
    function making the evaluation a new process would (the process-wide memo emptied)."""
    from raykd.data.shards import PrepareSettings, load_manifest, prepare, special_token_ids
    from raykd.data.synth import write_corpus
    from raykd.distill.methods import TokenIds
    from raykd.evaluation import protocol
    from raykd.evaluation.masked_lm import MaskedLMEvaluation
    from raykd.models.student import build_student
    from raykd.models.teacher import TeacherShape, build_teacher

    write_corpus(tmp_path / "raw", 120, seed=3)
    prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), max_length=24, quiet=True))
    prep = str(tmp_path / "p")
    m = load_manifest(prep)
    tokens = TokenIds.from_manifest(m, special_token_ids(prep, m))
    torch.manual_seed(0)
    teacher = build_teacher(TeacherShape(layers=2, hidden=32, heads=4, intermediate=64, max_position=64),
                            m["tokenizer"]["vocab_size"]).eval()
    student = build_student(teacher, 1)

    def fresh():
        protocol.TEACHER_MEMO.items.clear()
        return MaskedLMEvaluation(prep, m, 16, tokens, teacher.config.vocab_size, teacher_key="adapted-key")

    yield teacher, student, fresh, tmp_path / "p" / protocol.STORED_MEMO_DIR
    protocol.TEACHER_MEMO.items.clear()


def test_a_later_process_reads_the_teachers_outputs_and_gets_the_same_metrics(masked_setup, monkeypatch, capsys):
    from raykd.metrics import representation

    teacher, student, fresh, store = masked_setup
    first = {**fresh().split(student, teacher, "val"), **fresh().split(student, teacher, "test")}
    kept = sorted(p.name for p in store.glob("*.pt"))
    assert len(kept) == 3, kept  # the teacher's outputs on val and on test, its masked-LM loss on test
    # a new process: the teacher is not run again (its forward would fail) and every metric is the same number
    calls = []
    real = representation.teacher_outputs
    monkeypatch.setattr(representation, "teacher_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = {**fresh().split(student, teacher, "val"), **fresh().split(student, teacher, "test")}
    assert calls == [] and again == first
    # other weights under the same key: computed again, stored beside
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        next(teacher.parameters()).add_(0.5)
    fresh().split(student, teacher, "val")
    assert calls == [1] and len(list(store.glob("*.pt"))) == 4
    # a damaged file is computed again and rewritten, with a line saying so
    teacher.load_state_dict(weights)
    for p in store.glob("*.pt"):
        p.write_bytes(b"not a torch file")
    calls.clear()
    assert fresh().split(student, teacher, "val") == {k: v for k, v in first.items() if k.startswith("val/")}
    assert calls == [1] and "unreadable" in capsys.readouterr().err


def test_stored_values_round_trip_numpy_and_files_of_other_code_versions_go(tmp_path, monkeypatch):
    from raykd.evaluation import protocol

    value = {"perplexity": 3.5, "_credit": np.array([0.0, 1.0, 0.5]), "_count": np.arange(4, dtype=np.int64),
             "rows": [(torch.ones(2, 3), torch.zeros(1))]}
    stale = tmp_path / "0123456789abcdef-old.pt"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"x")
    calls = []
    first = protocol.stored(tmp_path, ("k", 1), lambda: calls.append(1) or value)()
    got = protocol.stored(tmp_path, ("k", 1), lambda: calls.append(1) or value)()
    assert calls == [1] and not stale.exists()
    assert first is value and got["perplexity"] == 3.5 and got["_credit"].dtype == np.float64
    assert np.array_equal(got["_credit"], value["_credit"]) and np.array_equal(got["_count"], value["_count"])
    assert isinstance(got["rows"][0], tuple) and torch.equal(got["rows"][0][0], torch.ones(2, 3))
    other = protocol.stored(tmp_path, ("k", 2), lambda: calls.append(2) or 7.0)()
    assert other == 7.0 and calls == [1, 2]
    # another code version does not read these files
    monkeypatch.setattr(protocol, "code_fingerprint", lambda: "fedcba9876543210")
    assert protocol.stored(tmp_path, ("k", 1), lambda: calls.append(3) or value)() is value and calls[-1] == 3


def test_an_unwritable_store_still_returns_the_value(tmp_path, capsys):
    from raykd.evaluation import protocol

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert protocol.stored(blocker / "memo", ("k",), lambda: 1.5)() == 1.5
    assert "not stored" in capsys.readouterr().err


def test_a_failed_write_leaves_no_file_and_still_returns_the_value(tmp_path, monkeypatch, capsys):
    """torch.save reports a full disk or an unwritable file as RuntimeError: the value is returned, nothing kept."""
    from raykd.evaluation import protocol

    def full_disk(obj, f):
        open(f, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", full_disk)
    assert protocol.stored(tmp_path, ("k",), lambda: 2.5)() == 2.5
    assert list(tmp_path.iterdir()) == [] and "not stored" in capsys.readouterr().err


def test_the_key_holds_the_pairs_the_data_and_the_special_ids(masked_setup, monkeypatch):
    """Another pair count or other special ids under the same teacher are computed afresh, never read."""
    from raykd.evaluation import protocol
    from raykd.evaluation.masked_lm import MaskedLMEvaluation
    from raykd.metrics import representation

    teacher, student, fresh, store = masked_setup
    ev = fresh()
    ev.split(student, teacher, "val")
    calls = []
    real = representation.teacher_outputs
    monkeypatch.setattr(representation, "teacher_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    protocol.TEACHER_MEMO.items.clear()
    MaskedLMEvaluation(ev.prepared, ev.manifest, 12, ev.tokens, ev.vocab_size, teacher_key="adapted-key").split(
        student, teacher, "val")
    assert calls == [1]
    protocol.TEACHER_MEMO.items.clear()
    other = dataclasses.replace(ev.tokens, others=tuple(ev.tokens.others) + (7,))
    MaskedLMEvaluation(ev.prepared, ev.manifest, 16, other, ev.vocab_size, teacher_key="adapted-key").split(
        student, teacher, "val")
    assert calls == [1, 1]


def test_weights_fingerprint_tells_weights_apart():
    from raykd.evaluation.protocol import weights_fingerprint
    from tests.helpers.tiny import tiny_teacher

    a, b = tiny_teacher(), tiny_teacher()
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        next(b.parameters())[0, 0] += 1e-3
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_a_causal_evaluation_keeps_the_teachers_scores_but_never_its_timings(tmp_path):
    from transformers import AutoTokenizer

    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.template import causal_template
    from raykd.evaluation import protocol
    from raykd.evaluation.causal_lm import CausalEvaluation

    write_corpus(tmp_path / "raw", 60, seed=4)
    m = prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), tokenizer="train-bpe:300",
                                max_length=12, quiet=True))
    tpl = causal_template(AutoTokenizer.from_pretrained(f"{tmp_path}/p/tokenizer")).as_dict()
    ev = CausalEvaluation.for_trial(str(tmp_path / "p"), m, 8, template=tpl, teacher_key="adapted-key")
    teacher = torch.nn.Linear(3, 2)
    store = tmp_path / "p" / protocol.STORED_MEMO_DIR
    try:
        assert ev._memo(teacher, "scores/val", lambda: {"perplexity": 2.0, "_credit": np.ones(3)})["perplexity"] == 2.0
        assert len(list(store.glob("*.pt"))) == 1
        assert ev._memo(teacher, "efficiency/12", lambda: {"decode": 5.0}) == {"decode": 5.0}
        assert len(list(store.glob("*.pt"))) == 1  # a timing is measured in the process that compares with it
    finally:
        protocol.TEACHER_MEMO.items.clear()
