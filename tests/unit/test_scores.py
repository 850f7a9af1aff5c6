"""The sampler scoring pass (``raykd.stages.score.compute_scores``) run in batches of similar question length:
its rows come back in the train split's order, each row's embedding its own question's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit


def test_scores_rows_are_in_source_order_and_embeddings_do_not_depend_on_the_batch(tmp_path):
    import pyarrow.parquet as pq

    from raykd.data.shards import PrepareSettings, load_manifest, prepare, shard_paths, special_token_ids
    from raykd.data.synth import write_corpus
    from raykd.models.teacher import TeacherShape, build_teacher
    from raykd.stages.score import EMBED_DIM, compute_scores

    write_corpus(tmp_path / "raw", 200, seed=5)
    prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), max_length=32, quiet=True,
                            shard_rows=150))
    m = load_manifest(tmp_path / "p")
    torch.manual_seed(0)
    teacher = build_teacher(TeacherShape(layers=2, hidden=32, heads=4, intermediate=64, max_position=64),
                            m["tokenizer"]["vocab_size"]).eval()
    out = compute_scores(tmp_path / "p", teacher, "t", batch_size=16, log=lambda s: None)
    scores = pq.read_table(out / "scores.parquet")
    source = pq.read_table(shard_paths(tmp_path / "p", "train", m), columns=["pair_id", "q_input_ids"])
    assert scores.column("pair_id").to_pylist() == source.column("pair_id").to_pylist()
    assert len(shard_paths(tmp_path / "p", "train", m)) > 1
    # each stored embedding is its own question's: content-token mean of the teacher's last layer, each question
    # run alone (no padding), centred over the split and normalised (hidden 32 < EMBED_DIM: no projection)
    assert EMBED_DIM > 32
    special = special_token_ids(tmp_path / "p", m)
    reps = []
    with torch.no_grad():
        for q in source.column("q_input_ids").to_pylist():
            ids = torch.tensor([q])
            h = teacher.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            content = torch.tensor([x not in special for x in q])
            reps.append(h[content].mean(0) if content.any() else torch.zeros(h.shape[-1]))
    want = torch.nn.functional.normalize(torch.stack(reps) - torch.stack(reps).mean(0), dim=-1).numpy()
    got = np.array(scores.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - want).max() < 2e-3  # fp16 storage
