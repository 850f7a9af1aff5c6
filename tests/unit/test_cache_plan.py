"""What the teacher cache stores for a study, and which trials may read it (no Ray, no teacher)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd import config as C
from raykd.ray_layer.cache import cache_use, structural_layers, study_layers
from raykd.ray_layer.trial import trial_cache
from raykd.trial_spec import trial_config

pytestmark = pytest.mark.unit
SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


def test_structural_layers_follow_the_uniform_map_plus_the_last_layer():
    assert structural_layers(24, 6, 2) == [4, 8, 24]
    assert structural_layers(24, 6, 6) == [4, 8, 12, 16, 20, 24]
    assert structural_layers(6, 3, 1) == [2, 6]


def test_study_layers_cover_every_searched_depth_and_nothing_more():
    cfg = C.load_config(SMOKE)  # 6-layer teacher → 3 layers, depth ∈ {1, 2, 3}
    assert study_layers(cfg, 6) == [2, 4, 6]
    cfg = C.load_config(SMOKE, {"space": {"projection_dim": {"choice": [32, 64]}}, "method.depth": 1})
    assert study_layers(cfg, 6) == [2, 6]


def test_each_trial_reads_only_its_own_layers_or_runs_online():
    cfg = C.load_config(SMOKE)
    plan = {"base": C.to_dict(cfg), "cache": {"dir": "/x", "layers": [2, 4, 6], "hidden": 64, "teacher_layers": 6}}
    assert trial_cache(trial_config(plan["base"], {"depth": 1}), plan) == {"layers": [2, 6], "hidden": 64}
    assert trial_cache(trial_config(plan["base"], {"depth": 3, "sampler": "random_masked"}), plan) is None
    assert trial_cache(trial_config(plan["base"], {"method.name": "tinybert"}), plan) is None
    assert trial_cache(trial_config(plan["base"], {"depth": 3}), {**plan, "cache": None}) is None
    assert cache_use("structural", "domain_aware") is None and "minillm" in cache_use("minillm", "uniform")


def test_cache_size_limit_must_be_positive():
    with pytest.raises(C.ConfigError, match="teacher.cache_max_gb"):
        C.load_config(SMOKE, {"teacher.cache_max_gb": 0})
