"""Safe loading defaults, each a test that fails if it regresses: no remote code without an explicit,
pinned opt-in; safetensors only; ``torch.load`` only with ``weights_only=True``; YAML only with
``safe_load``; no pickle in the package."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from raykd.errors import RaykdError
from raykd.models.teacher import TeacherShape, build_teacher, load_teacher

pytestmark = pytest.mark.unit
PACKAGE = Path(__file__).resolve().parents[2] / "raykd"


def _calls(name: str, owner: str | None = None):
    """(file, line, {keyword: node}) of every call to ``name`` (``owner.name`` when given) in raykd/."""
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                base = getattr(getattr(fn, "value", None), "id", None)
                if called == name and (owner is None or base == owner):
                    yield f, node.lineno, {k.arg: k.value for k in node.keywords}


def test_every_torch_load_is_weights_only():
    calls = list(_calls("load", owner="torch"))
    assert calls, "expected torch.load calls to check"
    for f, line, kw in calls:
        v = kw.get("weights_only")
        assert isinstance(v, ast.Constant) and v.value is True, f"{f}:{line}: torch.load without weights_only=True"


def test_yaml_only_with_safe_load_and_no_pickle():
    for f in PACKAGE.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text and "yaml.full_load" not in text, f
        assert "import pickle" not in text and "pickle.load" not in text, f


def test_every_from_pretrained_of_a_model_refuses_remote_code_by_default():
    for f, line, kw in _calls("from_pretrained"):
        src = f.read_text().splitlines()[line - 1]
        if "Tokenizer" in src:  # tokenizers carry no code path here (fast tokenizer JSON)
            continue
        v = kw.get("trust_remote_code")
        assert v is not None, f"{f}:{line}: from_pretrained without an explicit trust_remote_code"
        assert not (isinstance(v, ast.Constant) and v.value is True), f"{f}:{line}: trust_remote_code=True"


def test_a_teacher_asking_for_remote_code_is_refused_and_its_code_never_runs(tmp_path):
    d = tmp_path / "evil"
    build_teacher(TeacherShape(2, 32, 2, 64, 32), 50).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForMaskedLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    flag = tmp_path / "code_ran"
    (d / "evil.py").write_text(f"open({str(flag)!r}, 'w').write('ran')\n")
    try:
        load_teacher(str(d))
    except RaykdError:
        pass
    assert not flag.exists()
    with pytest.raises(RaykdError, match="pinned revision"):
        load_teacher(str(d), trust_remote_code=True)


def test_pickle_weights_are_refused(tmp_path):
    d = tmp_path / "bin_only"
    build_teacher(TeacherShape(2, 32, 2, 64, 32), 50).save_pretrained(d, safe_serialization=False)
    for f in d.glob("*.safetensors"):
        f.unlink()
    if not list(d.glob("*.bin")):
        import torch

        t = build_teacher(TeacherShape(2, 32, 2, 64, 32), 50)
        torch.save(t.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(RaykdError, match="cannot load"):
        load_teacher(str(d))
