"""Teacher loading errors and the adapt command line."""

from __future__ import annotations

import json

import pytest

from raykd.errors import RaykdError
from raykd.models.teacher import TeacherShape, build_teacher, load_teacher
from raykd.stages.adapt import main

pytestmark = pytest.mark.unit


def test_missing_teacher_path_is_a_clear_error(tmp_path):
    with pytest.raises(RaykdError, match="no such directory"):
        load_teacher(str(tmp_path / "nope"))


def test_teacher_round_trips_through_safetensors(tmp_path):
    t = build_teacher(TeacherShape(layers=2, hidden=32, heads=2, intermediate=64, max_position=32), 50)
    t.save_pretrained(str(tmp_path / "t"), safe_serialization=True)
    assert (tmp_path / "t" / "model.safetensors").exists()
    loaded = load_teacher(str(tmp_path / "t"))
    assert loaded.config.num_hidden_layers == 2
    (tmp_path / "t" / "config.json").write_text(json.dumps({"model_type": "nonsense"}))
    with pytest.raises(RaykdError, match="cannot load"):
        load_teacher(str(tmp_path / "t"))


def test_adapt_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a prepared directory" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
