"""R: Ray Data datasets over a prepared directory's splits, and the collation trials use on them.

A trial's worker reads its share with::

    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=b, collate_fn=PairCollator(pad_id, departments)):
        ...

The collation is a ``NumpyBatchCollateFn`` (Ray ≥ 2.47's collate interface), plain numpy/torch inside.
"""

from __future__ import annotations

from pathlib import Path

from ray.data.collate_fn import NumpyBatchCollateFn

from raykd.data.collate import CausalCollate, PairCollate, department_index, pad_ids  # noqa: F401 (re-exported)
from raykd.data.shards import SPLITS, load_manifest, shard_paths

TOKEN_COLUMNS = ("pair_id", "department", "q_input_ids", "a_input_ids")


def split_datasets(prepared_dir: str | Path, splits: tuple[str, ...] = SPLITS,
                   columns: tuple[str, ...] = TOKEN_COLUMNS, num_cpus: float | None = None,
                   blocks: int | None = None) -> dict:
    """Return ``{split: ray.data.Dataset}`` reading the split's Parquet shards (verified against the
    manifest first; a tampered or partial directory raises RaykdError). Only ``columns`` are read:
    the raw text columns stay on disk unless asked for. ``num_cpus`` is what each read task reserves
    (a fraction lets data flow while training workers hold whole CPUs); ``blocks`` see ``read_parquet``."""
    manifest = load_manifest(prepared_dir)
    return {s: read_parquet(shard_paths(prepared_dir, s, manifest), num_cpus, blocks).select_columns(list(columns))
            for s in splits}


def read_parquet(paths: list[str], num_cpus: float | None = None, blocks: int | None = None):
    """``ray.data.read_parquet(paths)`` as one read task per file, or ``blocks`` when that is more,
    each task reserving ``num_cpus``.

    One task per file for training input: by default Ray splits a small read into ~200 blocks
    (``SplitBlocks``), and every block costs CPU as it passes (measured on 2 cores, per 16-row batch
    through ``iter_torch_batches``: teacher-cache rows ~20 ms of CPU from 172 blocks, 3–4 ms from one
    block per file, 1.5 ms to collate the same rows from memory; token rows 12 ms from 200 blocks,
    1.5 ms from one). Blocks stay bounded by Ray Data's ``target_max_block_size`` (a read task's
    output is split at that size). Stages that need work for several actors (the cache build) ask
    for more ``blocks``.

    ``num_cpus``: Ray 2.60's datasource-v2 Parquet read adds a ListFiles task that always reserves a
    whole CPU: with every CPU but a fraction held by training workers it never runs (the read
    hangs). The v1 read honours ``num_cpus`` for every task, so it is used whenever it is given."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    v2 = ctx.use_datasource_v2
    ctx.use_datasource_v2 = v2 if num_cpus is None else False
    try:
        return ray.data.read_parquet(paths, num_cpus=num_cpus, override_num_blocks=max(blocks or 1, len(paths)))
    finally:
        ctx.use_datasource_v2 = v2


class PairCollator(PairCollate, NumpyBatchCollateFn):
    """Ray Data ``collate_fn`` (a ``NumpyBatchCollateFn``, so Ray hands it numpy batches): see
    ``PairCollate`` for what it returns."""


class CausalCollator(CausalCollate, NumpyBatchCollateFn):
    """Ray Data ``collate_fn`` of causal trials: see ``CausalCollate`` for what it returns."""
