"""``python -m raykd.report`` on the session's real grid experiment (depth {1, 3} × seeds {0, 1}):
the CSV and table hold the right trials and values (recomputed here independently from Tune's
result.json), the statistics match a hand computation, and every figure is a valid PNG."""

from __future__ import annotations

import csv
import math
import struct

import pytest

from raykd.report import FIGSIZE, DPI
from tests.conftest import run_module
from tests.integration.test_tune import trial_results

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
    assert sorted(r["trial_id"] for r in rows) == sorted(finals)
    for r in rows:
        f = finals[r["trial_id"]]
        assert r["status"] == "finished" and r["error"] == "" and int(r["steps"]) == 16
        assert (int(r["depth"]), int(r["seed"])) == (f["config"]["depth"], f["config"]["seed"])
        for k in ("val/semantic_alignment", "val/mrr@10", "test/semantic_alignment", "test/structural_consistency",
                  "test/representation_compactness", "test/retained_mrr", "test/speedup_b1"):
            assert float(r[k]) == pytest.approx(f[k], rel=1e-9), k

    table = (out / "table.md").read_text(encoding="utf-8")
    assert "4 trials: 4 finished" in table and "Incomplete" not in table
    for depth in (1, 3):
        vals = [f["test/semantic_alignment"] for f in finals.values() if f["config"]["depth"] == depth]
        mean = sum(vals) / 2
        half = T_975_1DF * abs(vals[0] - vals[1]) / math.sqrt(2) / math.sqrt(2)  # sd = |a − b| / √2, sem = sd / √2
        assert f"| {depth} | 2 | {mean:.2f} ± {half:.2f} |" in table, table
    # paired difference depth 1 − depth 3 over seeds 0, 1
    by = {(f["config"]["depth"], f["config"]["seed"]): f["test/semantic_alignment"] for f in finals.values()}
    d = [by[(1, s)] - by[(3, s)] for s in (0, 1)]
    assert f"| depth=1 | depth=3 | 2 | {sum(d) / 2:.2f} ±" in table
    assert "| depth | 1.000 |" in table  # the only varied parameter explains everything

    figs = sorted(out.glob("fig_*.png"))
    assert [f.name for f in figs] == ["fig_depth_vs_mrr_10.png", "fig_depth_vs_representation_compactness.png",
                                      "fig_depth_vs_semantic_alignment.png", "fig_depth_vs_structural_consistency.png"]
    for f in figs:
        assert png_size(f) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def test_report_on_a_missing_directory_exits_2(tmp_path):
    p = run_module("raykd.report", str(tmp_path / "nope"))
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr
