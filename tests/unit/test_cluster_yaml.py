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
