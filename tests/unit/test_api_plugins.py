"""The Python API's config side and plugins, without Ray: ``raykd.load_config``, configs given as a
path / dict / Config, plugin modules named in the YAML or with ``--plugin``, and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import raykd
from raykd import config as C

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Each test imports its plugins anew; what they registered is gone afterwards (registries are
    process-wide, and other tests list the built-in methods)."""
    from raykd.distill import settings as S
    from raykd.registry import METHODS, SAMPLERS

    saved = {r: dict(r._items) for r in (METHODS, SAMPLERS)}
    declared = dict(S.SETTINGS)
    before = set(sys.modules)
    yield
    for r, items in saved.items():
        r._items = items
    S.SETTINGS.clear()
    S.SETTINGS.update(declared)
    for name in set(sys.modules) - before:
        if name.startswith(("examples", "broken_kd", "no_such_pkg")):
            del sys.modules[name]


def test_importing_raykd_and_loading_a_config_imports_neither_ray_nor_torch():
    code = ("import sys, raykd; cfg = raykd.load_config(%r, {'train.steps': 7}); "
            "print(cfg.train.steps, 'ray' in sys.modules, 'torch' in sys.modules)" % str(SMOKE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["7", "False", "False"], out.stderr


def test_a_config_is_accepted_as_a_path_a_dict_or_a_config_and_validated_each_time():
    cfg = raykd.load_config(SMOKE)
    assert C.as_config(str(SMOKE)) == cfg
    assert C.as_config(C.to_dict(cfg)) == cfg
    again = C.as_config(cfg, {"train.lr": 1e-3, "depth": 2})
    assert again.train.lr == 1e-3 and again.method.depth == 2 and cfg.train.lr != 1e-3
    with pytest.raises(C.ConfigError, match=r"<dict>: unknown key 'trian'"):
        C.as_config({"trian": {}})
    with pytest.raises(C.ConfigError, match=r"<Config>: train.lr: must be positive"):
        C.as_config(cfg, {"train.lr": -1.0})
    with pytest.raises(C.ConfigError, match="expected a YAML path, a dict or a Config"):
        C.as_config(42)


def test_a_plugin_named_in_the_yaml_makes_its_method_and_settings_valid_names(tmp_path):
    y = tmp_path / "study.yaml"
    y.write_text(SMOKE.read_text(encoding="utf-8") + "\nplugins: [examples.cosine_kd]\n", encoding="utf-8")
    cfg = C.load_config(y, {"method.name": "cosine_kd", "method.params": {"margin": 0.2}})
    assert cfg.plugins == ["examples.cosine_kd"] and "cosine_kd" in C.method_names()
    assert C.plugin_paths(cfg.plugins) == [str(ROOT)]
    with pytest.raises(C.ConfigError, match=r"method 'cosine_kd' takes no 'marg'; did you mean 'margin'"):
        C.load_config(y, {"method.name": "cosine_kd", "method.params": {"marg": 0.2}})
    # the same plugin from the command line's --plugin, added once
    cfg = C.load_config(y, plugins=["examples.cosine_kd"])
    assert cfg.plugins == ["examples.cosine_kd"]


def test_an_unknown_plugin_module_is_one_line_and_exit_2(tmp_path):
    y = tmp_path / "study.yaml"
    y.write_text(SMOKE.read_text(encoding="utf-8") + "\nplugins: [no_such_pkg.kd]\n", encoding="utf-8")
    for args in (["--config", str(y)], ["--config", str(SMOKE), "--plugin", "no_such_pkg.kd"]):
        out = subprocess.run([sys.executable, "-m", "raykd.tune", *args, "--dry-run"], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "plugins: cannot import 'no_such_pkg.kd'" in lines[0], out.stderr
    with pytest.raises(C.ConfigError, match=r"plugins: 3 is not a module name"):
        C.config_from_dict({"plugins": [3]})


def test_a_plugin_that_breaks_while_importing_is_reported_by_name(tmp_path, monkeypatch):
    (tmp_path / "broken_kd.py").write_text("raise ValueError('method \\'structural\\' registered twice')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(C.ConfigError, match=r"cannot import 'broken_kd': ValueError: method 'structural' registered"):
        C.load_config(SMOKE, plugins=["broken_kd"])


def test_a_plugin_declares_its_settings_once_and_a_compare_study_tunes_them(tmp_path):
    from raykd.config.contenders import contender_space

    y = tmp_path / "cmp.yaml"
    y.write_text(SMOKE.read_text(encoding="utf-8") + "\nplugins: [examples.cosine_kd]\n"
                 "compare: {methods: [structural, cosine_kd], tune: {trials: 2}, against: method=structural, "
                 "metrics: [test/mrr@10]}\n", encoding="utf-8")
    cfg = C.load_config(y, {"experiment.seeds": [0, 1], "space": {"lr": {"loguniform": [1e-4, 1e-3]}}})
    plugin = [k for k in C.compare_contenders(cfg) if k.method == "cosine_kd"][0]
    assert contender_space(plugin, cfg.space) == {"lr": {"loguniform": [1e-4, 1e-3]},
                                                  "method.params.dynamic_weights": {"choice": [False, True]},
                                                  "method.params.margin": {"uniform": [0.0, 0.3]}}
    with pytest.raises(C.ConfigError, match=r"method.params.margin: 2.0 must be in \[0, 1\]"):
        C.load_config(y, {"experiment.seeds": [0, 1], "space": {"lr": {"loguniform": [1e-4, 1e-3]}},
                          "method.name": "cosine_kd", "method.params": {"margin": 2.0}})
