"""The live view's pieces without Ray: the scrape configuration points at the Ray session's service-discovery
file, the graph URL carries raykd's queries, a missing binary is a message (the study runs on), and a real
Prometheus (where installed) starts bound to 127.0.0.1 with its data where it was told, and stops."""

from __future__ import annotations

import json
import urllib.parse

import pytest
import yaml

from raykd.ray_layer import live_view as LV

pytestmark = pytest.mark.unit


def test_the_scrape_configuration_reads_the_sessions_targets(tmp_path):
    cfg = yaml.safe_load(LV.scrape_config(tmp_path / "session"))
    assert cfg["global"]["scrape_interval"] == f"{LV.SCRAPE_INTERVAL_S}s"
    (job,) = cfg["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "session" / "prom_metrics_service_discovery.json")]


def test_the_graph_url_has_one_panel_per_query():
    url = LV.graph_url("http://127.0.0.1:9999", ("a", "b{c=\"d\"}"))
    q = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert url.startswith("http://127.0.0.1:9999/graph?") and q["g0.expr"] == ["a"] and q["g1.expr"] == ['b{c="d"}']
    assert q["g0.tab"] == ["0"]


def test_without_a_binary_the_study_runs_on_and_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    lines = []
    assert LV.start_live_view(tmp_path, tmp_path / "p", log=lines.append) is None
    assert len(lines) == 1 and "apt install prometheus" in lines[0]
    assert LV.main(["--session-dir", str(tmp_path)]) == 2  # no Ray session there: one error line


def test_a_real_prometheus_starts_on_loopback_with_its_data_where_told_and_stops(tmp_path):
    binary = LV.prometheus_binary()
    if binary is None:
        pytest.skip("no prometheus binary on PATH (apt install prometheus)")
    session = tmp_path / "session"
    session.mkdir()
    (session / "prom_metrics_service_discovery.json").write_text(json.dumps([]))
    server = LV.Prometheus(binary, session, tmp_path / "data").start()
    try:
        assert server.base.startswith("http://127.0.0.1:") and (tmp_path / "data" / "tsdb").is_dir()
        assert server.query_range("up", 60) == []  # no targets: nothing scraped, the API answers
    finally:
        server.stop()
    assert server.proc is None
