"""A causal-LM study end to end on the session's Ray (shared by every test here): the generated corpus
with a byte-level BPE tokenizer trained here, a tiny LLaMA-arch teacher built and adapted here, a
student with a third of its layers; a grid over three causal methods with the references (teacher,
init, sft) in Ray Train local mode — Tune, Train, Data, the causal evaluation, TensorBoard, the
report, export, and the exported student reloaded with ``AutoModelForCausalLM`` and generating
without raykd."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import raykd
from tests.conftest import CAUSAL_OVERRIDES, ROOT
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CAUSAL = str(ROOT / "search_spaces" / "causal_smoke.yaml")
METHODS = ["kd", "feature_align", "gkd"]
KEYS = ("perplexity", "answer_accuracy", "retained_accuracy", "param_reduction", "teacher_perplexity",
        "teacher_answer_accuracy")
TEST_ONLY = ("speedup_b1", "speedup_b32", "decode_tokens_per_s", "rouge_l")


@pytest.fixture(scope="module")
def causal_study(ray_session, causal_work):
    work = causal_work
    overrides = {"data.work_dir": str(work / "work"), **CAUSAL_OVERRIDES,
                 "train.steps": 8, "train.eval_every": 4, "train.eval_pairs": 32, "method.params": {},
                 "search.algorithm": "grid", "search.scheduler.type": "none",
                 "space": {"method": {"grid": METHODS}}}
    results, path = raykd.run_study(CAUSAL, overrides=overrides, storage=str(work / "exp"), name="causal")
    return work, Path(path), results


def test_every_causal_trial_reports_the_claim_metrics(causal_study):
    work, exp, results = causal_study
    assert len(results) == len(METHODS) and not results.errors
    rows = trial_results(exp)
    assert len(rows) == len(METHODS)
    for name, rs in rows.items():
        assert [r["step"] for r in rs] == [0, 4, 8], name
        final = rs[-1]
        for k in KEYS:
            assert isinstance(final[f"val/{k}"], float) and isinstance(final[f"test/{k}"], float), (name, k)
        for k in TEST_ONLY:
            assert isinstance(final[f"test/{k}"], float), (name, k)
        assert 0.0 <= final["test/answer_accuracy"] <= 1.0 and final["test/perplexity"] > 1.0
        assert final["test/retained_accuracy"] == pytest.approx(final["test/answer_accuracy"]
                                                                / final["test/teacher_answer_accuracy"])
        assert final["test/speedup_b1"] > 0 and final["test/decode_tokens_per_s"] > 0
        assert 0.0 <= final["test/rouge_l"] <= 1.0
        assert math.isfinite(final["train/loss"])
    # parameter reduction against counts made here: the 6-layer teacher and a 2-layer cut of it
    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher

    prov = json.loads(next(exp.glob("trial_*/provenance.json")).read_text())
    teacher = load_teacher(prov["teacher"])
    student = build_student(teacher, 2).mlm
    n_t, n_s = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    final = next(iter(rows.values()))[-1]
    assert final["test/param_reduction"] == pytest.approx(1 - n_s / n_t)
    assert type(teacher).__name__ == "LlamaForCausalLM" and teacher.config.num_hidden_layers == 6
    # the lead metric of a causal study is answer accuracy unless the config names another
    assert prov["config"]["experiment"]["metric"] == "val/answer_accuracy"
    assert prov["config"]["teacher"]["family"] == "causal_lm"


def test_causal_references_run_sft_and_report_teacher_and_init(causal_study):
    _, exp, _ = causal_study
    from raykd.results.report import load_references

    refs = load_references(exp)
    assert {r.role for r in refs} == {"teacher", "init", "no_distill"}
    prov = json.loads(next((exp / "references").glob("trial_*/provenance.json")).read_text())
    assert prov["config"]["method"]["name"] == "sft"  # no distillation: cross-entropy on the responses
    teacher = [r for r in refs if r.role == "teacher"][0].metrics
    assert teacher["test/retained_accuracy"] == pytest.approx(1.0) and teacher["test/param_reduction"] == 0.0
    init = [r for r in refs if r.role == "init"][0].metrics
    assert init["test/perplexity"] > teacher["test/perplexity"]  # a student cut from the teacher starts worse


def test_causal_study_in_tensorboard_and_the_report(causal_study):
    work, exp, _ = causal_study
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raykd.results.report import build_report

    trial = next(exp.glob("trial_*"))
    ea = EventAccumulator(str(trial), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("val/answer_accuracy")] == [0, 4, 8]
    out = build_report(exp, work / "report")
    text = (work / "report" / "table.md").read_text()
    assert "Answer accuracy" in text and "Retained accuracy" in text and "`no_distill`" in text
    assert all(m in text for m in METHODS)
    assert any("answer_accuracy" in Path(f).name for f in out["figures"])


def test_export_reloads_with_auto_model_for_causal_lm_and_generates_without_raykd(causal_study):
    work, exp, _ = causal_study
    from raykd.results.export import export

    out = export(exp, work / "student")
    card = (work / "student" / "README.md").read_text()
    assert "retained accuracy" in card and "parameter reduction" in card and "AutoModelForCausalLM" in card
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"d = {str(work / 'student')!r}\n"
            "tok = AutoTokenizer.from_pretrained(d); m = AutoModelForCausalLM.from_pretrained(d)\n"
            "text = (tok.bos_token or '') + '患者：' + '最近总是头痛' + '\\n医生：'\n"
            "ids = tok(text, add_special_tokens=False, return_tensors='pt')\n"
            "g = m.generate(**ids, max_new_tokens=8, do_sample=False)\n"
            "assert 'raykd' not in sys.modules\n"
            "print(type(m).__name__, g.shape[1] - ids['input_ids'].shape[1])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(work), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    name, new = res.stdout.split()
    assert name == "LlamaForCausalLM" and 1 <= int(new) <= 8
    assert out["files"] and "model.safetensors" in out["files"]


def test_fsdp_on_two_cpu_workers_trains_as_ddp_does_and_exports_full_weights(causal_study):
    """train.strategy fsdp (FSDP2 over gloo, 2 workers) against ddp on the same data, seed and steps:
    the same losses and metrics (token-level objective, normalised by the step's global token count),
    rank 0's replica evaluated, its full weights checkpointed and exported. With the teacher sharded
    too (teacher.shard always) the same again, its evaluation computed by both ranks together."""
    work, exp, _ = causal_study
    # the student the trials cut from the teacher, saved as a directory of its own: with student.spec the
    # sharded teacher is read by rank 0 alone and broadcast (parallel.shard_frozen_from_rank0)
    import torch
    from transformers import AutoTokenizer

    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher

    prov = json.loads(next(exp.glob("trial_*/provenance.json")).read_text())
    torch.manual_seed(prov["seed"])
    build_student(load_teacher(prov["teacher"]), 2).mlm.save_pretrained(work / "cut-student")
    AutoTokenizer.from_pretrained(prov["teacher"]).save_pretrained(work / "cut-student")
    finals = {}
    for name, strategy, shard, spec in (("ddp", "ddp", "never", None), ("fsdp", "fsdp", "never", None),
                                        ("fsdp-teacher", "fsdp", "always", None),
                                        ("fsdp-teacher-rank0", "fsdp", "always", str(work / "cut-student"))):
        overrides = {"teacher.shard": shard, "student.spec": spec, "data.work_dir": str(work / "work"), "data.synth.dialogs": 600, "teacher.adapt.steps": 40,
                     "train.steps": 6, "train.eval_every": 6, "train.eval_pairs": 32, "train.num_workers": 2,
                     "train.cpus_per_worker": 0.5, "train.threads_per_worker": 1, "train.strategy": strategy,
                     "train.local_mode": None,
                     "method.name": "kd", "method.params": {"divergence": "forward_kl"}, "search.algorithm": "grid",
                     "search.scheduler.type": "none", "space": {}, "experiment.references": False}
        results, path = raykd.run_study(CAUSAL, overrides=overrides, storage=str(work / "exp"), name=name)
        assert not results.errors, results.errors
        (rows,) = trial_results(Path(path)).values()
        finals[name] = rows[-1]
        assert rows[-1]["world_size"] == 2 and rows[-1]["step"] == 6
        assert rows[-1].get("teacher_shards") == (2 if shard == "always" else None)
    for other in ("fsdp", "fsdp-teacher", "fsdp-teacher-rank0"):
        for key in ("train/loss", "test/perplexity", "val/perplexity", "test/answer_accuracy",
                    "test/teacher_perplexity", "test/teacher_answer_accuracy", "test/teacher_rouge_l"):
            assert finals[other][key] == pytest.approx(finals["ddp"][key], rel=2e-3), (other, key)
    assert finals["fsdp"]["test/speedup_b1"] > 0 and "test/speedup_b1" not in finals["fsdp-teacher"]
    assert finals["fsdp-teacher"]["test/teacher_latency_ms_b1_sharded"] > 0
    from raykd.results.export import export
    from transformers import AutoModelForCausalLM

    export(work / "exp" / "fsdp", work / "fsdp-student")
    student = AutoModelForCausalLM.from_pretrained(work / "fsdp-student")
    assert student.config.num_hidden_layers == 2 and all(p.abs().sum() > 0 for p in student.parameters())


def test_a_causal_trial_with_accumulation_runs_past_an_epoch(causal_study):
    """Gradient accumulation over micro-batches grouped by step (each carrying the step's token count)
    through the end of an epoch into the next: every training pair seen, every step taken."""
    work, exp, _ = causal_study
    prov = json.loads(next(exp.glob("trial_*/provenance.json")).read_text())
    from raykd.data.shards import load_manifest

    train_pairs = load_manifest(prov["prepared"])["splits"]["train"]["rows"]
    steps = -(-train_pairs // 128) + 2  # 128 pairs per step: a little more than one epoch
    overrides = {"data.work_dir": str(work / "work"), "data.synth.dialogs": 600, "teacher.adapt.steps": 40,
                 "train.steps": steps, "train.eval_every": steps, "train.eval_pairs": 32, "train.batch_size": 64,
                 "train.grad_accum": 2, "method.name": "sft", "method.params": {}, "search.algorithm": "grid",
                 "search.scheduler.type": "none", "space": {}, "experiment.references": False}
    results, path = raykd.run_study(CAUSAL, overrides=overrides, storage=str(work / "exp"), name="epochs")
    assert not results.errors, results.errors
    (rows,) = trial_results(Path(path)).values()
    assert rows[-1]["step"] == steps and rows[-1]["data/pairs_seen"] == train_pairs
