"""The family seam: a family declared by a plugin (``tests/helpers/toy_family.py``, loaded with ``plugins:``) is
accepted by config validation like a built-in one, and what it offers decides which methods and settings run
on it — no family lists methods, and nothing outside ``raykd/models/families/`` knows the new name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raykd import config as C
from raykd.errors import RaykdError
from raykd.models.families import spec as specs
from raykd.models.families import FamilySpec, family_names, family_of_architectures, family_spec, register_family

pytestmark = pytest.mark.unit
SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "causal_smoke.yaml"
PLUGIN = "tests.helpers.toy_family"


@pytest.fixture
def toy():
    """The registry as it was, and the plugin module imported afresh (its import registers the family)."""
    before = dict(specs._SPECS)
    sys.modules.pop(PLUGIN, None)
    yield
    specs._SPECS.clear()
    specs._SPECS.update(before)
    sys.modules.pop(PLUGIN, None)


def _cfg(**sets):
    return C.load_config(SMOKE, {"teacher.family": "toy_lm", "teacher.arch": "toyarch", "space": {},
                                 "method.params": {}, **sets}, plugins=[PLUGIN])


def test_a_plugin_family_is_accepted_with_its_own_defaults(toy):
    assert "toy_lm" not in family_names()
    cfg = _cfg(**{"method.name": "kd"})
    assert cfg.teacher.family == "toy_lm" and "toy_lm" in family_names()
    assert cfg.experiment.metric == "val/perplexity"  # the family's default lead metric
    assert family_of_architectures(["ToyForToyLM"]) == "toy_lm"


def test_what_a_family_offers_decides_which_methods_and_settings_run(toy):
    _cfg(**{"method.name": "sft"})
    with pytest.raises(C.ConfigError, match="method 'tinybert' does not run on a toy_lm teacher: it needs "
                                            "attention_qkv, masked_inputs"):
        _cfg(**{"method.name": "tinybert"})
    with pytest.raises(C.ConfigError, match=r"method.params.lmbda: 0.5 needs a model family that offers 'generates': a toy_lm "
                                            r"teacher does not \(use a causal_lm teacher\)"):
        _cfg(**{"method.name": "gkd", "method.params": {"lmbda": 0.5}})
    with pytest.raises(C.ConfigError, match="a toy_lm study samples uniform"):
        _cfg(**{"method.name": "kd", "sampler.name": "entropy"})
    with pytest.raises(C.ConfigError, match="teacher.cache.*allowed here: none"):
        _cfg(**{"method.name": "kd", "teacher.cache": "logits"})


def test_an_unknown_family_or_a_clashing_registration_is_refused(toy):
    with pytest.raises(C.ConfigError, match="teacher.family: 'toy_lm' is not one of masked_lm, causal_lm"):
        C.load_config(SMOKE, {"teacher.family": "toy_lm", "teacher.arch": None})
    register_family(family_spec("causal_lm"))  # the same declaration again: a no-op
    with pytest.raises(RaykdError, match="'causal_lm' is already registered"):
        register_family(FamilySpec(name="causal_lm", implementation="x:Y", evaluation="x:Z", archs=(), hf_suffixes=()))
    with pytest.raises(RaykdError, match="'toy2': evaluation '' is not \"module:Class\""):
        register_family(FamilySpec(name="toy2", implementation="x:Y", archs=(), hf_suffixes=()))
