"""Single-process training and evaluation on a prepared directory, for the integration tests (no Ray)."""

from __future__ import annotations

import pyarrow.parquet as pq
import torch

from raykd.metrics import representation as metrics
from raykd.data.shards import load_manifest, shard_paths
from raykd.data.collate import PairCollate as PairCollator, department_index
from raykd.distill.methods import TokenIds, make_inputs
from raykd.train.engine import Engine


def load_batches(prepared, split: str, batch_size: int, limit: int | None = None) -> list[dict]:
    """The split as padded torch batches (in shard order)."""
    m = load_manifest(prepared)
    t = pq.read_table(shard_paths(prepared, split, m), columns=["pair_id", "department", "q_input_ids", "a_input_ids"])
    if limit:
        t = t.slice(0, limit)
    collate = PairCollator(m["tokenizer"]["pad_token_id"], department_index(m))
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    return [collate({c: v[i: i + batch_size] for c, v in cols.items()}) for i in range(0, t.num_rows, batch_size)]


def train(method, teacher, batches: list[dict], tokens: TokenIds, steps: int, lr: float = 5e-4, seed: int = 0) -> list[float]:
    """Train ``method`` for ``steps`` AdamW steps cycling over ``batches``; returns its objective per step
    (the weighted total; with gradient-aware weights, the terms summed at their base weights)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    engine = Engine(method, lr=lr)
    vocab = teacher.config.vocab_size
    teacher.eval()
    method.train()
    history = []
    for step in range(steps):
        method.set_progress(step / steps)
        inputs = make_inputs(batches[step % len(batches)], tokens, g, corrupt=method.uses_mlm, vocab_size=vocab)
        out = method(inputs, method.teacher_targets(teacher, inputs))
        engine.backward(out["loss"])
        engine.step()
        # the objective at constant weights: gradient-aware weights move during training, so their
        # weighted total is not one fixed function of the parameters — each term at its base weight is
        base = getattr(method.weighting, "base", None)
        history.append(float(out["loss"].detach()) if base is None else
                       sum(float(base.get(k, 1.0)) * float(v.detach()) for k, v in out.items() if k != "loss"))
    method.eval()
    return history


def evaluate(student, teacher, prepared, batch_size: int = 64) -> dict:
    """raykd.metrics.representation.evaluate on validation (first half fits compactness, second half is scored)."""
    val = load_batches(prepared, "validation", batch_size)
    half = max(1, len(val) // 2)
    return metrics.evaluate(student, teacher, val[:half], val[half:])
