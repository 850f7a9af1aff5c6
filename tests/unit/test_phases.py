"""The per-phase timing line of a study: phases in the order they ran (a phase timed twice adds up), the total,
and the evaluation share pooled over every trial's last result row, nested experiments included."""

from __future__ import annotations

import json
import re
import time

import pytest

from raykd.ray_layer.phases import PhaseClock, evaluation_share

pytestmark = pytest.mark.unit


def test_phases_add_up_in_the_order_they_first_ran():
    clock = PhaseClock()
    with clock("prepare"):
        time.sleep(0.02)
    with clock("search"):
        time.sleep(0.01)
    with clock("prepare"):
        time.sleep(0.02)
    assert list(clock.seconds) == ["prepare", "search"]
    assert clock.seconds["prepare"] >= 0.04 and clock.seconds["search"] >= 0.01
    assert re.fullmatch(r"\[tune\] time by phase: prepare 0 s · search 0 s · total 0 s · evaluation 25 % of the "
                        r"trials' time", clock.line(0.25))
    assert clock.line(None).endswith("total 0 s")


def _trial(path, rows):
    path.mkdir(parents=True)
    (path / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_the_evaluation_share_pools_every_trials_last_row(tmp_path):
    _trial(tmp_path / "a" / "trial_1", [{"time/eval_s": 1.0, "time_total_s": 2.0}, {"time/eval_s": 3.0,
                                                                                    "time_total_s": 10.0}])
    _trial(tmp_path / "a" / "references" / "trial_2", [{"time/eval_s": 5.0, "time_total_s": 10.0}])
    _trial(tmp_path / "b" / "trial_3", [{"step": 0}])  # an older run: no evaluation seconds
    _trial(tmp_path / "c" / "trial_4", [{"time/eval_s": 2.0, "time_total_s": 20.0}])
    assert evaluation_share(tmp_path / "a") == pytest.approx(8.0 / 20.0)
    assert evaluation_share(tmp_path / "a", tmp_path / "c") == pytest.approx(10.0 / 40.0)
    assert evaluation_share(tmp_path / "b") is None
