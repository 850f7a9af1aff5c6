"""``python -m raykd.export`` after the session's real experiment: the exported directory loads with
plain transformers in a fresh process where raykd cannot be imported, and its sentence
representations (computed there with the model card's code) equal raykd's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.results.export import choose_trial, load_trial_student
from tests.conftest import run_module

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TEXTS = ["我最近头痛，晚上睡不好，需要做什么检查？", "孩子发烧三天了，咳嗽有痰。", "血压高吃什么药比较好"]

PLAIN = r'''
import json, sys
sys.modules["raykd"] = None  # raykd must not be needed
import numpy as np, torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
d, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(d)
model = AutoModel.from_pretrained(d).eval()
AutoModelForMaskedLM.from_pretrained(d)
card = open(f"{d}/README.md", encoding="utf-8").read()
code = card.split("```python")[2].split("```")[0]  # the aggregation code the model card gives
ns = {}
exec(code, ns)
enc = tok(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    y = ns["sentence_representation"](d, h, enc["attention_mask"])
np.save(sys.argv[3], y.numpy())
json.dump([enc["input_ids"].tolist(), enc["attention_mask"].tolist()], open(sys.argv[3] + ".ids.json", "w"))
'''


def test_exported_student_loads_with_plain_transformers_and_matches_raykd(grid_experiment, tmp_path):
    rc, exp, _, _ = grid_experiment
    assert rc == 0
    out = tmp_path / "student"
    p = run_module("raykd.export", str(exp), "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    files = {f.name for f in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "aggregation.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    trial = choose_trial(exp)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert trial.trial_id in card and f"{trial.metrics['test/semantic_alignment']:.4g}" in card
    assert "speedup_b1" in card and "teacher" in card

    y_file = tmp_path / "y.npy"
    r = subprocess.run([sys.executable, "-c", PLAIN, str(out), json.dumps(TEXTS, ensure_ascii=False), str(y_file)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    y_plain = np.load(y_file)
    ids, mask = (torch.tensor(x) for x in json.loads((tmp_path / "y.npy.ids.json").read_text()))

    student, *_ = load_trial_student(trial)
    with torch.no_grad():
        _, y_raykd = student.encode(ids, mask)
    assert y_plain.shape == tuple(y_raykd.shape)
    np.testing.assert_allclose(y_plain, y_raykd.numpy(), atol=1e-5, rtol=1e-5)


def test_export_of_an_unknown_trial_exits_2(grid_experiment, tmp_path):
    _, exp, _, _ = grid_experiment
    p = run_module("raykd.export", str(exp), "--trial", "nope", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "trial nope: not in" in p.stderr and not (tmp_path / "x").exists()


def test_a_checkpoint_of_another_architecture_is_refused(grid_experiment, tmp_path):
    import shutil

    _, exp, _, _ = grid_experiment
    trial = choose_trial(exp)
    copy = tmp_path / "exp"
    shutil.copytree(trial.path, copy / Path(trial.path).name)
    prov_file = copy / Path(trial.path).name / "provenance.json"
    prov = json.loads(prov_file.read_text())
    prov["config"]["student"]["hidden"] = 32  # the checkpoint holds a 64-wide student
    prov_file.write_text(json.dumps(prov))
    p = run_module("raykd.export", str(copy), "--trial", trial.trial_id, "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "does not fit the trial's architecture" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (tmp_path / "x").exists()
