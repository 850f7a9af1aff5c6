"""``raykd.data.logprob_import`` without Ray: a prepared corpus, a toy teacher's top-k log-probs written
in each source layout (axolotl Parquet, DistillKit JSONL, an HF ``save_to_disk`` folder, raykd's own
cache), imported into raykd's cache layout and compared with what that teacher gives; unmatched rows
counted, ``strict``, a shifted source refused with nothing left behind, an interrupted import resumed.
DistillKit's compressed rows imported losslessly match its raw ones. Schemas: see
tests/unit/test_logprob_sources.py's docstring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raykd.data import distillkit_compressed as DK
from raykd.data import logprob_import as I
from raykd.data import logprob_sources as S
from raykd.data.shards import PrepareSettings, prepare, shard_paths
from raykd.data.synth import write_corpus
from raykd.data.template import causal_template
from raykd.data.tokenizer import load_tokenizer
from raykd.errors import RaykdError

pytestmark = pytest.mark.unit
K = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    write_corpus(root / "raw", 40, seed=4)
    m = prepare(PrepareSettings(raw=[str(root / "raw")], out=str(root / "p"), tokenizer="train-bpe:300",
                                max_length=16, quiet=True, shard_rows=30))
    tpl = causal_template(load_tokenizer(str(root / "p" / "tokenizer")))
    rows = []
    for path in shard_paths(root / "p", "train", m):
        t = pq.read_table(path).to_pydict()
        rows += [S.prepared_sequence(tpl, q, a) for q, a in zip(t["q_input_ids"], t["a_input_ids"])]
    return root, m, tpl, rows


def _teacher(seq, vocab):
    """A toy teacher: log softmax of seeded logits with the true next token boosted, per position [L, V]."""
    g = np.random.default_rng(len(seq) * 7919 + int(sum(seq)))
    z = g.normal(size=(len(seq), vocab))
    z[np.arange(len(seq) - 1), seq[1:]] += 3.0
    z -= z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _top(lp):
    idx = np.argsort(-lp, 1, kind="stable")[:, :K]
    return idx, np.take_along_axis(lp, idx, 1)


def _axolotl_rows(rows, vocab, shift=0):
    out = []
    for seq, _ in rows:
        idx, top = _top(_teacher(seq, vocab))  # row j over token j + 1
        if shift:  # one row later (the legacy convention read as the current one)
            idx, top = np.roll(idx, shift, 0), np.roll(top, shift, 0)
        out.append({"input_ids": seq, "target_token_ids": idx.tolist(), "target_logprobs": top.tolist(),
                    "target_mask": np.ones_like(idx).tolist()})
    return out


def _packed_ids(ids: np.ndarray, vocab: int) -> list[list[int]]:
    """DistillKit's ``bytepacked_indices``: per position the k ids at ceil(log2 vocab) bits, most
    significant bit first, padded to a whole byte."""
    bits = int(np.ceil(np.log2(vocab)))
    stream = (ids[:, :, None] >> np.arange(bits - 1, -1, -1)) & 1
    return np.packbits(stream.reshape(len(ids), -1).astype(np.uint8), axis=1).tolist()


def _run(root, m, tpl, settings, name="c"):
    logs = []
    meta = I.import_logprobs(settings, str(root / "p"), m, tpl, root / "caches" / name, log=logs.append)
    return meta, logs


def _check_cache(root, name, m, tpl, vocab, n_expected):
    meta = json.loads((root / "caches" / name / "manifest.json").read_text())
    got = pa.concat_tables([pq.read_table(root / "caches" / name / "train" / f) for f in sorted(meta["files"])])
    assert got.num_rows == meta["rows"] == n_expected
    for r in got.to_pylist()[:10]:
        seq, (a, b) = S.prepared_sequence(tpl, r["q_input_ids"], r["a_input_ids"])
        idx, top = _top(_teacher(seq, vocab)[a - 1: b - 1])
        ids = np.frombuffer(r["topk_ids"], np.int32).reshape(-1, K)
        logp = np.frombuffer(r["topk_logp"], np.float16).reshape(-1, K)
        tail = np.frombuffer(r["topk_tail"], np.float16).reshape(-1, 1)
        assert (ids == idx).all() and np.allclose(logp, top, atol=1e-2)
        assert np.allclose(tail[:, 0], np.log1p(-np.exp(top).sum(1)), atol=1e-2)
    return meta


def test_axolotl_parquet_with_a_foreign_row_imports_the_matched_pairs(data, tmp_path):
    root, m, tpl, rows = data
    vocab = m["tokenizer"]["vocab_size"]
    src = _axolotl_rows(rows, vocab)
    src.append(dict(src[0], input_ids=[1, 2, 3] + src[0]["input_ids"][3:]))  # a row of no train pair
    pq.write_table(pa.Table.from_pylist(src[:20]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(src[20:]), tmp_path / "b.parquet")
    meta, logs = _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path)), "axolotl")
    assert meta["topk"] == K and meta["temperatures"] == [1.0] and meta["layers"] == []
    assert meta["imported"]["unmatched"] == 1 and "1 unmatched" in logs[-1] and "starting [1, 2, 3" in logs[-1]
    _check_cache(root, "axolotl", m, tpl, vocab, len(rows))
    with pytest.raises(RaykdError, match="--strict"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path), strict=True), "strict")
    assert not (root / "caches" / "strict").exists() and not (root / "caches" / "strict.partial").exists()


def test_distillkit_jsonl_and_an_hf_folder(data, tmp_path):
    import datasets

    root, m, tpl, rows = data
    vocab = m["tokenizer"]["vocab_size"]
    dk = []
    for seq, _ in rows[:25]:  # part of the train split only
        idx, top = _top(_teacher(seq, vocab)[:-1])
        dk.append({"input_ids": seq, "token_ids": idx.tolist(), "top_values": top.tolist()})
    (tmp_path / "dk.jsonl").write_text("\n".join(json.dumps(r) for r in dk) + "\n")
    meta, logs = _run(root, m, tpl, I.ImportSettings("distillkit", str(tmp_path / "dk.jsonl")), "dk")
    # a sequence that occurs twice in the train split gives both pairs their log-probs
    covered = sum(tuple(seq) in {tuple(s) for s, _ in rows[:25]} for seq, _ in rows)
    assert meta["rows"] == covered < len(rows) and f"{covered} of" in logs[-1] and "a study refuses" in logs[-1]
    _check_cache(root, "dk", m, tpl, vocab, covered)
    # the same rows compressed by DistillKit without approximation (exact_k = k, float64): the same cache
    cfg = {"d": vocab, "k": K, "exact_k": K, "exact_dtype": "float64", "residual_bins": [], "delta_encoding": False}
    (tmp_path / "dkc.json").write_text(json.dumps(cfg))
    dkc = [{"input_ids": r["input_ids"], "bytepacked_indices": _packed_ids(np.array(r["token_ids"]), vocab),
            "compressed_logprobs": [list(np.array(v, "<f8").tobytes()) for v in r["top_values"]]} for r in dk]
    (tmp_path / "dkc.jsonl").write_text("\n".join(json.dumps(r) for r in dkc) + "\n")
    with pytest.raises(RaykdError, match="--compression FILE"):
        _run(root, m, tpl, I.ImportSettings("distillkit", str(tmp_path / "dkc.jsonl")), "dkc")
    compression = DK.load_compression_config(tmp_path / "dkc.json")
    _run(root, m, tpl, I.ImportSettings("distillkit", str(tmp_path / "dkc.jsonl"), compression=compression), "dkc")
    raw, packed = (pa.concat_tables([pq.read_table(p) for p in sorted((root / "caches" / n / "train").glob("*.parquet"))])
                   for n in ("dk", "dkc"))
    assert packed.num_rows == covered and packed.equals(raw)
    files = I.source_files(tmp_path / "dkc.jsonl", "distillkit")  # the config is part of the import's key
    keys = {I.import_key(I.ImportSettings("distillkit", str(tmp_path / "dkc.jsonl"), compression=c), files, m,
                         tpl.as_dict(), vocab) for c in (compression, replace(compression, exact_dtype="float32"), None)}
    assert len(keys) == 3
    datasets.Dataset.from_list(_axolotl_rows(rows, vocab)).save_to_disk(str(tmp_path / "hf"))
    _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "hf")), "hf")
    _check_cache(root, "hf", m, tpl, vocab, len(rows))


def test_a_shifted_source_is_refused_and_nothing_is_left(data, tmp_path):
    root, m, tpl, rows = data
    src = _axolotl_rows(rows, m["tokenizer"]["vocab_size"], shift=1)
    pq.write_table(pa.Table.from_pylist(src), tmp_path / "s.parquet")
    with pytest.raises(RaykdError, match="shifted by one position"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "s.parquet")), "shifted")
    assert not list((root / "caches").glob("shifted*"))
    # over several small files (each under the checked rows), and after an interrupted run: still refused
    (tmp_path / "many").mkdir()
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(src[i::3]), tmp_path / "many" / f"f{i}.parquet")
    (root / "caches" / "many.partial" / "parts").mkdir(parents=True)
    with pytest.raises(RaykdError, match="shifted by one position"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "many")), "many")
    # records of another shape: one error naming the row, no traceback
    pq.write_table(pa.Table.from_pylist([{"input_ids": [1, 2], "target_token_ids": [[1], None],
                                          "target_logprobs": [[-1.0], [-1.0]]}]), tmp_path / "odd.parquet")
    with pytest.raises(RaykdError, match=r"row 1: not a axolotl row \(TypeError"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "odd.parquet")), "odd")
    assert not list((root / "caches").glob("odd*"))
    bad = _axolotl_rows(rows[:3], m["tokenizer"]["vocab_size"])  # then an id beyond the student's vocabulary
    bad[1]["target_token_ids"][2][0] = m["tokenizer"]["vocab_size"] + 5
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "v.parquet")
    with pytest.raises(RaykdError, match="row 2: token ids outside"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "v.parquet")), "vocab")
    with pytest.raises(RaykdError, match="no such file"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "nothing")), "none")
    with pytest.raises(RaykdError, match="--format"):
        I.ImportSettings("megatron", "x")


def test_an_interrupted_import_resumes_where_it_stopped(data, tmp_path, monkeypatch):
    root, m, tpl, rows = data
    vocab = m["tokenizer"]["vocab_size"]
    src = _axolotl_rows(rows, vocab)
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(src[i::3]), tmp_path / f"part-{i}.parquet")
    settings = I.ImportSettings("axolotl", str(tmp_path), check_rows=4)
    real = I.iter_batches
    calls = []

    def dies_on_the_third(kind, path, n):
        calls.append(Path(path).name)
        if Path(path).name == "part-2.parquet":
            raise KeyboardInterrupt
        return real(kind, path, n)

    monkeypatch.setattr(I, "iter_batches", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _run(root, m, tpl, settings, "resume")
    assert not (root / "caches" / "resume").exists()
    assert sorted(p.name for p in (root / "caches" / "resume.partial" / "parts").glob("*.done")) == \
        ["00000.done", "00001.done"]
    monkeypatch.setattr(I, "iter_batches", real)
    calls.clear()
    monkeypatch.setattr(I, "iter_batches", lambda *a: (calls.append(Path(a[1]).name), real(*a))[1])
    meta, logs = _run(root, m, tpl, settings, "resume")
    # the convention check reads the first rows again (a resumed import is checked like a fresh one);
    # only the file without its marker is converted
    assert calls == ["part-0.parquet", "part-2.parquet"] and sum("done before" in x for x in logs) == 2
    assert meta["imported"]["matched"] == len(rows) and meta["rows"] == len(rows)
    _check_cache(root, "resume", m, tpl, vocab, len(rows))
    assert not (root / "caches" / "resume.partial").exists()


def test_export_to_axolotl_and_back_is_identical_in_ids_and_within_fp16_in_values(data, tmp_path):
    root, m, tpl, rows = data
    vocab = m["tokenizer"]["vocab_size"]
    pq.write_table(pa.Table.from_pylist(_axolotl_rows(rows, vocab)), tmp_path / "a.parquet")
    first, _ = _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "a.parquet")), "rt0")
    info = I.export_axolotl(root / "caches" / "rt0", str(root / "p"), m, tpl, tmp_path / "ax", log=lambda s: None)
    assert info["k"] == K and info["alignment"] == "next" and info["rows"] == len(rows)
    exported = pq.read_table(next((tmp_path / "ax").glob("*.parquet"))).to_pylist()[0]
    assert set(exported) == {"input_ids", "labels", "target_token_ids", "target_logprobs", "target_mask"}
    again, _ = _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "ax")), "rt1")
    mine, back = (pa.concat_tables([pq.read_table(root / "caches" / n / "train" / f) for f in sorted(meta["files"])])
                  for n, meta in (("rt0", first), ("rt1", again)))
    assert mine.column("pair_id").to_pylist() == back.column("pair_id").to_pylist()
    assert mine.column("topk_ids").to_pylist() == back.column("topk_ids").to_pylist()  # bit-identical
    for col in ("topk_logp", "topk_tail"):
        a = np.concatenate([np.frombuffer(b, np.float16) for b in mine.column(col).to_pylist()]).astype(float)
        b = np.concatenate([np.frombuffer(b, np.float16) for b in back.column(col).to_pylist()]).astype(float)
        assert np.allclose(a, b, atol=4e-3, rtol=2e-3), col  # fp16's step near these values
    # and raykd's own cache as a source, matched by content
    third, _ = _run(root, m, tpl, I.ImportSettings("raykd", str(root / "caches" / "rt0")), "rt2")
    assert third["rows"] == len(rows)
    again_ids = pa.concat_tables([pq.read_table(root / "caches" / "rt2" / "train" / f) for f in sorted(third["files"])])
    assert again_ids.column("topk_ids").to_pylist() == mine.column("topk_ids").to_pylist()
    # an export of another tokenizer is refused by its recorded fingerprint
    meta = json.loads((tmp_path / "ax" / I.EXPORT_META).read_text())
    (tmp_path / "ax" / I.EXPORT_META).write_text(json.dumps(dict(meta, tokenizer_sha256="0" * 64)))
    with pytest.raises(RaykdError, match="another tokenizer"):
        _run(root, m, tpl, I.ImportSettings("axolotl", str(tmp_path / "ax")), "rt3")


def _study_source(cfg_path, sets, out):
    """A tiny causal study's inputs prepared here (no Ray) and an axolotl source of its train pairs at
    ``out``: (plan, manifest, template, [(sequence, response range)])."""
    from raykd import config as C
    from raykd.data.shards import load_manifest
    from raykd.data.template import CausalTemplate
    from raykd.ray_layer.inputs import prepare_inputs

    plan = prepare_inputs(C.load_config(cfg_path, C.parse_set(sets)))
    m, tpl = load_manifest(plan.prepared), CausalTemplate.from_dict(plan.template)
    rows = []
    for path in shard_paths(plan.prepared, "train", m):
        t = pq.read_table(path).to_pydict()
        rows += [S.prepared_sequence(tpl, q, a) for q, a in zip(t["q_input_ids"], t["a_input_ids"])]
    pq.write_table(pa.Table.from_pylist(_axolotl_rows(rows, m["tokenizer"]["vocab_size"])), out)
    return plan, m, tpl, rows


def test_the_command_imports_refuses_in_one_line_and_exports(tmp_path, capsys):
    """``python -m raykd.cache import/export`` on a tiny causal study (its data prepared here, no Ray)."""
    from raykd.ray_layer.cache.cli import main

    sets = ["data.synth.dialogs=60", "data.max_length=16", "data.tokenizer=train-bpe:300",
            f"data.work_dir={tmp_path / 'work'}"]
    cfg = "search_spaces/causal_smoke.yaml"
    plan, m, tpl, rows = _study_source(cfg, sets, tmp_path / "a.parquet")
    capsys.readouterr()
    assert main(["import", "--format", "axolotl", "--from", str(tmp_path / "a.parquet"), "--config", cfg,
                 "--set", *sets]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.name.startswith("imported-") and json.loads((out / "manifest.json").read_text())["rows"] == len(rows)
    assert main(["export", "--format", "axolotl", "--from", str(out), "--to", str(tmp_path / "ax"), "--config", cfg,
                 "--set", *sets]) == 0
    assert (tmp_path / "ax" / I.EXPORT_META).exists()
    shifted = _axolotl_rows(rows, m["tokenizer"]["vocab_size"], shift=1)
    pq.write_table(pa.Table.from_pylist(shifted), tmp_path / "s.parquet")
    capsys.readouterr()
    before = sorted(p.name for p in out.parent.iterdir())
    assert main(["import", "--format", "axolotl", "--from", str(tmp_path / "s.parquet"), "--config", cfg,
                 "--set", *sets]) == 2
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error:")]  # progress lines go to stderr too
    assert len(errors) == 1 and "shifted by one position" in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == before  # nothing written
    assert main(["import", "--format", "axolotl", "--from", str(tmp_path / "a.parquet"), "--config",
                 "search_spaces/causal_xtok.yaml", "--set", *sets]) == 2
    assert "tokenizer" in capsys.readouterr().err
    # DistillKit's compression config: only with --format distillkit, and a bad one named by its key
    (tmp_path / "dk.yaml").write_text("d: 300\nk: 5\nexact_k: 5\nresidual_bins: []\nexact_dtyp: float16\n")
    for fmt, match in (("axolotl", "only with --format distillkit"), ("distillkit", "dk.yaml: exact_dtyp: unknown key")):
        assert main(["import", "--format", fmt, "--from", str(tmp_path / "a.parquet"), "--config", cfg,
                     "--compression", str(tmp_path / "dk.yaml"), "--set", *sets]) == 2
        err = capsys.readouterr().err
        assert [x for x in err.splitlines() if x.startswith("error:")] == [x for x in err.splitlines() if match in x]
        assert len(err.splitlines()) == 1


def test_a_study_reads_an_imported_cache_only_where_it_is_exact(tmp_path):
    """``teacher.cache_import``: checked at load time (a directory with a manifest, with cache: logits)
    and at plan time, by ``prepare_inputs`` itself — before any teacher adaptation — (the same data, k, every
    train pair, and only the source's temperature)."""
    from raykd import config as C
    from raykd.ray_layer.inputs import imported_cache_entry, prepare_inputs

    cfg_path = "search_spaces/causal_smoke.yaml"
    sets = ["data.synth.dialogs=60", "data.max_length=16", "data.tokenizer=train-bpe:300",
            f"data.work_dir={tmp_path / 'work'}", "method.name=kd", "space={}"]
    plan, m, tpl, rows = _study_source(cfg_path, sets, tmp_path / "a.parquet")
    out = tmp_path / "imported"
    I.import_logprobs(I.ImportSettings("axolotl", str(tmp_path / "a.parquet"), temperature=2.0), plan.prepared, m, tpl,
                      out, log=lambda s: None)

    def entry(*more):
        cfg = C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={out}", "teacher.cache=logits",
                                                          "teacher.cache_topk=4", *more]))
        return imported_cache_entry(cfg, prepare_inputs(cfg), 2)

    got = entry("method.params.temperature=2.0")
    assert got["dir"] == str(out) and got["topk"] == K and got["temperatures"] == [2.0]
    with pytest.raises(RaykdError, match=r"exact at T = \[2.0\] only .* T = \[1.0\]"):
        entry("method.params.temperature=1.0")
    with pytest.raises(RaykdError, match=r"exact at T = \[2.0\] only"):  # the plan alone refuses it
        prepare_inputs(C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={out}", "teacher.cache=logits",
                                                                   "teacher.cache_topk=4", "method.params.temperature=1.0"])))
    with pytest.raises(RaykdError, match="top-5"):
        entry("method.params.temperature=2.0", "teacher.cache_topk=8")
    with pytest.raises(RaykdError, match="other prepared data"):
        entry("method.params.temperature=2.0", "data.max_length=20")
    with pytest.raises(RaykdError, match="continuous temperature"):
        entry("method.params.temperature=2.0", "space={method.params.temperature: {uniform: [1.5, 2.5]}}")
    # a trial that cannot read it (another temperature, or generating) is an error, never the local teacher
    from raykd.ray_layer.cache.causal_lm import trial_causal_cache

    cfg = C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={out}", "teacher.cache=logits",
                                                      "method.params.temperature=2.0"]))
    assert trial_causal_cache(cfg, got)["temperature"] == 2.0
    cfg.method.params["temperature"] = 1.0
    with pytest.raises(RaykdError, match="cannot read the imported"):
        trial_causal_cache(cfg, got)
    cfg.method.name, cfg.method.params = "sft", {}
    assert trial_causal_cache(cfg, got) is None  # reads no teacher: fine
    # a partial import is refused: its trials would train on other pairs than the references
    half = [r for i, r in enumerate(_axolotl_rows(rows, m["tokenizer"]["vocab_size"])) if i % 2]
    pq.write_table(pa.Table.from_pylist(half), tmp_path / "half.parquet")
    I.import_logprobs(I.ImportSettings("axolotl", str(tmp_path / "half.parquet"), temperature=2.0), plan.prepared, m,
                      tpl, tmp_path / "half", log=lambda s: None)
    with pytest.raises(RaykdError, match="of the .* train pairs"):
        cfg = C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={tmp_path / 'half'}",
                                                          "teacher.cache=logits", "teacher.cache_topk=4",
                                                          "method.params.temperature=2.0"]))
        imported_cache_entry(cfg, prepare_inputs(cfg), 2)
    with pytest.raises(C.ConfigError, match="teacher.cache_import"):
        C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={tmp_path}", "teacher.cache=logits"]))
    with pytest.raises(C.ConfigError, match="compare study"):
        C.load_config("search_spaces/causal_compare.yaml",
                      C.parse_set([f"teacher.cache_import={out}", "teacher.cache=logits"]))
    with pytest.raises(C.ConfigError, match="cache: logits"):
        C.load_config(cfg_path, C.parse_set(sets + [f"teacher.cache_import={out}"]))
