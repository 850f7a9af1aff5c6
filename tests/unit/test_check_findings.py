"""``scripts/check_findings.py``: every table of docs/findings.md re-derived from the rows stored under
docs/findings/ (the real file passes), and a findings file with one number changed, an unsourced
mean ± half-width cell or a missing figure fails naming where."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("check_findings", ROOT / "scripts" / "check_findings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc():
    from raykd.results import comparison as K

    methods = {
        "ours": {"method": "structural", "fixed": {}, "tuning_trials": 4, "compute_s": 812.4,
                 "best": {"train.lr": 0.00071, "method.params.temperature": 0.49}, "on_range_edge":
                     ["method.params.temperature"], "confirm": {"test/mrr@10": [0.25, 0.24, 0.26]}},
        "b": {"method": "tinybert", "fixed": {}, "tuning_trials": 4, "compute_s": 700.0, "best": {"train.lr": 0.001},
              "on_range_edge": [], "confirm": {"test/mrr@10": [0.20, 0.215, 0.22]}},
        "c": {"method": "minilm", "fixed": {}, "tuning_trials": 4, "compute_s": 650.0, "best": {"train.lr": 0.0004},
              "on_range_edge": [], "confirm": {"test/mrr@10": [0.21, 0.18, 0.26]}}}
    refs = {"init": {"confirm": {"test/mrr@10": [0.06, 0.061, 0.062]}},
            "no_distill": {"method": "no_distill", "fixed": {}, "tuning_trials": 4, "compute_s": 500.0,
                           "best": {"train.lr": 0.002}, "on_range_edge": ["train.lr"],
                           "confirm": {"test/mrr@10": [0.07, 0.08, 0.075]}}}
    return K.comparison_doc(against="ours", metrics=["test/mrr@10"], trials_per_method=4, steps=200, seeds=[0, 1, 2],
                            tuning_seed=3, algorithm="optuna", scheduler="asha", methods=methods, references=refs,
                            exploratory_metrics=["test/mrr@10"])


@pytest.fixture
def docs(tmp_path, monkeypatch):
    """A docs/ tree with one stored comparison, and the script reading its rows from there."""
    mod = _script()
    (tmp_path / "findings" / "s").mkdir(parents=True)
    doc = _doc()
    doc["tests"][0]["p_holm"] = 0.5  # a wrong stored result: the check trusts the rows, not the stored tests
    (tmp_path / "findings" / "s" / "comparison.json").write_text(json.dumps(doc), encoding="utf-8")
    (tmp_path / "findings" / "s" / "rows.csv").write_text(
        "trial_id,role,contender,seed,test/mrr@10\n1,trial,ours,0,0.25\n2,trial,ours,1,0.24\n3,trial,b,0,0.2\n"
        "4,trial,b,1,0.215\n5,init,,0,0.06\n", encoding="utf-8")
    monkeypatch.setattr(mod, "DOCS", tmp_path)
    md = ["# F", ""]
    for spec in ("compare-declared findings/s/comparison.json", "compare-methods findings/s/comparison.json",
                 "compare-exploratory findings/s/comparison.json",
                 "rows findings/s/rows.csv group=contender metrics=test/mrr@10:3 where=role=trial"):
        md += [f"<!-- table: {spec} -->", ""] + mod.derive(spec) + [""]
    md += ["| claim | verdict |", "|---|---|", "| (a) | holds |", ""]
    (tmp_path / "findings.md").write_text("\n".join(md), encoding="utf-8")
    return mod, tmp_path


def test_derived_tables_pass_and_use_the_rows_not_the_stored_tests(docs):
    mod, root = docs
    assert mod.check_findings(root / "findings.md") == []
    text = (root / "findings.md").read_text()
    assert "| `ours` − `b` | test/mrr@10 | 3 |" in text and "0.5 |" not in text.split("\n\n")[2]
    assert "0.2500 ± " in text and "⚠edge" in text


def test_one_changed_number_fails_naming_table_row_column_and_value(docs):
    mod, root = docs
    f = root / "findings.md"
    lines = f.read_text().splitlines()
    i = next(k for k, x in enumerate(lines) if x.startswith("| `b` |"))
    lines[i] = lines[i].replace("0.2117", "0.2118", 1)
    f.write_text("\n".join(lines))
    problems = mod.check_findings(f)
    assert len(problems) == 1
    assert "compare-methods findings/s/comparison.json" in problems[0] and "row 2 (`b`)" in problems[0]
    assert "column 'test/mrr@10'" in problems[0] and "0.2118" in problems[0] and "0.2117" in problems[0]


def test_an_unsourced_mean_and_half_width_and_a_missing_figure_fail(docs):
    mod, root = docs
    f = root / "findings.md"
    f.write_text(f.read_text() + "\n| x | MRR@10 |\n|---|---|\n| ours | 0.412 ± 0.013 |\n\n![fig](fig_missing.png)\n")
    problems = mod.check_findings(f)
    assert len(problems) == 1 and "no <!-- table: … --> source" in problems[0] and "0.412 ± 0.013" in problems[0]
    assert any("fig_missing.png" in p for p in mod.check_figures(root))


def test_the_repositorys_findings_are_derived_from_its_stored_rows():
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_findings.py")], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - t0 < 60
