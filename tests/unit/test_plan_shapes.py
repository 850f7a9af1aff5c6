"""The plan describes the teacher the user gave: ``--dry-run``'s parameter counts and FLOPs come from a
``teacher.spec``'s config.json (a local directory here), checked against the parameter count transformers
reports for the same config; an unreadable spec with no recorded shape says the plan cannot be computed;
figures print in units that fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd import config as C
from raykd.train.budget import count, memory_plan, memory_text, model_shapes, size, step_flops

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _saved(tmp_path: Path, hf_config) -> str:
    """A model directory holding only ``config.json`` (what the plan reads), and transformers' parameter count
    of that config (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    hf_config.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if hf_config.model_type == "llama" else AutoModelForMaskedLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    return str(tmp_path), sum(p.numel() for p in model.parameters())


def _plan(spec: str, family: str, **sets):
    return C.load_config(ROOT / "search_spaces" / "smoke.yaml",
                         {"teacher.spec": spec, "teacher.family": family, "teacher.adapt": None, "student.hidden": None,
                          "student.layers": 2, "method.depth": 2, "space": {}, **sets})


@pytest.mark.parametrize("layers,hidden,heads,inter,vocab", [(2, 32, 2, 64, 500), (24, 1024, 16, 4096, 21128)])
def test_an_encoder_spec_is_planned_from_its_config(tmp_path, layers, hidden, heads, inter, vocab):
    from transformers import BertConfig

    spec, n = _saved(tmp_path, BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                          intermediate_size=inter, vocab_size=vocab))
    cfg = _plan(spec, "masked_lm")
    assert model_shapes(cfg)["teacher"] == (layers, hidden, heads, None, inter)
    m = memory_plan(cfg)
    assert m["teacher_params"] == n
    # the recorded default shape (6 × 64) would plan another model entirely
    assert step_flops(cfg) != step_flops(_plan(spec, "masked_lm", **{"teacher.spec": None}))


def test_a_decoder_spec_is_planned_from_its_config(tmp_path):
    from transformers import LlamaConfig

    spec, n = _saved(tmp_path, LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=128, vocab_size=300))
    cfg = _plan(spec, "causal_lm", **{"teacher.arch": None, "method.name": "kd", "sampler.name": "uniform",
                                      "experiment.metric": "val/answer_accuracy"})
    assert model_shapes(cfg)["teacher"] == (3, 64, 4, 2, 128)
    assert memory_plan(cfg)["teacher_params"] == n


def test_an_unreadable_spec_without_a_recorded_shape_cannot_be_planned(tmp_path):
    cfg = _plan("no-such-org/no-such-model", "masked_lm")
    text = memory_text(cfg)
    assert "cannot be computed here" in text and "teacher.shape records no shape" in text and "GiB" not in text
    recorded = _plan("no-such-org/no-such-model", "masked_lm", **{"teacher.shape": {"layers": 24, "hidden": 1024,
                                                                                      "heads": 16, "intermediate": 4096,
                                                                                      "vocab": 21128}})
    assert model_shapes(recorded)["teacher"] == (24, 1024, 16, None, 4096)  # the offline record


def test_figures_print_in_units_that_fit():
    assert [count(x) for x in (840, 12_345, 22_700_000, 6_738_415_616)] == ["840", "12.3 K", "22.7 M", "6.74 B"]
    assert [size(x) for x in (0.5, 0.009, 3.44)] == ["512 MiB", "9.22 MiB", "3.4 GiB"]
