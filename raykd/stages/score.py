"""The teacher scoring pass the samplers read (a training stage run once per teacher and data).

One teacher pass over the train split writes ``PREPARED/scores/<hash>/scores.parquet`` (the shards
are never rewritten), keyed by a content hash of (teacher, data manifest, scoring settings), with
one row per ``pair_id``: ``entropy`` (mean teacher predictive entropy over every content token of
the question, each masked once, nats), ``relevance`` (cosine of the question's Y_T to its
department's centroid; Y_T = content-token mean of the last layer),
``department`` and ``embedding`` (Y_T through a fixed random orthonormal map to 64 dims, centred
over the split and unit-normalised, fp16).

"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from raykd.atomic import atomic_directory
from raykd.data.collate import PairCollate
from raykd.data.shards import load_manifest, shard_paths, special_token_ids
from raykd.models.families import family_of

SCORES_VERSION = 3  # 2: entropy over every content token, embeddings over content tokens; 3: batches by length
EMBED_DIM = 64


# --------------------------------------------------------------------------------------------- scores


def scores_key(teacher_id: str, manifest: dict, mlm_prob: float = 0.15, seed: int = 0) -> str:
    """Content hash of a scoring pass's inputs (teacher identity, data, settings)."""
    payload = {"teacher": teacher_id, "data": manifest["key"], "mlm_prob": mlm_prob, "seed": seed,
               "dim": EMBED_DIM, "version": SCORES_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def scores_dir(prepared_dir: str | Path, teacher_id: str, manifest: dict, mlm_prob: float = 0.15, seed: int = 0) -> Path:
    """Where the scores of this teacher on this data live (``PREPARED/scores/<key>``; complete when
    ``scores.parquet`` exists)."""
    return Path(prepared_dir).absolute() / "scores" / scores_key(teacher_id, manifest, mlm_prob, seed)


def department_relevance(emb: np.ndarray, dept: np.ndarray) -> np.ndarray:
    """Per row, the cosine of its embedding (rows of ``emb``, unit length) with its department's centroid
    (float32 [n])."""
    relevance = np.zeros(len(dept), dtype=np.float32)
    for d in np.unique(dept):
        sel = dept == d
        centroid = emb[sel].mean(0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        relevance[sel] = emb[sel] @ centroid
    return relevance


def compute_scores(prepared_dir: str | Path, teacher, teacher_id: str, batch_size: int = 64, mlm_prob: float = 0.15,
                   seed: int = 0, log=print) -> Path:
    """Run the teacher once over the train split and write its scores; returns the scores directory.
    Reuses an existing directory with the same key; writes atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    manifest = load_manifest(prepared_dir)
    out = scores_dir(prepared_dir, teacher_id, manifest, mlm_prob, seed)
    key = out.name
    if (out / "scores.parquet").exists():
        log(f"[scores] reusing {out}")
        return out

    t = manifest["tokenizer"]
    special = special_token_ids(prepared_dir, manifest)
    collate = PairCollate(t["pad_token_id"])
    g = torch.Generator().manual_seed(seed)
    proj = torch.linalg.qr(torch.randn(teacher.config.hidden_size, EMBED_DIM, generator=g))[0] \
        if teacher.config.hidden_size >= EMBED_DIM else torch.eye(teacher.config.hidden_size)
    ent_all, emb_all = [], []
    teacher.eval()
    device = next(teacher.parameters()).device

    backbone = family_of(teacher).backbone(teacher)
    import pyarrow.compute as pc

    source = pa.concat_tables([pq.read_table(p, columns=["pair_id", "department", "q_input_ids"])
                               for p in shard_paths(prepared_dir, "train", manifest)])
    # batches of questions of similar length (1.7x faster than in source order: less padding); rows written in
    # source order
    by_length = np.argsort(pc.list_value_length(source.column("q_input_ids")).to_numpy(), kind="stable")
    ordered = source.take(by_length)
    cols_all = {c: ordered.column(c).to_numpy(zero_copy_only=False) for c in ordered.column_names}
    with torch.no_grad():
        for i in range(0, ordered.num_rows, batch_size):
            cols = {c: v[i: i + batch_size] for c, v in cols_all.items()}
            b = collate(cols)
            ids, mask = b["q_input_ids"], b["q_attention_mask"]
            content = mask.bool()
            for sid in special:
                content &= ids != sid
            ent_all.append(_masked_entropy(teacher, ids, mask, content, t["mask_token_id"], mlm_prob, g, device))
            h = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.cpu()
            m = content.unsqueeze(-1).float()
            emb_all.append(((h * m).sum(1) / m.sum(1).clamp_min(1.0)) @ proj)
            if (i // batch_size + 1) % 100 == 0:
                log(f"[scores] scored {i + len(cols['pair_id']):,} of {ordered.num_rows:,} train pairs")
    log(f"[scores] scored {ordered.num_rows:,} train pairs")
    back = np.argsort(by_length)  # sorted position of each source row
    ids_all = source.column("pair_id").to_pylist()
    dept_all = source.column("department").to_pylist()
    entropy = np.concatenate(ent_all)[back]
    emb = torch.cat(emb_all)[torch.from_numpy(back)]
    emb = torch.nn.functional.normalize(emb - emb.mean(0, keepdim=True), dim=-1).numpy()  # centred: no common direction
    relevance = department_relevance(emb, np.array(dept_all, dtype=object))
    table = pa.table({"pair_id": ids_all, "department": dept_all, "entropy": entropy.astype(np.float32),
                      "relevance": relevance,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()),
                                                                     emb.shape[1])})
    with atomic_directory(out) as tmp:
        pq.write_table(table, tmp / "scores.parquet", compression="zstd")
        (tmp / "scores.json").write_text(json.dumps({"key": key, "teacher": teacher_id, "data_key": manifest["key"],
                                                     "rows": table.num_rows, "mlm_prob": mlm_prob, "seed": seed}))
    log(f"[scores] wrote {out}")
    return out


def _masked_entropy(teacher, ids, mask, content, mask_id: int, mlm_prob: float, g, device) -> np.ndarray:
    """Per sequence: the teacher's mean predictive entropy (nats) over *every* content token, each
    predicted once with itself masked. Content tokens are split at random into ⌈1/mlm_prob⌉ groups and
    one teacher pass masks one group, so each pass masks ~``mlm_prob`` of the tokens (as in
    pre-training) and no sequence is left unscored (a single 15 % draw misses every token of 44 %
    of 5-token questions)."""
    import math

    import torch

    groups = max(1, math.ceil(1.0 / mlm_prob))
    assign = (torch.rand(ids.shape, generator=g) * groups).long()
    total = torch.zeros(ids.shape[0])
    for k in range(groups):
        chosen = content & (assign == k)
        if not chosen.any():
            continue
        logits = teacher(input_ids=ids.masked_fill(chosen, mask_id).to(device), attention_mask=mask.to(device)).logits
        logp = torch.log_softmax(logits.float(), -1)
        ent = -(logp.exp() * logp).sum(-1).cpu()
        total += (ent * chosen).sum(1)
    return (total / content.sum(1).clamp_min(1)).numpy()
