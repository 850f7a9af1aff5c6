"""Bad inputs to ``python -m raykd.tune`` stop before Ray starts: exit 2, one ``error:`` line naming
the file or setting, no traceback, nothing written."""

from __future__ import annotations

import shutil

import pytest

from raykd.data.shards import PrepareSettings, prepare
from raykd.data.synth import write_corpus
from raykd.models.teacher import TeacherShape, build_teacher
from raykd.ray_layer.tune import main as tune_main
from tests.conftest import SMOKE

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    write_corpus(base / "raw", 60, seed=3)
    manifest = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(base / "prepared"), max_length=32, quiet=True,
                                       tokenizer="train:300"))
    return base, manifest


def run(tmp_path, capsys, *sets):
    rc = tune_main(["--config", SMOKE, "--storage", str(tmp_path / "exp"), "--set", f"data.work_dir={tmp_path / 'w'}",
                    *sets])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "exp").exists()
    return rc, err


def test_tampered_prepared_directory_is_refused_by_the_cli(small, tmp_path, capsys):
    base, _ = small
    d = tmp_path / "copy"
    shutil.copytree(base / "prepared", d)
    shard = next((d / "train").glob("part-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, err = run(tmp_path, capsys, f"data.prepared={d}")
    assert rc == 2 and "error:" in err and "tampered" in err and str(d) in err


def test_missing_prepared_directory_and_teacher_path_exit_2(small, tmp_path, capsys):
    base, _ = small
    rc, err = run(tmp_path, capsys, f"data.prepared={tmp_path / 'nope'}")
    assert rc == 2 and "not a prepared directory" in err
    rc, err = run(tmp_path, capsys, f"data.prepared={base / 'prepared'}", f"teacher.spec={tmp_path / 'no-teacher'}",
                  "teacher.adapt=null")
    assert rc == 2 and "teacher.spec" in err and "no such directory" in err


def test_a_teacher_whose_vocabulary_or_tokenizer_does_not_match_the_shards_exits_2(small, tmp_path, capsys):
    base, manifest = small
    small_vocab = tmp_path / "small_vocab"
    build_teacher(TeacherShape(2, 32, 2, 64, 64), vocab_size=50).save_pretrained(small_vocab)
    rc, err = run(tmp_path, capsys, f"data.prepared={base / 'prepared'}", f"teacher.spec={small_vocab}",
                  "teacher.adapt=null", "student.layers=1", "method.depth=1", "space={}")
    assert rc == 2 and "vocabulary (50) is smaller" in err

    other = tmp_path / "other_tok"  # right size, different tokenizer (trained on other dialogues)
    write_corpus(tmp_path / "raw2", 60, seed=99)
    m2 = prepare(PrepareSettings(raw=[str(tmp_path / "raw2")], out=str(tmp_path / "p2"), max_length=32, quiet=True,
                                 tokenizer="train:300"))
    build_teacher(TeacherShape(2, 32, 2, 64, 64), vocab_size=max(m2["tokenizer"]["vocab_size"],
                                                                  manifest["tokenizer"]["vocab_size"])).save_pretrained(other)
    for f in (tmp_path / "p2" / "tokenizer").iterdir():
        shutil.copy(f, other / f.name)
    rc, err = run(tmp_path, capsys, f"data.prepared={base / 'prepared'}", f"teacher.spec={other}",
                  "teacher.adapt=null", "student.layers=1", "method.depth=1", "space={}")
    assert rc == 2 and "tokenizer does not match" in err
