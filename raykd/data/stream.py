"""R: Ray Data datasets over a prepared directory's splits, and the collation trials use on them.

A trial's worker reads its share with::

    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=b, collate_fn=PairCollator(pad_id, departments)):
        ...

The collation is a ``NumpyBatchCollateFn`` (Ray ≥ 2.47's collate interface), plain numpy/torch inside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

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


def department_index(manifest: dict) -> dict[str, int]:
    """Department name → integer id, in the manifest's order (most frequent first)."""
    return {d: i for i, d in enumerate(manifest["departments"])}


def pad_ids(seqs, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a batch of id sequences to its longest; returns (ids int64 [b, t], attention mask int64 [b, t])."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max()) if len(seqs) else 0
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : lengths[i]] = s
        mask[i, : lengths[i]] = 1
    return ids, mask


class PairCollator(NumpyBatchCollateFn):
    """Ray Data ``collate_fn``: numpy batch of prepared rows → padded torch tensors.

    Returns ``q_input_ids, q_attention_mask, a_input_ids, a_attention_mask`` (int64 [b, t], each
    padded to the batch's own longest sequence), ``department`` (int64 [b]; unknown names → -1) and
    ``pair_id`` (a list of str, when the batch has it).
    """

    def __init__(self, pad_id: int, departments: dict[str, int] | None = None):
        self.pad_id = pad_id
        self.departments = departments or {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        out = {}
        for side in ("q", "a"):
            if f"{side}_input_ids" in batch:
                ids, mask = pad_ids(batch[f"{side}_input_ids"], self.pad_id)
                out[f"{side}_input_ids"] = torch.from_numpy(ids)
                out[f"{side}_attention_mask"] = torch.from_numpy(mask)
        if "department" in batch:
            out["department"] = torch.tensor([self.departments.get(str(d), -1) for d in batch["department"]],
                                             dtype=torch.long)
        if "pair_id" in batch:
            out["pair_id"] = [str(p) for p in batch["pair_id"]]
        return out
