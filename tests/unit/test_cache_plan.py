"""What the teacher cache stores for a study, and which trials may read it (no Ray, no teacher)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd import config as C
from raykd.ray_layer.cache.builder import structural_layers
from raykd.ray_layer.cache.masked_lm import cache_use, study_layers
from raykd.ray_layer.trial import trial_cache
from raykd.train.trial_spec import StudyPlan, trial_config

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
    plan = StudyPlan(base=C.to_dict(cfg), cache={"dir": "/x", "layers": [2, 4, 6], "hidden": 64, "teacher_layers": 6})
    assert trial_cache(trial_config(plan.base, {"depth": 1}), plan) == {"layers": [2, 6], "hidden": 64}
    assert trial_cache(trial_config(plan.base, {"depth": 3, "sampler": "random_masked"}), plan) is None
    assert trial_cache(trial_config(plan.base, {"method.name": "tinybert"}), plan) is None
    assert trial_cache(trial_config(plan.base, {"depth": 3}), StudyPlan(base=plan.base)) is None
    assert cache_use("structural", "domain_aware") is None and "minillm" in cache_use("minillm", "uniform")


def test_cache_size_limit_must_be_positive():
    with pytest.raises(C.ConfigError, match="teacher.cache_max_gb"):
        C.load_config(SMOKE, {"teacher.cache_max_gb": 0})


CAUSAL = SMOKE.parent / "causal_smoke.yaml"


def test_cache_kinds_are_named_and_the_logit_cache_is_causal_only():
    with pytest.raises(C.ConfigError, match="teacher.cache.*none, hidden, logits, both"):
        C.load_config(CAUSAL, {"teacher.cache": "topk"})
    assert C.load_config(CAUSAL, {"teacher.cache": True}).teacher.cache == "hidden"
    assert C.load_config(SMOKE, {"teacher.cache": False}).teacher.cache == "none"
    with pytest.raises(C.ConfigError, match="causal_lm"):
        C.load_config(SMOKE, {"teacher.cache": "logits"})
    with pytest.raises(C.ConfigError, match="teacher.cache_topk"):
        C.load_config(CAUSAL, {"teacher.cache_topk": 0})


def test_a_causal_study_caches_what_its_trials_read_and_each_trial_takes_its_part():
    from raykd.ray_layer.cache.causal_lm import causal_needs, study_cache_request, trial_causal_cache

    def searched(cfg):
        return lambda key: [v for k, spec in cfg.space.items() if C.resolve_key(k) == key
                            for v in next(iter(spec.values()))]

    # causal_smoke: kd over temperatures {1, 2} and student depths {2, 3}; logits only, K = the largest k
    cfg = C.load_config(CAUSAL, {"teacher.cache": "logits", "space": {
        "method.params.temperature": {"choice": [1.0, 2.0]}, "teacher.cache_topk": {"grid": [8, 128]}}})
    req = study_cache_request(cfg, 6, searched(cfg))
    assert req == {"layers": [], "topk": 128, "temperatures": [1.0, 2.0]}
    plan = {"kind": "topk", "dir": "/x", "hidden": 128, "teacher_layers": 6, **req}
    t = trial_causal_cache(trial_config(C.to_dict(cfg), {"method.params.temperature": 2.0,
                                                         "teacher.cache_topk": 8}), plan)
    assert t == {"kind": "topk", "hidden": 128, "layers": [], "topk": 8, "cached_topk": 128,
                 "temperature": 2.0, "temperature_index": 1, "temperatures": 2}
    # feature_align needs hidden states too: a logits-only cache cannot serve it (online), "both" can
    fa = trial_config(C.to_dict(cfg), {"method.name": "feature_align"})
    assert trial_causal_cache(fa, plan) is None
    assert trial_causal_cache(fa, {**plan, "layers": [3, 6]})["layers"] == [3, 6]
    assert causal_needs("feature_align", {"logit": False}) == {"hidden"}
    assert isinstance(causal_needs("gkd", {"lmbda": 0.5}), str) and causal_needs("gkd", {}) == {"logits"}
    assert causal_needs("sft", {}) == set()
    # none: nothing cached (unless the CLI forces it: then what the methods read)
    none = C.load_config(CAUSAL, {"space": {}})
    assert study_cache_request(none, 6, searched(none)) is None
    assert study_cache_request(none, 6, searched(none), force=True)["topk"] == 64
