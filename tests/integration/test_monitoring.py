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
    # the Train view: raykd turns Train state tracking on where it starts Ray; these worker-group trials are
    # listed as Train runs named by their trial ids (local-mode trials start no Train run: README, Live charts)
    trial_ids = {rows[-1]["trial_id"] for rows in trial_results(grid_experiment[1]).values()}
    assert trial_ids and trial_ids <= monitor.train_runs, (trial_ids, monitor.train_runs)


def _gauge_samples(lines) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of each ``ray_raykd_*`` line of the Prometheus text export."""
    out = []
    for line in lines:
        m = re.match(r'(ray_raykd_\w+)\{(.*)\} (\S+)$', line)
        if m:
            out.append((m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))))
    return out


def test_live_gauges_reach_the_prometheus_export_tagged_by_trial(grid_experiment):
    _, exp, _, monitor = grid_experiment
    trial_ids = {rows[-1]["trial_id"] for d in (exp, exp / "references") for rows in trial_results(d).values()}
    samples = _gauge_samples(monitor.gauge_lines)
    seen: dict[str, set[str]] = {}
    for name, labels, _ in samples:
        seen.setdefault(name, set()).add(labels["trial_id"])
        assert labels["method"] and labels["role"] in ("search", "confirm", "reference"), (name, labels)
    assert set(seen) >= {"ray_raykd_step", "ray_raykd_train_loss", "ray_raykd_tokens_per_s", "ray_raykd_best_metric",
                         "ray_raykd_loss_term", "ray_raykd_val_metric", "ray_raykd_samples_per_s",
                         "ray_raykd_flops_per_s", "ray_raykd_reference", "ray_raykd_trial_running"}, seen
    assert seen["ray_raykd_step"] <= trial_ids and len(seen["ray_raykd_step"]) >= 2, (seen, trial_ids)
    # on CPU: no GPU memory and no MFU (no peak to divide by)
    assert not seen.keys() & {"ray_raykd_gpu_memory_bytes", "ray_raykd_mfu"}
    # the loss terms of the objective (structural: align, relation, sentence, contrastive), one series each
    assert {labels["term"] for name, labels, _ in samples if name == "ray_raykd_loss_term"} >= {"align", "sentence"}
    # the references as their own series, set by the no-distillation reference trial
    refs = {labels["reference"]: v for name, labels, v in samples if name == "ray_raykd_reference"
            and math.isfinite(v)}
    assert set(refs) == {"teacher", "init"}, refs
    # a series is finite while its trial runs; NaN (no stale flat line) only once it has ended
    ended = {labels["trial_id"] for name, labels, v in samples if name == "ray_raykd_trial_running" and v == 0}
    for name, labels, v in samples:
        assert math.isfinite(v) or labels["trial_id"] in ended, (name, labels, v)
    assert {labels["trial_id"] for name, labels, v in samples if name == "ray_raykd_trial_running" and v == 1} \
        <= trial_ids
