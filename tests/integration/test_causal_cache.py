"""The causal teacher's cache, built for real with Ray Data actors on the causal tests' shared inputs
(generated corpus, BPE tokenizer, adapted LLaMA-arch teacher): its top-k log-probabilities and tail
buckets are the online teacher's (within fp16), the sparse loss from it equals the online
full-vocabulary loss at k = V − 1 and approaches it from below at smaller k, its hidden states serve
feature_align, it is reused and refused above its limit, and a study's kd trials read it while a
generating gkd trial runs its teacher online."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import raykd
from raykd import config as C
from raykd.distill import losses as L
from raykd.distill.methods import TokenIds, build_method, make_inputs
from raykd.models.families import family as get_family
from raykd.models.student import build_student
from raykd.models.teacher import load_teacher
from raykd.ray_layer.cache.causal_lm import (TOPK_COLUMNS as TOPK, CausalCachedCollate, causal_cached_dataset,
                                             causal_cached_targets)
from raykd.ray_layer.inputs import complete_inputs, prepare_inputs, teacher_cache_for
from tests.conftest import CAUSAL_OVERRIDES, ROOT
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CAUSAL = str(ROOT / "search_spaces" / "causal_smoke.yaml")


def _cfg(work, **more):
    return C.load_config(CAUSAL, {"data.work_dir": str(work / "work"), **CAUSAL_OVERRIDES, "space": {},
                                  "method.name": "feature_align", "method.params": {"temperature": 2.0},
                                  "teacher.cache": "both", **more})


@pytest.fixture(scope="module")
def built(ray_session, causal_work):
    cfg = _cfg(causal_work)
    plan = prepare_inputs(cfg)
    complete_inputs(cfg, plan)
    logs: list[str] = []
    import raykd.ray_layer.inputs as inputs_mod

    old, inputs_mod.log = inputs_mod.log, logs.append
    try:
        cache = teacher_cache_for(cfg, plan)
    finally:
        inputs_mod.log = old
    return cfg, plan, cache, logs


def _batch(cfg, plan, cache, k, temperature, n=12):
    from raykd.data.template import CausalTemplate

    rows = causal_cached_dataset(cache["dir"], cache["layers"], True).take_batch(n, batch_format="numpy")
    ti = cache["temperatures"].index(temperature)
    collate = CausalCachedCollate(CausalTemplate.from_dict(plan.template), None, cache["layers"], cache["hidden"],
                                  topk=k, cached_topk=cache["topk"], temperature=temperature, temperature_index=ti,
                                  temperatures=len(cache["temperatures"]))
    batch = collate(rows)
    batch.pop("pair_id", None)
    targets = causal_cached_targets(batch.pop("teacher_cached"), "cpu")
    manifest = json.loads(Path(plan.prepared, "manifest.json").read_text())
    inputs = make_inputs(batch, TokenIds.from_manifest(manifest), family=get_family("causal_lm"))
    return inputs, targets, manifest


def test_build_holds_every_pair_prints_its_size_and_caches_both_kinds(built):
    cfg, plan, cache, logs = built
    meta = json.loads(Path(cache["dir"], "manifest.json").read_text())
    manifest = json.loads(Path(plan.prepared, "manifest.json").read_text())
    assert meta["rows"] == manifest["splits"]["train"]["rows"] and meta["family"] == "causal_lm"
    assert meta["topk"] == 64 and meta["temperatures"] == [1.0, 2.0]
    assert meta["layers"] == [3, 6]  # feature_align's mapped layers g(1), g(2) of 6 → 2 (and the last)
    assert any("about" in m and "GB" in m for m in logs) and any("wrote" in m for m in logs)
    # the estimate is what was stored before compression: (k ids + k log-probs + tails) per response token
    assert meta["response_tokens"] > 0 and meta["sequence_tokens"] > meta["response_tokens"]


def test_cached_topk_is_the_online_teachers_and_the_sparse_loss_matches(built):
    cfg, plan, cache, _ = built
    inputs, targets, manifest = _batch(cfg, plan, cache, 64, 2.0)
    teacher = load_teacher(plan.teacher, family="causal_lm").eval()
    with torch.no_grad():
        out = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["mask"], output_hidden_states=True)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    z_t = out.logits[inputs["chosen"]][:, :vocab]
    assert targets["topk_ids"].shape == (int(inputs["chosen"].sum()), 64)
    # the cached ids are the online teacher's top 64 (ties within fp16 aside), row-major over response tokens
    online_top = z_t.topk(64, -1).indices
    agree = (targets["topk_ids"][:, :8] == online_top[:, :8]).float().mean()
    assert agree > 0.99, float(agree)
    p_t = torch.softmax(z_t / 2.0, -1)
    want = p_t.gather(-1, targets["topk_ids"]).log()
    assert torch.allclose(targets["topk_lp"][:, :64], want, atol=2e-2)  # fp16 storage of log-probs
    assert torch.allclose(targets["topk_lp"].exp().sum(-1), torch.ones(len(want)), atol=1e-4)
    # hidden states of the mapped layers: the online teacher's within fp16, zero at padding
    real = inputs["mask"].bool()
    for layer in cache["layers"]:
        a, b = out.hidden_states[layer][real], targets["hidden"][layer][real]
        assert (a - b).abs().max() <= 5e-3 * a.abs().max()
        assert (targets["hidden"][layer][~real] == 0).all()
    # the sparse loss is a coarsening of the full-vocabulary loss: below it, and growing with k (the
    # data-processing inequality for nested partitions); how far below is measured in docs/findings.md
    torch.manual_seed(0)
    student = build_student(teacher, 2)
    with torch.no_grad():
        z_s = student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[inputs["chosen"]][:, :vocab]
    from raykd.distill.topk import sparse_divergence

    dense = float(L.forward_kl(z_s, z_t, temperature=2.0))
    sparse = []
    for k in (8, 32, 64):
        _, tk, _ = _batch(cfg, plan, cache, k, 2.0)
        sparse.append(float(sparse_divergence("forward_kl", z_s, tk["topk_ids"], tk["topk_lp"], temperature=2.0)))
    assert 0 < sparse[0] < sparse[1] < sparse[2] <= dense * (1 + 1e-3), (sparse, dense)


def test_feature_align_from_the_cache_equals_online(built):
    cfg, plan, cache, _ = built
    inputs, cached, manifest = _batch(cfg, plan, cache, 64, 2.0)
    teacher = load_teacher(plan.teacher, family="causal_lm").eval()
    torch.manual_seed(0)
    method = build_method("feature_align", build_student(teacher, 2), teacher.config, temperature=2.0,
                          dynamic_weights=False)
    method.vocab = int(manifest["tokenizer"]["vocab_size"])
    online = method.teacher_targets(teacher, dict(inputs))
    method.eval()
    with torch.no_grad():
        lo, lc = method(dict(inputs), online), method(dict(inputs), cached)
    for k in ("ce", "align", "contrastive"):  # hidden-state terms: fp16 rounding only
        assert lc[k].item() == pytest.approx(lo[k].item(), rel=2e-3), k
    assert 0 < lc["logit"].item() <= lo["logit"].item() * (1 + 1e-3)  # top-64 + tail: a coarsening of the full loss


def test_reused_and_refused_above_the_limit(built, causal_work):
    from raykd.ray_layer.cache.cli import main as cache_main

    cfg, plan, cache, _ = built
    sets = [f"data.work_dir={causal_work / 'work'}", *(f"{k}={v}" for k, v in CAUSAL_OVERRIDES.items()), "space={}",
            "method.name=feature_align", "method.params={temperature: 2.0}", "teacher.cache=both"]
    assert cache_main(["build", "--config", CAUSAL, "--set", *sets]) == 0  # unchanged inputs: the same directory
    parent = Path(cache["dir"]).parent
    before = sorted(p.name for p in parent.iterdir())
    assert cache_main(["build", "--config", CAUSAL, "--max-gb", "1e-6", "--set", *sets, "teacher.cache_topk=128"]) == 2
    assert sorted(p.name for p in parent.iterdir()) == before  # nothing written


def test_a_study_reads_the_logit_cache_and_a_generating_trial_runs_online(ray_session, causal_work):
    overrides = {"data.work_dir": str(causal_work / "work"), **CAUSAL_OVERRIDES, "train.steps": 4,
                 "train.eval_every": 4, "train.eval_pairs": 16, "experiment.references": False,
                 "teacher.cache": "logits", "teacher.cache_topk": 16, "search.algorithm": "grid",
                 "search.scheduler.type": "none", "method.name": "gkd", "method.params": {},
                 "space": {"method.params.lmbda": {"grid": [0.0, 1.0]}}}
    results, path = raykd.run_study(CAUSAL, overrides=overrides, storage=str(causal_work / "exp"), name="topk")
    assert len(results) == 2 and not results.errors
    sources = {}
    for name, rows in trial_results(Path(path)).items():
        final = rows[-1]
        assert final["train/loss"] == final["train/loss"]  # finite
        prov = json.loads((Path(path) / name / "provenance.json").read_text())
        sources[prov["config"]["method"]["params"]["lmbda"]] = final["teacher_source"]
    assert sources == {0.0: "cache", 1.0: "online"}  # lmbda 1: the student's own samples need the teacher


@pytest.mark.parametrize("fmt", ["axolotl", "distillkit", "raykd"])
def test_an_imported_cache_gives_the_built_caches_loss_and_a_study_trains_on_it(built, causal_work, tmp_path, fmt):
    """raykd's cache exported as axolotl rows (DistillKit raw rows from those, or raykd rows as they are) and
    imported at its temperature
    (``python -m raykd.cache import``): the same teacher distribution and sparse loss as the cache built
    here (within fp16), and a kd study at that temperature reads it (``teacher.cache_import``)."""
    from raykd.data import logprob_import as I
    from raykd.data.template import CausalTemplate
    from raykd.distill.topk import sparse_divergence
    from raykd.ray_layer.cache.cli import main as cache_main

    cfg, plan, cache, _ = built
    manifest = json.loads(Path(plan.prepared, "manifest.json").read_text())
    tpl = CausalTemplate.from_dict(plan.template)
    source = cache["dir"]
    if fmt != "raykd":
        source = str(tmp_path / "axolotl")
        I.export_axolotl(cache["dir"], plan.prepared, manifest, tpl, source, temperature=2.0, log=lambda s: None)
    if fmt == "distillkit":  # DistillKit's raw rows: row t over token t + 1, no row for the last position
        import pyarrow.parquet as pq_

        lines = [json.dumps({"input_ids": r["input_ids"], "token_ids": r["target_token_ids"][:-1],
                             "top_values": r["target_logprobs"][:-1]})
                 for f in sorted(Path(source).glob("*.parquet")) for r in pq_.read_table(f).to_pylist()]
        source = str(tmp_path / "distillkit.jsonl")
        Path(source).write_text("\n".join(lines) + "\n")
    sets = [f"data.work_dir={causal_work / 'work'}", *(f"{k}={v}" for k, v in CAUSAL_OVERRIDES.items()), "space={}"]
    assert cache_main(["import", "--format", fmt, "--from", source, "--config", CAUSAL, "--temperature", "2.0",
                       "--strict", "--set", *sets]) == 0
    imported = sorted(Path(cache["dir"]).parent.glob("imported-*"), key=lambda p: p.stat().st_mtime)[-1]
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def rows_of(directory):  # by pair_id: Ray Data may have written the built cache in another order
        meta = json.loads(Path(directory, "manifest.json").read_text())
        t = pa.concat_tables([pq.read_table(Path(directory, "train", f)) for f in sorted(meta["files"])])
        return {r["pair_id"]: r for r in t.to_pylist()}, meta

    (mine, m_meta), (theirs, t_meta) = rows_of(cache["dir"]), rows_of(imported)
    assert sorted(mine) == sorted(theirs) and t_meta["temperatures"] == [2.0] and t_meta["topk"] == 64
    pick = sorted(mine)[:12]

    def targets(rows, meta):
        temps = meta["temperatures"]
        batch = {k: np.array([rows[p][k] for p in pick], dtype=object) for k in ("pair_id", "q_input_ids",
                                                                              "a_input_ids", *TOPK)}
        c = CausalCachedCollate(tpl, None, [], 0, topk=64, cached_topk=64, temperature=2.0,
                                temperature_index=temps.index(2.0), temperatures=len(temps))(batch)
        return c, causal_cached_targets(c.pop("teacher_cached"), "cpu")

    (a_in, a_t), (b_in, b_t) = targets(mine, m_meta), targets(theirs, t_meta)
    assert torch.equal(a_in["input_ids"], b_in["input_ids"]) and torch.equal(a_t["topk_ids"], b_t["topk_ids"])
    assert torch.allclose(a_t["topk_lp"], b_t["topk_lp"], atol=2e-2)
    torch.manual_seed(0)
    z = torch.randn(a_t["topk_ids"].shape[0], int(manifest["tokenizer"]["vocab_size"]))
    la = float(sparse_divergence("forward_kl", z, a_t["topk_ids"], a_t["topk_lp"], temperature=2.0))
    lb = float(sparse_divergence("forward_kl", z, b_t["topk_ids"], b_t["topk_lp"], temperature=2.0))
    assert lb == pytest.approx(la, rel=5e-3)
    overrides = {"data.work_dir": str(causal_work / "work"), **CAUSAL_OVERRIDES, "train.steps": 2,
                 "train.eval_every": 2, "train.eval_pairs": 16, "experiment.references": False,
                 "teacher.cache": "logits", "teacher.cache_import": str(imported), "teacher.cache_topk": 16,
                 "search.algorithm": "grid", "search.scheduler.type": "none", "method.name": "kd",
                 "method.params": {"temperature": 2.0}, "space": {}, "search.num_samples": 1}
    results, path = raykd.run_study(CAUSAL, overrides=overrides, storage=str(tmp_path / "exp"), name=f"imp-{fmt}")
    assert len(results) == 1 and not results.errors
    final = next(iter(trial_results(Path(path)).values()))[-1]
    assert final["teacher_source"] == "cache" and final["train/loss"] == final["train/loss"]


def test_import_on_ray_data_workers_writes_what_the_driver_writes(built, tmp_path):
    """``--workers``: the source's files converted by Ray Data actors give the very cache the driver's
    one-after-the-other import gives (same rows, same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raykd.data import logprob_import as I
    from raykd.data.template import CausalTemplate
    from raykd.ray_layer.cache.importer import ray_data_mapper

    cfg, plan, cache, _ = built
    manifest = json.loads(Path(plan.prepared, "manifest.json").read_text())
    tpl = CausalTemplate.from_dict(plan.template)
    I.export_axolotl(cache["dir"], plan.prepared, manifest, tpl, tmp_path / "ax", temperature=1.0, log=lambda s: None)
    rows = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "ax").glob("*.parquet"))])
    (tmp_path / "src").mkdir()
    for i in range(3):
        pq.write_table(rows.take(list(range(i, rows.num_rows, 3))), tmp_path / "src" / f"part-{i}.parquet")
    settings = I.ImportSettings("axolotl", str(tmp_path / "src"), strict=True)
    a = I.import_logprobs(settings, plan.prepared, manifest, tpl, tmp_path / "driver", log=lambda s: None)
    b = I.import_logprobs(settings, plan.prepared, manifest, tpl, tmp_path / "workers", log=lambda s: None,
                          map_files=ray_data_mapper(2))
    assert a["rows"] == b["rows"] == manifest["splits"]["train"]["rows"] and a["files"].keys() == b["files"].keys()
    for name in a["files"]:
        assert pq.read_table(tmp_path / "driver" / "train" / name).equals(pq.read_table(tmp_path / "workers" / "train" / name))
