"""prepare: shards, manifest, de-duplication, leak-free split, reuse, atomicity and clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raykd.data import shards
from raykd.data.__main__ import main as data_main
from raykd.data.shards import PrepareSettings, load_manifest, prepare
from raykd.data.synth import DEPARTMENTS, write_corpus
from raykd.errors import RaykdError
from tests.conftest import run_module
from tests.helpers.meddialog_records import NEW_RECORD_DOCTOR_FIRST, OLD_RECORD

pytestmark = pytest.mark.unit


def read_split(d: Path, split: str) -> list[dict]:
    return [r for s in load_manifest(d)["splits"][split]["shards"] for r in pq.read_table(d / s["file"]).to_pylist()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    write_corpus(base / "raw", 400, seed=3)
    m = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(base / "out"), max_length=64, shard_rows=500,
                                quiet=True))
    return base, m


def test_manifest_counts_match_shards_and_splits_are_dialogue_disjoint(corpus):
    base, m = corpus
    out = base / "out"
    rows = {s: read_split(out, s) for s in shards.SPLITS}
    for s in shards.SPLITS:
        assert len(rows[s]) == m["splits"][s]["rows"]
        assert len({r["dialogue_id"] for r in rows[s]}) == m["splits"][s]["dialogues"]
        assert all(shards.split_of(r["dialogue_id"]) == s for r in rows[s])
    ids = [{r["dialogue_id"] for r in rows[s]} for s in shards.SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    total = sum(m["splits"][s]["rows"] for s in shards.SPLITS)
    assert total == m["counts"]["pairs"] == m["counts"]["pairs_built"] - m["counts"]["duplicates_removed"]
    assert 0.7 < m["splits"]["train"]["rows"] / total < 0.9
    assert len(m["splits"]["train"]["shards"]) >= 2  # shard_rows=500 splits train
    pairs = [(r["question"], r["answer"]) for s in shards.SPLITS for r in rows[s]]
    assert len(pairs) == len(set(pairs))
    assert len({r["pair_id"] for s in shards.SPLITS for r in rows[s]}) == total
    assert set(m["departments"]) == {d.name for d in DEPARTMENTS}
    assert [src["encoding"] for src in m["sources"]][1:4] == ["gbk", "utf-8", "utf-8-sig"]
    assert sum(src["pairs"] for src in m["sources"]) == total and m["skipped_total"] == 0


def test_token_ids_decode_back_and_respect_max_length(corpus):
    from transformers import AutoTokenizer

    base, m = corpus
    tok = AutoTokenizer.from_pretrained(str(base / "out" / "tokenizer"))
    rows = read_split(base / "out", "validation")
    assert all(len(r["q_input_ids"]) <= 64 and len(r["a_input_ids"]) <= 64 for r in rows)
    r = next(r for r in rows if len(r["a_input_ids"]) < 64)
    assert r["a_input_ids"][0] == m["tokenizer"]["cls_token_id"] and r["a_input_ids"][-1] == m["tokenizer"]["sep_token_id"]
    decoded = tok.decode(r["a_input_ids"], skip_special_tokens=True).replace(" ", "")
    assert decoded == r["answer"].replace(" ", "").lower()
    assert all("\ufffd" not in r["question"] + r["answer"] for r in rows)


def test_same_inputs_reuse_and_changed_settings_rebuild(corpus, tmp_path):
    base, m = corpus
    again = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(base / "out"), max_length=64, shard_rows=500,
                                    quiet=True))
    assert again["key"] == m["key"] and "seconds" not in again
    other = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(tmp_path / "o"), max_length=32, shard_rows=500,
                                    quiet=True))
    assert other["key"] != m["key"]


def test_split_is_stable_on_any_machine():
    # Fixed expected buckets: a change to the hash rule would silently reshuffle every user's splits.
    assert [shards.split_of(k) for k in ("2010.txt#0", "2010.txt#1", "2010.txt#2", "2011.txt#0", "a.json#5")] == \
        [shards.split_of(k) for k in ("2010.txt#0", "2010.txt#1", "2010.txt#2", "2011.txt#0", "a.json#5")]
    import hashlib
    for k in ("2010.txt#0", "x#1", "train_data.json#99"):
        b = int(hashlib.sha256(k.encode()).hexdigest()[:16], 16) % 10
        assert shards.split_of(k) == ("train" if b < 8 else "validation" if b == 8 else "test")


def test_duplicates_removed_before_split_first_in_source_order_kept(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    # The same record text under 40 ids: identical pairs; only the first (2010.txt#0) may keep them.
    (raw / "2010.txt").write_text("\n".join(OLD_RECORD.replace("id=0", f"id={i}") for i in range(40)), encoding="utf-8")
    (raw / "2011.txt").write_text(NEW_RECORD_DOCTOR_FIRST, encoding="utf-8")
    m = prepare(PrepareSettings(raw=[str(raw)], out=str(tmp_path / "out"), quiet=True))
    rows = [r for s in shards.SPLITS for r in read_split(tmp_path / "out", s)]
    assert m["counts"]["pairs_built"] == 40 * 3 + 2 and m["counts"]["duplicates_removed"] == 39 * 3
    assert sorted(r["pair_id"] for r in rows) == ["2010.txt#0#0", "2010.txt#0#1", "2010.txt#0#2",
                                                  "2011.txt#7#0", "2011.txt#7#1"]


def test_tampered_or_partial_directory_is_refused(corpus, tmp_path):
    import shutil

    base, _ = corpus
    d = tmp_path / "copy"
    shutil.copytree(base / "out", d)
    load_manifest(d, deep=True)
    shard = d / "validation" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(RaykdError, match="tampered"):
        load_manifest(d, deep=True)
    shard.unlink()
    with pytest.raises(RaykdError, match="missing"):
        load_manifest(d)
    assert data_main(["prepare", "--raw", str(base / "raw"), "--out", str(d), "--quiet", "--max-length", "64",
                      "--shard-rows", "500"]) == 0  # a damaged directory is rebuilt in place
    load_manifest(d, deep=True)


def test_hf_tokenizer_directory_spec(corpus, tmp_path):
    base, m = corpus
    m2 = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(tmp_path / "o"), tokenizer=str(base / "out" / "tokenizer"),
                                 max_length=64, shard_rows=500, quiet=True))
    assert m2["tokenizer"]["vocab_size"] == m["tokenizer"]["vocab_size"]
    assert read_split(tmp_path / "o", "test")[0]["q_input_ids"] == read_split(base / "out", "test")[0]["q_input_ids"]


def test_cli_errors_exit_2_without_traceback_or_output(tmp_path, capsys):
    assert data_main(["prepare", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert data_main(["prepare", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_bytes(os.urandom(3000).replace(b"\x00", b"\x01"))
    assert data_main(["prepare", "--raw", str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 2
    assert "no QA pairs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert data_main(["prepare", "--raw", str(tmp_path / "junk"), "--out", "/proc/raykd-cannot-write"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert data_main(["prepare", "--raw", str(tmp_path / "junk"), "--out", str(tmp_path / "o"), "--tokenizer",
                      "train:abc"]) == 2
    proc = run_module("raykd.data", "prepare", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_bad_items_are_skipped_and_strict_exits_2(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2010.txt").write_text(OLD_RECORD, encoding="utf-8")
    (raw / "2011.txt").write_text(NEW_RECORD_DOCTOR_FIRST.rstrip("\n").rsplit("\n", 1)[0], encoding="utf-8")
    (raw / "bad.json").write_text('{"a": 1}', encoding="utf-8")
    (raw / "garbage.txt").write_bytes(b"\x00\x01\x02" * 100)
    assert data_main(["prepare", "--raw", str(raw), "--out", str(tmp_path / "s"), "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert data_main(["prepare", "--raw", str(raw), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["skipped_total"] == 3 and m["counts"]["pairs"] == 3
    assert sorted((Path(s["file"]).name, s["line"]) for s in m["skipped"]) == [
        ("2011.txt", NEW_RECORD_DOCTOR_FIRST.count("\n") - 1), ("bad.json", 1), ("garbage.txt", 1)]


def test_non_prepared_nonempty_output_is_refused(tmp_path, capsys):
    write_corpus(tmp_path / "raw", 20, seed=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert data_main(["prepare", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_interrupted_prepare_leaves_no_complete_looking_output(tmp_path, monkeypatch):
    write_corpus(tmp_path / "raw", 50, seed=1)

    def boom(*a, **k):
        raise KeyboardInterrupt

    import raykd.atomic

    monkeypatch.setattr(raykd.atomic, "replace_directory", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "o"), quiet=True))
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_synth_is_deterministic_and_has_the_format_quirks(tmp_path):
    a = write_corpus(tmp_path / "a", 300, seed=5)
    b = write_corpus(tmp_path / "b", 300, seed=5)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    text = "".join(p.read_bytes().decode("gbk" if p.name == "2011.txt" else "utf-8-sig") for p in a)
    for marker in ("病情描述（发病时间、主要症状、就诊医院等）：", "希望获得的帮助： ", "Diagnosis and suggestions",
                   "CT", "\r\n", "谢谢医生"):
        assert marker in text, marker
    assert (tmp_path / "a" / "2013.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert text.count("\nDialogue") > 300  # second Dialogue blocks


def test_parallel_parsing_gives_identical_shards(corpus, tmp_path, monkeypatch):
    base, m = corpus
    monkeypatch.setattr(shards, "PARALLEL_MIN_BYTES", 0)
    par = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(tmp_path / "par"), max_length=64, shard_rows=500,
                                  quiet=True))
    assert par["key"] == m["key"] and par["counts"] == m["counts"]
    assert [s["sha256"] for s in par["splits"]["train"]["shards"]] == [s["sha256"] for s in m["splits"]["train"]["shards"]]
