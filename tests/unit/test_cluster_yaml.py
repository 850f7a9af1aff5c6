"""cluster.yaml: valid for Ray's own cluster-launcher schema, and safe by default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
PATH = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _schema_errors(cfg: dict) -> list[str]:
    """What Ray's cluster-launcher schema (the ``ray-schema.json`` that ``ray up`` validates against, shipped
    in the public ``ray.autoscaler`` package) says is wrong with ``cfg``."""
    import json
    from importlib.resources import files

    import jsonschema

    schema = json.loads((files("ray.autoscaler") / "ray-schema.json").read_text())
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(cfg)]


def test_cluster_yaml_passes_rays_schema():
    cfg = yaml.safe_load(PATH.read_text())
    assert _schema_errors(cfg) == []
    # the check can fail: a misspelt key and a wrong type are caught
    assert _schema_errors({**cfg, "max_worker": 2}) and _schema_errors({**cfg, "max_workers": "many"})


def test_cluster_yaml_is_safe_by_default():
    text = PATH.read_text()
    cfg = yaml.safe_load(text)
    assert "0.0.0.0/0" not in text and "--dashboard-host=0.0.0.0" not in text
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]  # SSH only
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-gpu", cfg["docker"]["image"])
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "/home/ray/.ray/auth_token" in cfg["file_mounts"]
    assert "torch==2.13.0" in " ".join(cfg["setup_commands"])


def test_the_head_provisions_the_live_charts_bound_to_loopback():
    cfg = yaml.safe_load(PATH.read_text())
    head = cfg["head_start_ray_commands"]
    (start,) = [c for c in head if "ray start" in c]
    for var in ("RAY_GRAFANA_HOST=http://127.0.0.1:3000", "RAY_GRAFANA_IFRAME_HOST=http://127.0.0.1:3000",
                "RAY_PROMETHEUS_HOST=http://127.0.0.1:9090", "RAY_TRAIN_ENABLE_STATE_TRACKING=1"):
        assert var in start, var
    assert all("RAY_TRAIN_ENABLE_STATE_TRACKING=1" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)
    # raykd's dashboard (the file that ships in the package) provisioned with Ray's, both servers on loopback
    (copy,) = [c for c in head if "raykd_dashboard.json" in c]
    src = copy.split()[1].replace("/home/ray/raykd/", "")
    assert (PATH.parent / src).exists() and copy.split()[2].endswith("/metrics/grafana/dashboards/")
    prom = [c for c in head if c.startswith("nohup prometheus")]
    graf = [c for c in head if c.startswith("nohup grafana-server")]
    assert len(prom) == 1 and "--web.listen-address=127.0.0.1:9090" in prom[0]
    assert len(graf) == 1 and "cfg:server.http_addr=127.0.0.1" in graf[0]
    setup = " ".join(cfg["head_setup_commands"])
    assert "install -y -q prometheus" in setup and "install -y -q grafana" in setup
