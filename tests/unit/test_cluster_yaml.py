"""cluster.yaml: valid for Ray's own cluster-launcher schema, and safe by default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
PATH = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(PATH.read_text())))


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
