"""The Ray dashboard and the node's Prometheus export as seen while the session's grid experiment
ran (``ClusterMonitor`` in conftest): token auth on (401 without, 200 with), the trials' actors
listed, and raykd's live gauges exported per trial id."""

from __future__ import annotations

import math
import re

import pytest

from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_dashboard_requires_the_token_and_lists_the_trials(grid_experiment):
    rc, _, _, monitor = grid_experiment
    assert rc == 0
    assert monitor.dashboard.startswith("http://127.0.0.1:")
    assert monitor.codes_without_token == {401}
    assert monitor.codes_with_token == {200}
    assert any("TrainController" in c for c in monitor.actor_classes), monitor.actor_classes
    assert any("RayTrainWorker" in c for c in monitor.actor_classes), monitor.actor_classes
    assert monitor.jobs >= 1


def test_live_gauges_reach_the_prometheus_export_tagged_by_trial(grid_experiment):
    _, exp, _, monitor = grid_experiment
    trial_ids = {rows[-1]["trial_id"] for d in (exp, exp / "references") for rows in trial_results(d).values()}
    seen: dict[str, set[str]] = {}
    for line in monitor.gauge_lines:
        m = re.match(r'(ray_raykd_\w+)\{.*trial_id="([^"]+)".*\} (\S+)$', line)
        if m:
            seen.setdefault(m.group(1), set()).add(m.group(2))
            assert math.isfinite(float(m.group(3))), line
    assert set(seen) >= {"ray_raykd_step", "ray_raykd_train_loss", "ray_raykd_tokens_per_s", "ray_raykd_best_metric"}, seen
    assert seen["ray_raykd_step"] <= trial_ids and len(seen["ray_raykd_step"]) >= 2, (seen, trial_ids)
