"""The report's reading of Tune's files, on a hand-written experiment directory in Tune's format:
one record per trial id (a trial restarted into a suffixed directory counts once), statuses from
experiment_state + planned steps, the innermost error line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from raykd.errors import RaykdError
from raykd.results.report import build_report, load_experiment

pytestmark = pytest.mark.unit


def _trial(exp, dirname, trial_id, depth, seed, steps, planned=16, error=None, sa=80.0):
    d = exp / dirname
    d.mkdir(parents=True)
    rows = []
    for s in range(8, steps + 1, 8):
        r = {"trial_id": trial_id, "step": s, "config": {"depth": depth, "seed": seed}, "val/semantic_alignment": sa + s}
        if s == planned:
            r["test/semantic_alignment"] = sa + s - 1
        rows.append(r)
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "params.json").write_text(json.dumps({"depth": depth, "seed": seed}))
    (d / "provenance.json").write_text(json.dumps({"config": {"train": {"steps": planned}, "experiment": {
        "metric": "val/semantic_alignment", "mode": "max"}}}))
    if error:
        (d / "error.txt").write_text(f"Failure # 1\nTraceback (most recent call last):\n  File \"x.py\"\n"
                                     f"ray.exceptions.RayTaskError: wrapped\n{error}\n")


def test_statuses_suffixed_restarts_and_errors(tmp_path):
    exp = tmp_path / "exp"
    _trial(exp, "trial_a", "a", 1, 0, 16)
    _trial(exp, "trial_b", "b", 1, 1, 8)  # stopped early by the scheduler
    _trial(exp, "trial_c", "c", 3, 0, 8, error="ValueError: projection_dim 0 must be positive")
    (exp / "trial_d").mkdir()  # killed before its first report …
    _trial(exp, "trial_d_8b21", "d", 3, 1, 16)  # … and restarted in a suffixed directory
    _trial(exp, "trial_e", "e", 3, 1, 8)  # running when the driver died
    state = {"trial_data": [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in
                            [("a", "TERMINATED"), ("b", "TERMINATED"), ("c", "ERROR"), ("d", "TERMINATED"),
                             ("e", "RUNNING")]]}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    trials = {t.trial_id: t for t in load_experiment(exp)}
    assert sorted(trials) == ["a", "b", "c", "d", "e"]
    assert {k: t.status for k, t in trials.items()} == {"a": "finished", "b": "stopped early", "c": "error",
                                                         "d": "finished", "e": "unfinished"}
    assert trials["c"].error == "ValueError: projection_dim 0 must be positive"
    assert trials["d"].path.endswith("trial_d_8b21") and trials["d"].seed == 1

    summary = build_report(exp, tmp_path / "report")
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert [r["trial_id"] for r in rows] == ["a", "b", "c", "d", "e"]
    assert rows[0]["test/semantic_alignment"] == "95.0" and rows[1]["test/semantic_alignment"] == ""
    md = summary["markdown"]
    assert "Incomplete:" in md and "1 unfinished" in md and "projection_dim 0 must be positive" in md
    assert summary["counts"] == {"finished": 2, "stopped early": 1, "error": 1, "unfinished": 1}


def test_not_an_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(RaykdError, match="no such experiment"):
        load_experiment(tmp_path / "missing")
    with pytest.raises(RaykdError, match="no trial directories"):
        load_experiment(tmp_path)


def test_a_storage_uri_is_fetched_without_checkpoints(tmp_path):
    exp = tmp_path / "exp"
    _trial(exp, "trial_a", "a", 1, 0, 16)
    (exp / "trial_a" / "train" / "a" / "checkpoint_1").mkdir(parents=True)
    (exp / "trial_a" / "train" / "a" / "checkpoint_1" / "model.safetensors").write_bytes(b"x" * 1000)
    summary = build_report(exp.as_uri(), tmp_path / "report")
    assert summary["counts"]["finished"] == 1
    fetched = load_experiment(exp.as_uri())
    assert fetched[0].metrics["test/semantic_alignment"] == 95.0
    assert not list(__import__("pathlib").Path(fetched[0].path).rglob("*.safetensors"))


def test_errored_grid_trials_without_results_stay_separate(tmp_path):
    exp = tmp_path / "exp"
    for tid in ("9df98_00001", "9df98_00003"):
        d = exp / f"trial_{tid}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"ablate": "bogus", "seed": 0}))
        (d / "error.txt").write_text("Traceback …\nraykd.config.ConfigError: method.params.ablate: 'bogus' is not one of none\n")
    state = {"trial_data": [[json.dumps({"trial_id": t, "status": "ERROR", "relative_logdir": f"trial_{t}"}), "{}"]
                            for t in ("9df98_00001", "9df98_00003")]}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    trials = load_experiment(exp)
    assert [t.trial_id for t in trials] == ["9df98_00001", "9df98_00003"]
    assert all(t.status == "error" and "'bogus'" in t.error for t in trials)


def test_checkpoints_the_snapshot_does_not_list_are_pruned(tmp_path):
    import pyarrow.fs as pafs

    from raykd.ray_layer.pruning import prune_unlisted_checkpoints

    run = tmp_path / "run"
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c"):
        (run / name).mkdir(parents=True)
        (run / name / "model.safetensors").write_bytes(b"x")
    fs = pafs.LocalFileSystem()
    assert prune_unlisted_checkpoints(fs, str(run)) == []  # no snapshot: nothing is touched
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_c"}]}))
    assert sorted(p.rsplit("/", 1)[-1] for p in prune_unlisted_checkpoints(fs, str(run))) == ["checkpoint_a",
                                                                                              "checkpoint_b"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_c", "checkpoint_manager_snapshot.json"]


def test_against_pairs_one_configuration_with_each_other_by_seed_and_holm_adjusts():
    from raykd.results.report import TrialRecord, against
    from raykd.results.stats import holm, paired_t

    vals = {"ours": [0.30, 0.32, 0.31], "a": [0.20, 0.21, 0.23], "b": [0.31, 0.30, 0.33]}
    trials = [TrialRecord(f"{m}{s}", "", "finished", params={"method": m}, seed=s,
                          metrics={"test/mrr@10": v, "test/semantic_alignment": 100 * v + s})
              for m, vs in vals.items() for s, v in enumerate(vs)]
    trials.append(TrialRecord("lone", "", "finished", params={"method": "c"}, seed=7, metrics={"test/mrr@10": 0.9}))
    rows = against(trials, ["method"], {"method": "ours"}, ["test/mrr@10", "test/semantic_alignment"])
    assert [(r["other"], r["metric"]) for r in rows] == [(("a",), "test/mrr@10"), (("b",), "test/mrr@10"),
                                                         (("a",), "test/semantic_alignment"),
                                                         (("b",), "test/semantic_alignment")]  # c shares no seed
    expect = paired_t(vals["ours"], vals["a"])
    assert rows[0]["diff"] == pytest.approx(np.mean(np.subtract(vals["ours"], vals["a"])))
    assert rows[0]["p"] == pytest.approx(expect["p"])
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    assert rows[0]["significant"] and not rows[1]["significant"]
    with pytest.raises(RaykdError, match="matches 0 finished configurations"):
        against(trials, ["method"], {"method": "nope"}, ["test/mrr@10"])
    with pytest.raises(RaykdError, match="sampler is not a varied parameter"):
        against(trials, ["method"], {"sampler": "uniform"}, ["test/mrr@10"])


def test_reference_means_average_each_roles_finished_rows_and_leave_out_the_rest():
    from raykd.results.report import TrialRecord, reference_means

    m = "val/mrr@10"
    refs = [TrialRecord("teacher-s0", "", "finished", seed=0, metrics={m: 0.35}, role="teacher"),
            TrialRecord("teacher-s1", "", "finished", seed=1, metrics={m: 0.35}, role="teacher"),
            TrialRecord("init-s0", "", "finished", seed=0, metrics={m: 0.06}, role="init"),
            TrialRecord("init-s1", "", "finished", seed=1, metrics={m: 0.08}, role="init"),
            TrialRecord("no_distill-s0", "", "finished", seed=0, metrics={m: 0.07}, role="no_distill"),
            TrialRecord("no_distill-s1", "", "error", seed=1, metrics={m: 0.50}, role="no_distill"),  # not finished
            TrialRecord("no_distill-s2", "", "finished", seed=2, metrics={m: float("nan")}, role="no_distill"),
            TrialRecord("no_distill-s3", "", "finished", seed=3, metrics={}, role="no_distill")]
    means = reference_means(refs, m)
    assert means == pytest.approx({"teacher": 0.35, "init": 0.07, "no_distill": 0.07})
    assert reference_means(refs[:2], m) == pytest.approx({"teacher": 0.35})  # a role without rows is left out
    assert reference_means(refs, "val/other") == {}
