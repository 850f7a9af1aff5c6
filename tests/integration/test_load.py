"""Load: 12 tiny trials queued on the session's 2-CPU Ray (Optuna + ASHA, two at a time): every
trial finishes or is stopped, the Ray processes' memory stays bounded, the object store stays far
from full, and checkpoints are pruned to ``checkpoint_keep``. (scripts/load_test.sh: the same at 50.)"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from load_test import load_study_args  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
TRIALS = 12


def test_twelve_queued_trials_finish_with_bounded_resources(ray_session, grid_experiment, tmp_path, capsys):
    from raykd.ray_layer.monitoring import ResourceWatch
    from raykd.results.report import load_experiment
    from raykd.ray_layer.tune import main as tune_main

    _, _, work, _ = grid_experiment
    args = load_study_args(tmp_path, TRIALS) + [f"data.prepared={work / 'prepared'}"]
    with ResourceWatch(period_s=2.0) as watch:
        watch.sample()
        idle = watch.peak_rss
        rc = tune_main(args)
    records = load_experiment(tmp_path / "exp" / "load")
    statuses = sorted(r.status for r in records)
    store_total = ray_session.cluster_resources()["object_store_memory"]
    with capsys.disabled():
        print(f"\n[load] {len(records)} trials: {statuses.count('finished')} finished, "
              f"{statuses.count('stopped early')} stopped early; Ray RSS idle {idle / 2**30:.2f} GiB, peak "
              f"{watch.peak_rss / 2**30:.2f} GiB; object store peak {watch.peak_object_store / 2**20:.1f} MiB "
              f"of {store_total / 2**20:.0f} MiB ({watch.samples} samples)")
    assert rc == 0
    assert len(records) == TRIALS and set(statuses) <= {"finished", "stopped early"}
    assert statuses.count("stopped early") >= 1  # ASHA really stopped some
    assert watch.samples >= 10
    assert watch.peak_rss < idle + 8 * 2**30  # two concurrent tiny trials: bounded, no leak per trial
    assert watch.peak_object_store < 0.5 * store_total
    for r in records:
        kept = [p for p in (ROOT / r.path).glob("train/*/checkpoint_*") if p.is_dir()]
        assert len(kept) <= 1, (r.trial_id, kept)
