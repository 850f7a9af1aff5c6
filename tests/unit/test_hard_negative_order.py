"""``hard_negative`` groups do not depend on the order the rows arrive in (a Ray Data window and the same
rows in memory gave two swapped neighbours in CI: BLAS rounded equal similarities differently by position)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def _table(tmp_path, n: int, dim: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raykd.data.sampling import ScoreTable

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float16)
    emb[1::3] = emb[0::3][: len(emb[1::3])]  # many rows share an embedding (one question asked twice): exact ties
    emb = emb / np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True)
    ids = [f"d{i}.txt#{i % 7}#0" for i in range(n)]
    pq.write_table(pa.table({"pair_id": ids, "entropy": rng.random(n), "relevance": rng.random(n),
                             "department": ["a", "b"] * (n // 2),
                             "embedding": pa.array(list(emb.astype(np.float16)), type=pa.list_(pa.float16()))}),
                   tmp_path / "scores.parquet")
    return ScoreTable(tmp_path), np.array(ids, dtype=object)


def test_groups_are_the_same_whatever_order_the_rows_come_in(tmp_path):
    from raykd.data.sampling import build_sampler

    table, ids = _table(tmp_path, 600, 48)
    hard = build_sampler("hard_negative", table, seed=3, batch_size=16)
    want = hard({"pair_id": ids}, 1)["pair_id"].tolist()
    assert sorted(want) == sorted(ids.tolist())
    rng = np.random.default_rng(1)
    for _ in range(5):
        perm = rng.permutation(len(ids))
        assert hard({"pair_id": ids[perm]}, 1)["pair_id"].tolist() == want
