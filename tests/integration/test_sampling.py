"""Sampling strategies on a real scoring pass: each changes what the student sees as it claims,
deterministically, on a stream (plain batches and Ray Data map_batches alike)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raykd.data.sampling import ScoreTable, build_sampler, compute_scores
from raykd.data.shards import shard_paths
from raykd.models.teacher import TeacherShape, build_teacher
from raykd.registry import SAMPLERS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scored(synth_prepared):
    _, prepared, manifest = synth_prepared
    teacher = build_teacher(TeacherShape(layers=2, hidden=64, heads=4, intermediate=128, max_position=128),
                            manifest["tokenizer"]["vocab_size"], seed=3)
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
    assert list(whole["pair_id"]) == [p for c in pieces for p in c["pair_id"]]
    assert list(build_sampler(name, table, seed=5)(batch)["pair_id"]) == list(whole["pair_id"])
    if name in ("entropy", "domain_aware"):
        assert list(build_sampler(name, table, seed=6)(batch)["pair_id"]) != list(whole["pair_id"])


def test_sampler_runs_on_a_ray_data_stream(ray_session, scored, synth_prepared):
    from raykd.data.stream import split_datasets

    prepared, manifest, _, out, table, batch = scored
    ds = split_datasets(prepared, splits=("train",))["train"]
    sampled = ds.map_batches(build_sampler("domain_aware", table, seed=0), batch_format="numpy")
    got = sorted(r["pair_id"] for r in sampled.take_all())
    expected = sorted(build_sampler("domain_aware", table, seed=0)(batch)["pair_id"])
    assert got == expected
