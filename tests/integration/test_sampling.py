"""Sampling strategies on a real scoring pass: each changes what the student sees as it claims,
deterministically, on a stream (plain batches and Ray Data map_batches alike)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raykd.data.sampling import ScoreTable, build_sampler
from raykd.stages.score import compute_scores
from raykd.data.shards import shard_paths
from raykd.models.teacher import TeacherShape, build_teacher
from raykd.registry import SAMPLERS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scored(synth_prepared):
    _, prepared, manifest = synth_prepared
    teacher = build_teacher(TeacherShape(layers=2, hidden=64, heads=4, intermediate=128, max_position=128),
                            manifest["tokenizer"]["vocab_size"], seed=3).eval()
    with torch.no_grad():  # a confident teacher: a freshly initialised one predicts ~uniformly everywhere
        teacher.cls.predictions.transform.LayerNorm.weight.mul_(200.0)  # (every entropy ≈ ln V, nothing to rank)
    out = compute_scores(prepared, teacher, "random-teacher-seed3", log=lambda m: None)
    rows = pq.read_table(shard_paths(prepared, "train", manifest)).to_pydict()
    batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
    return prepared, manifest, teacher, out, ScoreTable(out), batch


def chunks(batch, size):
    n = len(batch["pair_id"])
    return [{k: v[i: i + size] for k, v in batch.items()} for i in range(0, n, size)]


def test_scores_cover_train_split_and_are_reused(scored):
    prepared, manifest, teacher, out, table, batch = scored
    assert len(table.index) == manifest["splits"]["train"]["rows"]
    assert table.embedding.shape[1] == 64 and np.isfinite(table.entropy).all()
    logs = []
    assert compute_scores(prepared, teacher, "random-teacher-seed3", log=logs.append) == out and "reusing" in logs[0]
    assert not (prepared / "train" / "scores.parquet").exists()  # the shards are never rewritten


def test_registry_has_the_five_strategies():
    assert SAMPLERS.names() == ["domain_aware", "entropy", "hard_negative", "random_masked", "uniform"]


def test_domain_aware_raises_share_of_underrepresented_departments(scored):
    *_, table, batch = scored
    out = build_sampler("domain_aware", table, seed=0)(batch)
    counts = table.department_counts
    rare = sorted(counts, key=counts.get)[:4]
    share = lambda b: np.isin(b["department"], rare).mean()  # noqa: E731
    print(f"rare-department share {share(batch):.3f} → {share(out):.3f}")
    assert share(out) > 1.3 * share(batch)
    assert 0.8 < len(out["pair_id"]) / len(batch["pair_id"]) < 1.2  # expected size kept


def test_entropy_sampling_favours_uncertain_examples(scored):
    *_, table, batch = scored
    out = build_sampler("entropy", table, seed=0, gamma=2.0)(batch)
    before = table.entropy[table.rows(batch["pair_id"])].mean()
    after = table.entropy[table.rows(out["pair_id"])].mean()
    assert after > before


def test_hard_negative_batches_are_closer_in_teacher_space_than_random(scored):
    *_, table, batch = scored
    out = build_sampler("hard_negative", table, seed=0, batch_size=16)(batch)
    assert sorted(out["pair_id"]) == sorted(batch["pair_id"])  # a reordering, nothing lost

    def in_batch_similarity(b):
        sims = []
        for c in chunks(b, 16):
            e = table.embedding[table.rows(c["pair_id"])]
            s = e @ e.T
            sims.append(s[np.triu_indices(len(e), 1)].mean())
        return float(np.mean(sims))

    rng = np.random.default_rng(0)
    shuffled = {k: v[rng.permutation(len(v))] for k, v in batch.items()}
    print(f"in-batch teacher cosine: random {in_batch_similarity(shuffled):.3f}, hard_negative {in_batch_similarity(out):.3f}")
    assert in_batch_similarity(out) > in_batch_similarity(shuffled) + 0.05


def test_random_masked_adds_noise_only_to_content_tokens(scored):
    _, manifest, *_, table, batch = scored
    t = manifest["tokenizer"]
    out = build_sampler("random_masked", table, seed=0, prob=0.2, mask_id=t["mask_token_id"])(batch)
    before = np.concatenate(batch["q_input_ids"])
    after = np.concatenate(out["q_input_ids"])
    changed = before != after
    assert (after[changed] == t["mask_token_id"]).all()
    assert not np.isin(before[changed], [t["cls_token_id"], t["sep_token_id"]]).any()
    assert 0.12 < changed.mean() < 0.22


@pytest.mark.parametrize("name", ["uniform", "entropy", "domain_aware", "random_masked"])
def test_deterministic_under_seed_and_independent_of_batch_boundaries(scored, name):
    *_, table, batch = scored
    s = build_sampler(name, table, seed=5)
    whole = s(batch)
    pieces = [s(c) for c in chunks(batch, 37)]
    if name in ("uniform", "random_masked"):  # row by row: the same rows in the same order
        assert list(whole["pair_id"]) == [p for c in pieces for p in c["pair_id"]]
    else:  # resampling draws each row's count from (seed, epoch, pair_id): the same multiset of rows
        assert sorted(whole["pair_id"]) == sorted(p for c in pieces for p in c["pair_id"])
    assert list(build_sampler(name, table, seed=5)(batch)["pair_id"]) == list(whole["pair_id"])
    if name in ("entropy", "domain_aware"):
        assert list(build_sampler(name, table, seed=6)(batch)["pair_id"]) != list(whole["pair_id"])


@pytest.mark.parametrize("name", ["entropy", "domain_aware", "random_masked", "hard_negative"])
def test_every_epoch_draws_anew(scored, name):
    *_, table, batch = scored
    s = build_sampler(name, table, seed=5, batch_size=16)
    col = "q_input_ids" if name == "random_masked" else "pair_id"
    e0, e1 = s(batch, 0), s(batch, 1)
    assert [list(x) for x in e0[col]] != [list(x) for x in e1[col]]
    assert [list(x) for x in s(batch, 1)[col]] == [list(x) for x in e1[col]]  # and reproducibly so


@pytest.mark.parametrize("name", ["entropy", "domain_aware"])
def test_resampled_duplicates_are_spread_apart(scored, name):
    *_, table, batch = scored
    out = build_sampler(name, table, seed=0, gamma=2.0)(batch)["pair_id"]
    dup = len(out) - len(set(out))
    adjacent = sum(a == b for a, b in zip(out[:-1], out[1:]))
    print(f"{name}: {dup} duplicated rows, {adjacent} adjacent to their copy")
    assert dup > 20 and adjacent <= max(2, dup // 20)


def test_entropy_scores_every_question(scored):
    """Every question gets an entropy from its own content tokens, also short ones (a single 15 % draw
    misses all tokens of 44 % of 5-token questions and scored them 0)."""
    *_, table, batch = scored
    assert (table.entropy > 0).all()


def test_sampler_runs_on_a_ray_data_stream_in_training_batches(ray_session, scored, synth_prepared):
    from raykd.ray_layer.stream import PairCollator, split_datasets
    from raykd.ray_layer.loop import sampled_batches

    prepared, manifest, _, out, table, batch = scored
    ds = split_datasets(prepared, splits=("train",))["train"]
    collate = PairCollator(manifest["tokenizer"]["pad_token_id"])
    s = build_sampler("domain_aware", table, seed=0)
    got = list(sampled_batches(ds.iterator(), s, 3, 16, collate))
    assert all(len(b["pair_id"]) == 16 for b in got[:-1]) and 0 < len(got[-1]["pair_id"]) <= 16
    ids = sorted(p for b in got for p in b["pair_id"])
    assert ids == sorted(s(batch, 3)["pair_id"])  # the whole split is one window here
    # hard-negative groups arrive whole, one training batch each (rows in the shards' order here)
    from ray.data import DataContext

    opts = DataContext.get_current().execution_options
    keep, opts.preserve_order = opts.preserve_order, True
    try:
        hard = build_sampler("hard_negative", table, seed=0, batch_size=16)
        groups = [b["pair_id"] for b in sampled_batches(ds.iterator(), hard, 0, 16, collate)]
    finally:
        opts.preserve_order = keep
    window = hard(batch, 0)["pair_id"]
    assert [list(g) for g in groups] == [list(window[i: i + 16]) for i in range(0, len(window), 16)]
