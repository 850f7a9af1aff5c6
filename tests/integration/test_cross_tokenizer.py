"""A cross-tokenizer study end to end on the session's Ray (``search_spaces/causal_xtok.yaml`` at tiny
size): a LLaMA-arch teacher on one byte-level BPE, students on another, a ``uld`` and a ``gold`` trial with
the references (teacher scored on its own tokenization, the student as initialised, sft), the report, and
the exported student reloaded with plain transformers and generating with *its* tokenizer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import raykd
from tests.conftest import ROOT
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
YAML = str(ROOT / "search_spaces" / "causal_xtok.yaml")


@pytest.fixture(scope="module")
def xtok_study(ray_session, tmp_path_factory):
    work = tmp_path_factory.mktemp("xtok")
    overrides = {"data.work_dir": str(work / "work"), "data.synth.dialogs": 600, "data.tokenizer": "train-bpe:400",
                 "teacher.tokenizer": "train-bpe:700", "teacher.adapt.steps": 60, "train.steps": 8,
                 "train.eval_every": 4, "train.eval_pairs": 32, "search.algorithm": "grid",
                 "search.scheduler.type": "none", "method.params": {},
                 "space": {"method.name": {"grid": ["uld", "gold"]}}}
    results, path = raykd.run_study(YAML, overrides=overrides, storage=str(work / "exp"), name="xtok")
    return work, Path(path), results


def test_uld_and_gold_trials_read_both_tokenizations_and_report_the_claim_metrics(xtok_study):
    _, exp, results = xtok_study
    assert len(results) == 2 and not results.errors
    trials = trial_results(exp)
    assert len(trials) == 2
    terms = set()
    for rows in trials.values():
        assert [r["step"] for r in rows] == [0, 4, 8]
        last = rows[-1]
        term = "train/uld" if "train/uld" in last else "train/gold"
        terms.add(term)
        assert math.isfinite(last["train/loss"]) and last[term] > 0 and last["train/ce"] > 0
        for k in ("test/answer_accuracy", "test/perplexity", "test/retained_accuracy", "test/param_reduction",
                  "test/speedup_b1"):
            assert math.isfinite(last[k]), k
        assert last["test/answer_chance"] == pytest.approx(0.2)
    assert terms == {"train/uld", "train/gold"}
    prov = json.loads(next(exp.glob("trial_*/provenance.json")).read_text())
    view = prov["teacher_view"]
    assert prov["config"]["teacher"]["tokenizer"] == "train-bpe:700" and view["vocab"] > 400
    from raykd.data.shards import load_manifest
    from raykd.models.teacher import load_teacher

    assert load_teacher(prov["teacher"]).config.vocab_size == view["vocab"]  # adapted on its own tokens
    assert load_manifest(prov["prepared"])["tokenizer"]["vocab_size"] < view["vocab"]


def test_the_references_score_the_teacher_on_its_own_tokens_and_the_student_on_its_own(xtok_study):
    _, exp, _ = xtok_study
    from raykd.results.report import load_references

    refs = {r.role: r.metrics for r in load_references(exp)}
    assert set(refs) == {"teacher", "init", "no_distill"}
    # the teacher's own numbers equal what every trial reads as the teacher's (one tokenization: its own)
    last = next(iter(trial_results(exp).values()))[-1]
    assert refs["teacher"]["test/answer_accuracy"] == pytest.approx(last["test/teacher_answer_accuracy"])
    assert refs["teacher"]["test/perplexity"] == pytest.approx(last["test/teacher_perplexity"])
    # the student as initialised has blocks from the teacher but embeddings and a head of its own, drawn
    # afresh (σ 0.02): near-uniform next-token distributions, a perplexity near its vocabulary's size
    from raykd.data.shards import load_manifest

    prov = json.loads(next(exp.glob("trial_*/provenance.json")).read_text())
    vocab = load_manifest(prov["prepared"])["tokenizer"]["vocab_size"]
    assert 0.5 * vocab < refs["init"]["test/perplexity"] < 3 * vocab
    assert refs["init"]["test/perplexity"] > refs["teacher"]["test/perplexity"]


def test_report_and_export_that_generates_with_the_students_tokenizer(xtok_study):
    work, exp, _ = xtok_study
    from raykd.results.export import export
    from raykd.results.report import build_report

    build_report(exp, work / "report")
    assert "uld" in (work / "report" / "table.md").read_text()
    export(exp, work / "student")
    assert "distilled across tokenizers: the teacher read its own `train-bpe:700`" in \
        (work / "student" / "README.md").read_text()
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"d = {str(work / 'student')!r}\n"
            "tok = AutoTokenizer.from_pretrained(d); m = AutoModelForCausalLM.from_pretrained(d)\n"
            "assert m.config.vocab_size == len(tok), (m.config.vocab_size, len(tok))\n"
            "ids = tok('患者：最近总是头痛\\n医生：', return_tensors='pt')\n"
            "g = m.generate(**ids, max_new_tokens=6, do_sample=False)\n"
            "assert 'raykd' not in sys.modules\n"
            "print(len(tok), g.shape[1] - ids['input_ids'].shape[1])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(work), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    size, new = map(int, res.stdout.split())
    assert size < 700 and 1 <= new <= 6
