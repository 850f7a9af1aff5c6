"""The Ray dashboard and the node's Prometheus export as seen while the session's grid experiment
ran (``ClusterMonitor`` in conftest): token auth on (401 without, 200 with), the trials' actors
listed, and raykd's live gauges exported per trial id."""

from __future__ import annotations

import math
import os
import re
import time

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
    from raykd.results.report import experiment_metric, load_experiment, load_references, reference_means

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
    # the references as their own series: each no-distillation reference trial's teacher and init while it runs,
    # then the study's flat lines (trial_id = the study's name) — each role's mean over the reference rows
    refs = [(labels["trial_id"], labels["reference"], v) for name, labels, v in samples
            if name == "ray_raykd_reference" and math.isfinite(v)]
    assert {r for t, r, _ in refs if t in trial_ids} == {"teacher", "init"}, refs
    study = {r: v for t, r, v in refs if t == "grid"}
    metric, _ = experiment_metric(load_experiment(exp))
    assert study == pytest.approx(reference_means(load_references(exp), metric), rel=1e-6), refs
    assert set(study) == {"teacher", "init", "no_distill"}, refs
    # a series is finite while its trial runs; NaN (no stale flat line) only once it has ended
    ended = {labels["trial_id"] for name, labels, v in samples if name == "ray_raykd_trial_running" and v == 0}
    for name, labels, v in samples:
        assert math.isfinite(v) or labels["trial_id"] in ended, (name, labels, v)
    assert {labels["trial_id"] for name, labels, v in samples if name == "ray_raykd_trial_running" and v == 1} \
        <= trial_ids


def _exported(ray, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of each ``name`` series in the node's Prometheus export now."""
    import urllib.request

    url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        lines = r.read().decode().splitlines()
    return [(labels, v) for n, labels, v in _gauge_samples(lines) if n == name]


def test_a_value_set_once_stays_exported_until_its_holder_ends(ray_session):
    """Ray 2.60's metrics agent drops a gauge series that is not set again within two report intervals (2 s
    each in this session): a plain gauge set once leaves the export seconds later, while a reference point held
    by ``HeldGauges`` stays (re-sent every second) until ``end``; then it leaves too. With a lease, re-sending stops
    once nothing was set for that long (a trial Tune stopped while keeping its actor)."""
    from ray.util.metrics import Gauge

    from raykd.ray_layer.monitoring import HeldGauges, refresh_period_s

    assert refresh_period_s() == 1.0  # half the session's 2 s report interval
    tag = f"held-{os.getpid()}"
    plain = Gauge("raykd_reference", description="x", tag_keys=("trial_id", "method", "role", "reference"))
    plain.set(0.5, tags={"trial_id": tag, "method": "plain", "role": "reference", "reference": "teacher"})
    lines = HeldGauges({"trial_id": tag, "method": "held", "role": "reference"})
    leased = HeldGauges({"trial_id": tag, "method": "leased", "role": "reference"}, lease_s=2.0)
    seen = []
    try:
        lines.set_references({"teacher": 0.25, "init": float("nan"), "no_distill": None})  # only finite ones held
        leased.set_references({"teacher": 0.75})  # re-sent for 2 s only: nothing set it again
        for _ in range(7):  # 14 s: over three times the 4 s Ray keeps a value not set again
            time.sleep(2)
            seen.append({(labels["method"], labels["reference"]): v
                         for labels, v in _exported(ray_session, "ray_raykd_reference") if labels["trial_id"] == tag})
    finally:
        lines.end()
        leased.end()
    assert all(s.get(("held", "teacher")) == 0.25 and ("held", "init") not in s for s in seen[1:]), seen
    assert ("plain", "teacher") not in seen[-1] and ("plain", "teacher") not in seen[-2], seen
    assert seen[1].get(("leased", "teacher")) == 0.75, seen  # still there 4 s on: re-sent until its lease ran out
    assert ("leased", "teacher") not in seen[-1] and ("leased", "teacher") not in seen[-2], seen
    after = []
    for _ in range(6):  # 12 s
        time.sleep(2)
        after.append([v for labels, v in _exported(ray_session, "ray_raykd_reference") if labels["trial_id"] == tag])
    # the line ends within two report intervals of the last re-send: no stale flat line (and no NaN in the export)
    assert after[2:] == [[]] * 4, after
