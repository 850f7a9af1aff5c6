"""``python -m raykd tune --monitor`` on the session's Ray: Prometheus starts with the study (127.0.0.1, its data
under the experiment directory), scrapes Ray's metrics export while the trials run, and stops with the study;
reopened on the data it kept, its query API has a train-loss series per trial with several samples each and the
references as their own series, and headless Chromium shows them in Prometheus's graph page beside the Ray
dashboard's Jobs view (screenshots under the test's temporary directory). Skipped, with the reason, where there
is no prometheus binary or no Chromium."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import sys

import pytest

from tests.conftest import ROOT, study_args
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
NO_PROMETHEUS = ("no prometheus binary on PATH (Debian / Ubuntu: apt install prometheus; scripts/monitor.sh installs "
                 "it where root allows)")


class _Tee(io.StringIO):
    """Keeps what is written and passes it on to ``stream`` (the test's own output stays visible)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, s):
        self.stream.write(s)
        return super().write(s)


@pytest.fixture(scope="module")
def monitored_study(ray_session, tmp_path_factory):
    """A 2-trial grid study (depth 1 and 3, 120 steps, local mode) run with ``--monitor`` on the session's Ray.
    Returns (its temporary directory, the prometheus binary, what it printed)."""
    from raykd.ray_layer.live_view import prometheus_binary
    from raykd.ray_layer.tune import main as tune_main

    binary = prometheus_binary()
    if binary is None:
        pytest.skip(NO_PROMETHEUS)
    tmp = tmp_path_factory.mktemp("live")
    args = ["--monitor"] + study_args(tmp, "live", "search.algorithm=grid", "train.steps=120",
                                      "train.eval_every=60", "space={depth: {grid: [1, 3]}}",
                                      "experiment.seeds=[0]", "train.local_mode=true")
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tune_main(args)
    assert rc == 0
    return tmp, binary, out.getvalue() + err.getvalue()


def _experiment_prefix(tmp_path) -> str:
    """The Tune trial-id prefix of the study's search trials (its trial directories are trial_<id>)."""
    (first, *_) = sorted((tmp_path / "exp" / "live").glob("trial_*"))
    return first.name.removeprefix("trial_").split("_")[0]


def test_a_monitored_study_is_charted_live_by_prometheus(monitored_study):
    from raykd.ray_layer.cluster import session_dir
    from raykd.ray_layer.live_view import SCRAPE_INTERVAL_S, Prometheus

    tmp_path, binary, printed = monitored_study
    line = [x for x in printed.splitlines() if x.startswith("[monitor] Prometheus on http://127.0.0.1:")]
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
        assert refs == {"teacher", "init", "no_distill"}
        # the study's reference lines (trial_id = the study's name) stand beside the search trials to their end
        loss = server.query_range("ray_raykd_train_loss", 1800)
        last = max(float(s["values"][-1][0]) for s in loss if s["metric"]["trial_id"] in search)
        lines = server.query_range('ray_raykd_reference{trial_id="live"}', 1800)
        assert {s["metric"]["reference"] for s in lines} == {"teacher", "init", "no_distill"}, lines
        for s in lines:
            finite = [float(t) for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
            # (ended after the trials, but Ray's export may drop it up to a report interval sooner)
            assert len(finite) >= 3 and max(finite) >= last - 2 * SCRAPE_INTERVAL_S, (s["metric"], finite, last)
            assert len({v for _, v in s["values"]}) == 1, s  # flat
        running = server.query_range("ray_raykd_trial_running", 1800)
        ended = {s["metric"]["trial_id"] for s in running if float(s["values"][-1][1]) == 0.0}
        assert set(search) <= ended, (search, running)  # every trial's series says it ended
    finally:
        server.stop()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_browser_shows_each_trials_line_and_the_dashboards_jobs(monitored_study, ray_session):
    """What a user sees: Prometheus's graph page (reopened on the study's data) lists a train-loss series for
    each search trial and the references' lines (teacher, init, no_distill); the Ray dashboard's Jobs view (token
    cookie set) lists the driver's job. Ray 2.60's open-source dashboard has no Train page (only the Train state API the monitoring
    test reads), so the Jobs view is the one shown."""
    from raykd.ray_layer.cluster import session_dir
    from raykd.ray_layer.live_view import Prometheus, graph_url
    from raykd.ray_layer.monitoring import auth_token

    chromium = _chromium()
    if chromium is None:
        print("[e2e] skipped: no chromium on PATH (Debian: apt install chromium; scripts/e2e_browser.sh installs it "
              "where root allows)")
        pytest.skip("no chromium on PATH (apt install chromium)")
    spec = importlib.util.spec_from_file_location("e2e_browser", ROOT / "scripts" / "e2e_browser.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    tmp_path, binary, _ = monitored_study
    shots = tmp_path / "screenshots"
    shots.mkdir()
    search = {rows[-1]["trial_id"] for rows in trial_results(tmp_path / "exp" / "live").values()}
    assert len(search) == 2, search
    server = Prometheus(binary, session_dir(), tmp_path / "exp" / "live" / "prometheus").start()
    browser = None
    try:
        browser = e2e.Browser(chromium)
        graph = browser.look(graph_url(server.base, ("ray_raykd_train_loss",
                                                     "max by (reference) (ray_raykd_reference)"), "30m"),
                             shots / "prometheus_graph.png", 10)
        # the legend names every series: a train-loss line per search trial, the teacher and init lines
        assert all(f'trial_id="{t}"' in graph for t in search), graph[-3000:]
        assert all(f'reference="{r}"' in graph for r in ("teacher", "init", "no_distill")), graph[-3000:]
        dashboard = "http://" + ray_session._private.worker.get_dashboard_url()
        token = auth_token()
        cookie = [{"name": "ray-authentication-token", "value": token, "url": dashboard}] if token else []
        jobs = browser.look(dashboard + "/#/jobs", shots / "dashboard_jobs.png", 8, cookie)
        assert "Job ID" in jobs and re.search(r"\b0[0-9a-f]{7}\b", jobs), jobs[:3000]
        for png in ("prometheus_graph.png", "dashboard_jobs.png"):
            assert (shots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (shots / png).stat().st_size > 20_000
        print(f"[e2e] screenshots in {shots}")
    finally:
        if browser is not None:
            browser.close()
        server.stop()
