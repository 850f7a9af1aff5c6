"""``python -m raykd tune --monitor`` on the session's Ray: Prometheus starts with the study (127.0.0.1, its data
under the experiment directory), scrapes Ray's metrics export while the trials run, and stops with the study;
reopened on the data it kept, its query API has a train-loss series per trial with several samples each and the
references as their own series. Skipped, with the reason, where there is no prometheus binary."""

from __future__ import annotations

import re

import pytest

from tests.conftest import study_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _experiment_prefix(tmp_path) -> str:
    """The Tune trial-id prefix of the study's search trials (its trial directories are trial_<id>)."""
    (first, *_) = sorted((tmp_path / "exp" / "live").glob("trial_*"))
    return first.name.removeprefix("trial_").split("_")[0]


def test_a_monitored_study_is_charted_live_by_prometheus(ray_session, tmp_path, capsys):
    from raykd.ray_layer.cluster import session_dir
    from raykd.ray_layer.live_view import Prometheus, prometheus_binary
    from raykd.ray_layer.tune import main as tune_main

    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary on PATH (Debian / Ubuntu: apt install prometheus; scripts/monitor.sh "
                    "installs it where root allows)")
    args = ["--monitor"] + study_args(tmp_path, "live", "search.algorithm=grid", "train.steps=120",
                                      "train.eval_every=60", "space={depth: {grid: [1, 3]}}",
                                      "experiment.seeds=[0]", "train.local_mode=true")
    assert tune_main(args) == 0
    out = capsys.readouterr()
    line = [x for x in (out.out + out.err).splitlines() if x.startswith("[monitor] Prometheus on http://127.0.0.1:")]
    assert len(line) == 1 and "graph?g0.expr=ray_raykd_train_loss" in line[0], line
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line[0]).group(1))
    data = tmp_path / "exp" / "live" / "prometheus"
    assert (data / "tsdb").is_dir() and (data / "prometheus.yml").exists()
    import urllib.request

    with pytest.raises(OSError):  # stopped with the study
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=3)
    server = Prometheus(binary, session_dir(), data).start()  # what it recorded during the study
    try:
        # samples actually scraped (count_over_time), not the query's 5-minute look-back filling the range
        counts = server.query_range("count_over_time(ray_raykd_train_loss[30m])", 60)
        scraped = {s["metric"]["trial_id"]: int(float(s["values"][-1][1])) for s in counts}
        search = {t: n for t, n in scraped.items() if t.startswith(_experiment_prefix(tmp_path))}
        assert len(search) == 2 and min(search.values()) >= 3, scraped
        refs = {s["metric"]["reference"] for s in server.query_range("ray_raykd_reference", 1800)}
        assert refs == {"teacher", "init"}
        running = server.query_range("ray_raykd_trial_running", 1800)
        ended = {s["metric"]["trial_id"] for s in running if float(s["values"][-1][1]) == 0.0}
        assert set(search) <= ended, (search, running)  # every trial's series says it ended
    finally:
        server.stop()
