"""``python -m raykd.report`` on the session's real grid experiment (depth {1, 3} × seeds {0, 1}):
the CSV and table hold the right trials and values (recomputed here independently from Tune's
result.json), the statistics match a hand computation, and every figure is a valid PNG."""

from __future__ import annotations

import csv
import math
import struct

import pytest

from raykd.results.report import FIGSIZE, DPI
from tests.conftest import run_module
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
T_975_1DF = 12.706204736174707  # Student's t, 97.5 % quantile, 1 degree of freedom


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_report_cli_writes_csv_table_and_figures(grid_experiment, tmp_path):
    rc, exp, _, _ = grid_experiment
    assert rc == 0
    out = tmp_path / "report"
    p = run_module("raykd.report", str(exp), "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    results = trial_results(exp)
    finals = {rows[-1]["trial_id"]: rows[-1] for rows in results.values()}

    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    trial_rows = [r for r in rows if r["role"] == "trial"]
    assert sorted(r["trial_id"] for r in trial_rows) == sorted(finals)
    for r in trial_rows:
        f = finals[r["trial_id"]]
        assert r["status"] == "finished" and r["error"] == "" and int(r["steps"]) == 16
        assert (int(r["depth"]), int(r["seed"])) == (f["config"]["depth"], f["config"]["seed"])
        for k in ("val/semantic_alignment", "val/mrr@10", "test/semantic_alignment", "test/structural_consistency",
                  "test/representation_compactness", "test/retained_mrr", "test/speedup_b1", "test/mlm_loss",
                  "test/semantic_alignment_ci_low", "test/mrr@10_ci_high"):
            assert float(r[k]) == pytest.approx(f[k], rel=1e-9), k

    # references: one row per role and seed, read back independently from the reference trials' result.json
    refs = {rows_[0]["config"]["seed"]: rows_ for rows_ in trial_results(exp / "references").values()}
    assert sorted(refs) == [0, 1]
    by_id = {r["trial_id"]: r for r in rows if r["role"] != "trial"}
    assert sorted(by_id) == sorted(f"{role}-s{seed}" for role in ("teacher", "init", "no_distill") for seed in (0, 1))
    for seed, rr in refs.items():
        start, final = rr[0], rr[-1]
        assert start["step"] == 0 and final["step"] == 16
        assert float(by_id[f"init-s{seed}"]["test/mrr@10"]) == pytest.approx(start["test/mrr@10"], rel=1e-9)
        assert float(by_id[f"no_distill-s{seed}"]["test/mrr@10"]) == pytest.approx(final["test/mrr@10"], rel=1e-9)
        teacher = by_id[f"teacher-s{seed}"]
        assert float(teacher["test/semantic_alignment"]) == pytest.approx(100.0, abs=1e-6)
        assert float(teacher["test/mrr@10"]) == pytest.approx(start["test/teacher_mrr@10"], rel=1e-9)
    # every trial's curve starts where it started: a step-0 row before any training
    for rr in results.values():
        assert rr[0]["step"] == 0 and "val/mrr@10" in rr[0]

    table = (out / "table.md").read_text(encoding="utf-8")
    assert "4 trials: 4 finished" in table and "Incomplete" not in table
    for depth in (1, 3):
        vals = [f["test/semantic_alignment"] for f in finals.values() if f["config"]["depth"] == depth]
        mean = sum(vals) / 2
        half = T_975_1DF * abs(vals[0] - vals[1]) / math.sqrt(2) / math.sqrt(2)  # sd = |a − b| / √2, sem = sd / √2
        assert f"| {depth} | 2 | {mean:.2f} ± {half:.2f} |" in table, table
    # paired difference depth 1 − depth 3 over seeds 0, 1 on the lead metric (test/mrr@10)
    by = {(f["config"]["depth"], f["config"]["seed"]): f["test/mrr@10"] for f in finals.values()}
    d = [by[(1, s)] - by[(3, s)] for s in (0, 1)]
    assert f"| depth=1 | depth=3 | 2 | {sum(d) / 2:.4f} ±" in table, table
    assert "| depth | 1.000 |" in table  # the only varied parameter explains everything
    # gains over init and no_distill, paired by seed
    for role in ("init", "no_distill"):
        ref = {seed: (rr[0] if role == "init" else rr[-1])["test/mrr@10"] for seed, rr in refs.items()}
        g = [by[(3, s)] - ref[s] for s in (0, 1)]
        assert f"| depth=3 | `{role}` | 2 | {sum(g) / 2:.4f} ±" in table, table
    assert "| `teacher` | 2 | 100.00 ± 0.00 |" in table, table

    figs = sorted(out.glob("fig_*.png"))
    assert [f.name for f in figs] == ["fig_depth_vs_mrr_10.png", "fig_depth_vs_representation_compactness.png",
                                      "fig_depth_vs_semantic_alignment.png", "fig_depth_vs_structural_consistency.png"]
    for f in figs:
        assert png_size(f) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def test_report_on_a_missing_directory_exits_2(tmp_path):
    p = run_module("raykd.report", str(tmp_path / "nope"))
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr
