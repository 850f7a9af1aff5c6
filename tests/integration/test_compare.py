"""A compare study end to end at tiny size on the session's Ray: every method tuned with exactly the
same number of trials on a tuning seed outside the test seeds, each best confirmed on the seeds, the
reference tuned the same way, ``comparison.json`` as documented, the declared family first in the
report, and a Holm family that is exactly the declared comparisons (re-derived here with scipy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import study_args

pytestmark = pytest.mark.integration
COMPARE = ("compare={methods: [structural, {minilm: {relation_heads: 2}}], tune: {trials: 2}, "
           "against: method=structural, metrics: [test/mrr@10, test/semantic_alignment]}")
ARGS = ["train.local_mode=true", "train.steps=16", "train.eval_every=8", "experiment.seeds=[0, 1]",
        "search.algorithm=optuna", "space={lr: {loguniform: [2.0e-4, 2.0e-3]}}", "search.max_trials=20", COMPARE]


@pytest.fixture(scope="module")
def compare_study(ray_session, tmp_path_factory):
    from raykd.ray_layer.tune import main as tune_main

    work = tmp_path_factory.mktemp("compare")
    rc = tune_main(study_args(work, "cmp", *ARGS))
    return rc, work / "exp" / "cmp"


def _trial_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("trial_"))


def _seeds(path: Path) -> list[int]:
    return sorted(json.loads((d / "params.json").read_text())["seed"] for d in _trial_dirs(path))


def test_every_method_gets_the_same_tuning_budget_then_the_seeds(compare_study):
    rc, root = compare_study
    assert rc == 0
    doc = json.loads((root / "comparison.json").read_text())
    assert set(doc["methods"]) == {"structural", "minilm"}
    assert doc["budget"]["trials_per_method"] == 2 and doc["budget"]["steps"] == 16
    assert doc["declared"] == {"against": "method=structural", "metrics": ["test/mrr@10", "test/semantic_alignment"]}
    for label in ("structural", "minilm", "reference"):
        tuning = root / "tune" / label
        assert len(_trial_dirs(tuning)) == 2, label  # exactly the budget, for every contender and the reference
        assert _seeds(tuning) == [2, 2]  # the tuning seed lies outside experiment.seeds
    for label, m in doc["methods"].items():
        assert m["tuning_trials"] == 2 and m["compute_s"] > 0
        assert "train.lr" in m["best"] and m["best"]["method.name"] == label
        for metric in ("test/mrr@10", "test/semantic_alignment"):
            values = m["confirm"][metric]
            assert len(values) == 2 and all(isinstance(v, float) for v in values), (label, metric)
    assert doc["methods"]["minilm"]["fixed"] == {"relation_heads": 2}
    assert doc["methods"]["minilm"]["best"]["method.params.relation_heads"] == 2  # fixed, never tuned
    # the confirmation ran each best on both seeds; the references on the same seeds, tuned like a contender
    assert _seeds(root) == [0, 0, 1, 1]
    assert _seeds(root / "references") == [0, 1]
    ref = doc["references"]
    assert ref["no_distill"]["tuning_trials"] == 2 and set(ref) >= {"no_distill", "init", "teacher"}
    assert len(ref["init"]["confirm"]["test/mrr@10"]) == 2
    refs_lr = {json.loads((d / "params.json").read_text()).get("train.lr") for d in _trial_dirs(root / "references")}
    assert refs_lr == {ref["no_distill"]["best"]["train.lr"]}  # the tuned reference's rate on every seed


def test_the_holm_family_is_exactly_the_declared_comparisons(compare_study):
    from scipy import stats

    _, root = compare_study
    doc = json.loads((root / "comparison.json").read_text())
    tests = doc["tests"]
    assert [(t["a"], t["b"], t["metric"]) for t in tests] == [("structural", "minilm", "test/mrr@10"),
                                                              ("structural", "minilm", "test/semantic_alignment")]
    p = []
    for t in tests:
        a = doc["methods"]["structural"]["confirm"][t["metric"]]
        b = doc["methods"]["minilm"]["confirm"][t["metric"]]
        assert t["diff"] == pytest.approx(sum(a) / 2 - sum(b) / 2, rel=1e-9, abs=1e-12)
        assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        p.append(t["p"])
    # Holm over exactly these two: the smaller p doubled, the larger kept (monotone), nothing else counted
    lo, hi = sorted(range(2), key=lambda i: p[i])
    assert tests[lo]["p_holm"] == pytest.approx(min(1.0, 2 * p[lo]), rel=1e-9)
    assert tests[hi]["p_holm"] == pytest.approx(max(min(1.0, 2 * p[lo]), p[hi]), rel=1e-9)
    declared = {(t["a"], t["b"], t["metric"]) for t in tests}
    assert not declared & {(t["a"], t["b"], t["metric"]) for t in doc["exploratory"]}
    assert any(t["b"] == "no_distill" for t in doc["exploratory"])  # gains over the references: exploratory


def test_the_report_prints_the_declared_family_first_and_labels_the_rest_exploratory(compare_study, tmp_path):
    from raykd.results.report import build_report

    _, root = compare_study
    summary = build_report(root, tmp_path / "report")
    text = (tmp_path / "report" / "table.md").read_text()
    declared, methods = text.index("### Declared comparisons"), text.index("### Methods")
    explore = text.index("### Exploratory")
    assert declared < methods < explore < text.index("## Test metrics by configuration")
    assert "`structural` − `minilm` | test/mrr@10" in text[declared:methods]
    assert "train.lr=" in text[methods:explore] or "lr=" in text[methods:explore]
    assert summary["comparison"]["methods"].keys() == {"structural", "minilm"}


def test_resume_of_a_finished_compare_study_reruns_nothing_and_gives_the_same_comparison(compare_study, tmp_path):
    from raykd.ray_layer.tune import main as tune_main

    _, root = compare_study
    before = json.loads((root / "comparison.json").read_text())
    written = (root / "comparison.json").stat().st_mtime_ns
    dirs = {p: len(_trial_dirs(p)) for p in [root, root / "references", *(root / "tune").iterdir()]}
    work = root.parent.parent
    assert tune_main(study_args(work, "cmp", *ARGS) + ["--resume"]) == 0
    assert (root / "comparison.json").stat().st_mtime_ns > written  # the resumed study wrote it anew
    after = json.loads((root / "comparison.json").read_text())
    assert {p: len(_trial_dirs(p)) for p in dirs} == dirs  # no trial ran again
    for key in ("methods", "references", "tests", "budget", "declared"):
        assert after[key] == before[key], key


def test_dry_run_of_a_compare_study_prints_the_budget(tmp_path, capsys):
    from raykd.ray_layer.tune import main as tune_main

    assert tune_main(study_args(tmp_path, "dry", *ARGS) + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 method(s) + the reference, each 2 tuning trial(s)" in out and "= 6 + 6 = 12 trials in total" in out
    assert "GPU-hours for 12 trials" in out
    assert "minilm: tunes lr, dynamic_weights; fixed relation_heads=2" in out
