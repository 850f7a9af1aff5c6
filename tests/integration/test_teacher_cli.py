"""The teacher adapt command line end to end (a subprocess, as a user runs it)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.integration


def test_adapt_cli_writes_an_hf_teacher(synth_prepared, tmp_path):
    _, prepared, _ = synth_prepared
    proc = run_module("raykd", "adapt", "--data", str(prepared), "--out", str(tmp_path / "teacher"),
                      "--steps", "4", "--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "64")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "teacher" / "raykd_adapt.json").read_text())
    assert meta["settings"]["steps"] == 4 and (tmp_path / "teacher" / "tokenizer.json").exists()
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(str(tmp_path / "teacher")).config.num_hidden_layers == 2
