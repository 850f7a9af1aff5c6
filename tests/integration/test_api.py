"""The Python API runs a real study: ``raykd.run_study`` on the session's Ray, with the example plugin's
objective (``examples/cosine_kd.py``) named in the config, in Train local mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import raykd
from raykd import config as C
from tests.conftest import SMOKE, study_args
from tests.helpers.studies import LOCAL
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(autouse=True)
def fresh_plugins():
    """What the plugin registered is gone after the test (registries are process-wide)."""
    from raykd.registry import METHODS

    saved = dict(METHODS._items)
    yield
    METHODS._items = saved
    sys.modules.pop("examples.cosine_kd", None)


def test_run_study_with_a_plugin_objective_returns_the_result_grid_and_its_directory(ray_session, grid_experiment):
    _, _, work, _ = grid_experiment  # its prepared data and teacher
    sets = study_args(work, "unused", f"data.prepared={work / 'prepared'}", *LOCAL, "train.steps=8",
                      "space={method: {grid: [cosine_kd, no_distill]}}")
    overrides = {**C.parse_set(sets[sets.index("--set") + 1:]), "plugins": ["examples.cosine_kd"]}
    cfg = raykd.load_config(SMOKE, overrides)  # the plugin is imported before the space is validated
    results, path = raykd.run_study(cfg, storage=str(work / "exp"), name="api")
    assert Path(path) == work / "exp" / "api" and Path(path).is_dir()
    assert len(results) == 2 and not results.errors
    by_method = {r.config["method"]: r.metrics for r in results}
    assert by_method["cosine_kd"]["train/cosine"] >= 0.0 and "train/mlm" in by_method["cosine_kd"]
    assert "train/cosine" not in by_method["no_distill"]
    for m in by_method.values():
        assert m["step"] == 8 and 0.0 <= m["test/mrr@10"] <= 1.0
    rows = trial_results(Path(path))
    assert sorted(len(r) for r in rows.values()) == [3, 3]  # steps 0, 4, 8


def test_run_study_refuses_a_bad_config_before_starting_anything(tmp_path):
    with pytest.raises(C.ConfigError, match="unknown method 'cosine_kdd'"):
        raykd.run_study(SMOKE, overrides={"method.name": "cosine_kdd"}, storage=str(tmp_path))
    assert not any(tmp_path.iterdir())
