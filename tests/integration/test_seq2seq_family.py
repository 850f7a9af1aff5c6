"""A study of the seq2seq plugin family (``examples/seq2seq_family.py``; nothing under ``raykd/`` knows it) end to
end on the session's Ray: a tiny BART teacher built and adapted here, 2 trials (kd and feature_align) with the
references (teacher, init, sft), the report, and the exported student reloaded with ``AutoModelForSeq2SeqLM``
and generating a reply without raykd."""

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
YAML = str(ROOT / "search_spaces" / "seq2seq_smoke.yaml")
METHODS = ["kd", "feature_align"]


@pytest.fixture(scope="module")
def seq2seq_study(ray_session, tmp_path_factory):
    work = tmp_path_factory.mktemp("seq2seq")
    overrides = {"data.work_dir": str(work / "work"), "data.synth.dialogs": 600, "teacher.adapt.steps": 60,
                 "train.steps": 8, "train.eval_every": 4, "train.eval_pairs": 32, "method.params": {},
                 "search.algorithm": "grid", "search.scheduler.type": "none",
                 "space": {"method": {"grid": METHODS}}}
    results, path = raykd.run_study(YAML, overrides=overrides, storage=str(work / "exp"), name="seq2seq")
    return work, Path(path), results


def test_both_trials_train_and_report_the_family_metrics(seq2seq_study):
    _, exp, results = seq2seq_study
    assert len(results) == len(METHODS) and not results.errors
    trials = trial_results(exp)
    assert len(trials) == 2
    for rows in trials.values():
        assert [r["step"] for r in rows] == [0, 4, 8]
        last = rows[-1]
        for k in ("val/answer_accuracy", "val/perplexity", "test/answer_accuracy", "test/perplexity",
                  "test/retained_accuracy_above_chance", "test/param_reduction", "test/speedup_b1"):
            assert k in last and (math.isfinite(last[k]) or k.endswith("above_chance")), k
        assert last["test/answer_chance"] == pytest.approx(0.2)
        assert 0 < last["test/param_reduction"] < 1 and math.isfinite(last["train/loss"])
    provs = [json.loads(p.read_text()) for p in exp.glob("trial_*/provenance.json")]
    assert sorted(p["config"]["method"]["name"] for p in provs) == sorted(METHODS)
    from raykd.models.teacher import load_teacher

    teacher = load_teacher(provs[0]["teacher"])  # what the trials were taught by: the plugin's BART
    assert type(teacher).__name__ == "BartForConditionalGeneration" and teacher.config.encoder_layers == 4


def test_references_run_sft_and_report_teacher_and_init(seq2seq_study):
    _, exp, _ = seq2seq_study
    from raykd.results.report import load_references

    refs = load_references(exp)
    assert {r.role for r in refs} == {"teacher", "init", "no_distill"}
    prov = json.loads(next((exp / "references").glob("trial_*/provenance.json")).read_text())
    assert prov["config"]["method"]["name"] == "sft" and prov["config"]["plugins"] == ["examples.seq2seq_family"]
    teacher = [r for r in refs if r.role == "teacher"][0].metrics
    init = [r for r in refs if r.role == "init"][0].metrics
    assert teacher["test/param_reduction"] == 0.0 and init["test/param_reduction"] > 0.3
    assert init["test/perplexity"] > teacher["test/perplexity"]  # a student cut from the teacher starts worse


def test_the_report_shows_the_family_columns(seq2seq_study):
    work, exp, _ = seq2seq_study
    from raykd.results.report import build_report

    out = build_report(exp, work / "report")
    text = (work / "report" / "table.md").read_text()
    assert "Answer accuracy" in text and "Reply perplexity" in text and "`no_distill`" in text
    assert all(m in text for m in METHODS)
    assert any("answer_accuracy" in Path(f).name for f in out["figures"])


def test_export_reloads_with_auto_model_for_seq2seq_lm_and_generates_without_raykd(seq2seq_study):
    work, exp, _ = seq2seq_study
    from raykd.results.export import export

    out = export(exp, work / "student")
    card = (work / "student" / "README.md").read_text()
    assert "encoder-decoder" in card and "AutoModelForSeq2SeqLM" in card and "BERT" not in card
    code = ("import sys; from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
            f"d = {str(work / 'student')!r}\n"
            "tok = AutoTokenizer.from_pretrained(d); m = AutoModelForSeq2SeqLM.from_pretrained(d)\n"
            "ids = tok('最近总是头痛，晚上睡不好', return_tensors='pt')\n"
            "g = m.generate(input_ids=ids['input_ids'], attention_mask=ids['attention_mask'], max_new_tokens=8, "
            "do_sample=False)\n"
            "assert 'raykd' not in sys.modules and 'examples' not in sys.modules\n"
            "assert int(g[0, 0]) == tok.cls_token_id, g  # the decoder starts as in training\n"
            "print(type(m).__name__, g.shape[1])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(work), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    name, length = res.stdout.split()
    assert name == "BartForConditionalGeneration" and 2 <= int(length) <= 9
    assert "model.safetensors" in out["files"]
