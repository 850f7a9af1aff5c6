"""The teacher-output cache, built for real with Ray Data actors: it holds exactly the teacher's
hidden states (within fp16), losses computed from it match the online teacher, it is reused while
its inputs are unchanged, invalidated when one changes, refused above its size limit and never
read when tampered with."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from raykd.ray_layer.cache.builder import load_cache_manifest, structural_layers
from raykd.ray_layer.cache.masked_lm import CachedPairCollator, build_cache, cache_use, cached_dataset, cached_targets
from raykd.ray_layer.stream import department_index
from raykd.distill.methods import TokenIds, build_method, make_inputs
from raykd.errors import RaykdError
from raykd.models.student import build_student
from raykd.models.teacher import TeacherShape, build_teacher, load_teacher
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
LAYERS = structural_layers(4, 2, 2)  # 4-layer teacher → 2-layer student, depth 2: layers 2 and 4


@pytest.fixture(scope="module")
def cache_setup(ray_session, synth_prepared, tmp_path_factory):
    _, prepared, manifest = synth_prepared
    teacher_dir = tmp_path_factory.mktemp("cache_teacher") / "teacher"
    build_teacher(TeacherShape(layers=4, hidden=64, heads=4, intermediate=128, max_position=128),
                  manifest["tokenizer"]["vocab_size"], seed=5).save_pretrained(teacher_dir)
    logs: list[str] = []
    out = build_cache(str(prepared), str(teacher_dir), LAYERS, log=logs.append)
    return prepared, manifest, teacher_dir, out, logs


def test_build_writes_every_train_pair_and_prints_its_size_first(cache_setup):
    prepared, manifest, _, out, logs = cache_setup
    meta = load_cache_manifest(out)
    assert meta["rows"] == manifest["splits"]["train"]["rows"] and meta["layers"] == LAYERS and meta["hidden"] == 64
    assert "about" in logs[0] and "GB" in logs[0] and "wrote" in logs[-1]
    assert out.parent.name == "teacher_cache" and out.parent.parent == prepared.absolute()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _batch(out, n=24):
    rows = cached_dataset(out, LAYERS).take_batch(n, batch_format="numpy")
    return rows


def test_cached_states_and_losses_match_the_online_teacher(cache_setup):
    prepared, manifest, teacher_dir, out, _ = cache_setup
    teacher = load_teacher(str(teacher_dir)).eval()
    tokens = TokenIds.from_manifest(manifest)
    collate = CachedPairCollator(tokens.pad, department_index(manifest), LAYERS, 64)
    batch = collate(_batch(out))
    batch.pop("pair_id")
    cached = cached_targets(batch.pop("teacher_hidden"), "cpu")
    inputs = make_inputs(batch, tokens)
    online = build_method("structural", build_student(teacher, 2), teacher.config, depth=2,
                          n_departments=len(manifest["departments"])).teacher_targets(teacher, inputs)
    real = inputs["mask"].bool()
    for layer in LAYERS:
        a, b = online["hidden"][layer][real], cached["hidden"][layer][real]
        assert a.shape == b.shape
        err = (a - b).abs().max().item()
        assert err <= 2e-3 * a.abs().max().item(), (layer, err)  # fp16 rounding only
        assert (cached["hidden"][layer][~real] == 0).all()
    torch.manual_seed(0)
    student = build_student(teacher, 2)
    method = build_method("structural", student, teacher.config, depth=2, projection_dim=32,
                          n_departments=len(manifest["departments"]))
    method.train()
    for progress in (0.0, 1.0):  # fusion on (the teacher states also feed the student's input), then off
        method.set_progress(progress)
        with torch.no_grad():
            lo = (torch.manual_seed(1), method(inputs, online))[1]  # same dropout masks for both
            lc = (torch.manual_seed(1), method(inputs, cached))[1]
        for k in lo:
            assert abs(lo[k].item() - lc[k].item()) <= 1e-4 * max(1.0, abs(lo[k].item())), (progress, k, lo[k], lc[k])


def test_reused_while_inputs_unchanged_and_rebuilt_when_one_changes(cache_setup, tmp_path):
    prepared, manifest, teacher_dir, out, _ = cache_setup
    logs: list[str] = []
    assert build_cache(str(prepared), str(teacher_dir), LAYERS, log=logs.append) == out
    assert logs == [f"[cache] reusing {out}"]
    # another teacher (same shape, other weights) → another key
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher_dir, other)
    t = load_teacher(str(other))
    with torch.no_grad():
        t.base_model.encoder.layer[0].output.dense.weight.add_(0.01)
    t.save_pretrained(other)
    from raykd.ray_layer.cache.builder import teacher_fingerprint
    from raykd.ray_layer.cache.masked_lm import cache_key

    assert cache_key(teacher_fingerprint(str(other)), manifest, LAYERS) != out.name
    assert cache_key(teacher_fingerprint(str(teacher_dir)), manifest, [4]) != out.name
    assert cache_key(teacher_fingerprint(str(teacher_dir)), {**manifest, "key": "x"}, LAYERS) != out.name
    assert cache_key(teacher_fingerprint(str(teacher_dir)), manifest, LAYERS) == out.name


def test_refused_above_the_size_limit_without_writing(cache_setup):
    prepared, _, teacher_dir, out, _ = cache_setup
    before = sorted(p.name for p in out.parent.iterdir())
    with pytest.raises(RaykdError, match="teacher.cache_max_gb"):
        build_cache(str(prepared), str(teacher_dir), [1, 2, 3, 4], max_bytes=1000, log=lambda m: None)
    assert sorted(p.name for p in out.parent.iterdir()) == before


def test_tampered_cache_is_never_read(cache_setup, tmp_path):
    *_, out, _ = cache_setup
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = next((copy / "train").glob("*.parquet"))
    with open(shard, "ab") as f:
        f.write(b"junk")
    with pytest.raises(RaykdError, match="missing or changed"):
        cached_dataset(copy, LAYERS)
    with pytest.raises(RaykdError, match="not cached"):
        cached_dataset(out, [1])


def test_methods_and_samplers_that_cannot_use_a_cache_say_why():
    assert cache_use("structural", "entropy") is None
    assert "tinybert" in cache_use("tinybert", "uniform") and "minilm" in cache_use("minilm", "uniform")
    assert "random_masked" in cache_use("structural", "random_masked")


def test_manifest_lists_shards_with_sizes(cache_setup):
    *_, out, _ = cache_setup
    meta = json.loads((out / "manifest.json").read_text())
    files = {p.name: p.stat().st_size for p in (out / "train").glob("*.parquet")}
    assert {n: f["bytes"] for n, f in meta["files"].items()} == files
    assert sum(f["rows"] for f in meta["files"].values()) == meta["rows"]
    assert np.dtype(meta["dtype"]) == np.float16
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(next((out / "train").glob("*.parquet")))  # plain Parquet, no Ray extension types
    assert pa.types.is_list(schema.field("q_input_ids").type) and schema.field("a_h4").type == pa.binary()


def test_cli_builds_or_reuses_the_studys_cache_and_refuses_one_above_the_limit(cache_setup, capsys):
    from raykd.ray_layer.cache.cli import main as cache_main

    prepared, _, teacher_dir, out, _ = cache_setup
    smoke = str(ROOT / "search_spaces" / "smoke.yaml")
    sets = [f"data.prepared={prepared}", f"teacher.spec={teacher_dir}", "teacher.adapt=null", "space={}"]
    assert cache_main(["build", "--config", smoke, "--set", *sets, "student.layers=2", "method.depth=2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)  # same teacher, data and layers: reused
    before = sorted(p.name for p in out.parent.iterdir())
    assert cache_main(["build", "--config", smoke, "--max-gb", "1e-9", "--set", *sets, "student.layers=4",
                       "method.depth=4"]) == 2  # layers 1-4: a new cache, refused by the limit
    assert "teacher.cache_max_gb" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == before
