"""Sampling strategies (registry ``samplers``) and the teacher scoring pass they read.

One teacher pass over the train split writes ``PREPARED/scores/<hash>/scores.parquet`` (the shards
are never rewritten), keyed by a content hash of (teacher, data manifest, scoring settings), with
one row per ``pair_id``: ``entropy`` (mean teacher predictive entropy over every content token of
the question, each masked once, nats), ``relevance`` (cosine of the question's Y_T to its
department's centroid; Y_T = content-token mean of the last layer),
``department`` and ``embedding`` (Y_T through a fixed random orthonormal map to 64 dims, centred
over the split and unit-normalised, fp16).

A sampler is a transform of one window of rows (a dict of numpy arrays with ``pair_id``) and the
epoch number, so it runs on a stream with only the score table in memory: a trial applies it on
its worker to windows of its (globally shuffled) shard, epoch by epoch. Every random choice is a
hash of (seed, epoch, pair_id): deterministic under the trial seed, different each epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from raykd.atomic import atomic_directory
from raykd.errors import RaykdError
from raykd.registry import SAMPLERS

SCORES_VERSION = 2  # 2: entropy over every content token, embeddings over content tokens
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


def compute_scores(prepared_dir: str | Path, teacher, teacher_id: str, batch_size: int = 64, mlm_prob: float = 0.15,
                   seed: int = 0, log=print) -> Path:
    """Run the teacher once over the train split and write its scores; returns the scores directory.
    Reuses an existing directory with the same key; writes atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raykd.data.shards import load_manifest, shard_paths
    from raykd.data.collate import PairCollate

    manifest = load_manifest(prepared_dir)
    out = scores_dir(prepared_dir, teacher_id, manifest, mlm_prob, seed)
    key = out.name
    if (out / "scores.parquet").exists():
        log(f"[scores] reusing {out}")
        return out
    from raykd.data.shards import special_token_ids

    t = manifest["tokenizer"]
    special = special_token_ids(prepared_dir, manifest)
    collate = PairCollate(t["pad_token_id"])
    g = torch.Generator().manual_seed(seed)
    proj = torch.linalg.qr(torch.randn(teacher.config.hidden_size, EMBED_DIM, generator=g))[0] \
        if teacher.config.hidden_size >= EMBED_DIM else torch.eye(teacher.config.hidden_size)
    ids_all, dept_all, ent_all, emb_all = [], [], [], []
    teacher.eval()
    device = next(teacher.parameters()).device
    from raykd.models.families import family_of

    backbone = family_of(teacher).backbone(teacher)
    with torch.no_grad():
        for path in shard_paths(prepared_dir, "train", manifest):
            for rb in pq.ParquetFile(path).iter_batches(batch_size, columns=["pair_id", "department", "q_input_ids"]):
                cols = {c: rb.column(c).to_numpy(zero_copy_only=False) for c in rb.schema.names}
                b = collate(cols)
                ids, mask = b["q_input_ids"], b["q_attention_mask"]
                content = mask.bool()
                for sid in special:
                    content &= ids != sid
                ent_all.append(_masked_entropy(teacher, ids, mask, content, t["mask_token_id"], mlm_prob, g, device))
                h = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.cpu()
                m = content.unsqueeze(-1).float()
                emb_all.append(((h * m).sum(1) / m.sum(1).clamp_min(1.0)) @ proj)
                ids_all.extend(cols["pair_id"].tolist())
                dept_all.extend(cols["department"].tolist())
            log(f"[scores] scored {len(ids_all):,} train pairs")
    emb = torch.cat(emb_all)
    emb = torch.nn.functional.normalize(emb - emb.mean(0, keepdim=True), dim=-1).numpy()  # centred: no common direction
    dept = np.array(dept_all, dtype=object)
    relevance = np.zeros(len(dept), dtype=np.float32)
    for d in np.unique(dept):
        sel = dept == d
        centroid = emb[sel].mean(0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        relevance[sel] = emb[sel] @ centroid
    table = pa.table({"pair_id": ids_all, "department": dept_all, "entropy": np.concatenate(ent_all).astype(np.float32),
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


class ScoreTable:
    """The scores of a train split in memory, looked up by ``pair_id``."""

    def __init__(self, scores_dir: str | Path):
        import pyarrow.parquet as pq

        path = Path(scores_dir) / "scores.parquet"
        if not path.exists():
            raise RaykdError(f"{scores_dir}: no scores.parquet (run the scoring pass first)")
        t = pq.read_table(path)
        self.index = {p: i for i, p in enumerate(t.column("pair_id").to_pylist())}
        self.entropy = t.column("entropy").to_numpy()
        self.relevance = t.column("relevance").to_numpy()
        self.department = np.array(t.column("department").to_pylist(), dtype=object)
        emb = t.column("embedding").combine_chunks()
        self.embedding = emb.values.to_numpy().reshape(len(emb), -1).astype(np.float32)
        depts, counts = np.unique(self.department, return_counts=True)
        self.department_counts = dict(zip(depts.tolist(), counts.tolist()))

    def rows(self, pair_ids) -> np.ndarray:
        """Score-row indices of these pair ids (RaykdError for an id the scores do not know)."""
        try:
            return np.fromiter((self.index[p] for p in pair_ids), dtype=np.int64, count=len(pair_ids))
        except KeyError as e:
            raise RaykdError(f"scores: pair {e.args[0]} is not in the score table (scores of other data?)") from None


# --------------------------------------------------------------------------------------------- samplers
def hash_uniform(seed: int, pair_ids, salt: str = "") -> np.ndarray:
    """Deterministic uniforms in [0, 1) from (seed, salt, pair_id)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}|{salt}|{p}".encode(), digest_size=8).digest(), "little")
                        / 2.0 ** 64 for p in pair_ids), dtype=np.float64, count=len(pair_ids))


def resample(batch: dict, weights: np.ndarray, seed: int, epoch: int = 0) -> dict:
    """Rows repeated by their weight on a stream: row i appears ⌊w_i⌋ times plus once more with
    probability frac(w_i) (hash-seeded, a new draw each ``epoch``); E[count] = w_i. Weights should
    have mean 1 over the data. The copies of a row are spread over the batch (a hash-seeded
    permutation), never consecutive, so a duplicate is rarely its own in-batch negative."""
    u = hash_uniform(seed, batch["pair_id"], f"resample|{epoch}")
    counts = np.floor(weights).astype(np.int64) + (u < weights - np.floor(weights))
    idx = np.repeat(np.arange(len(counts)), counts)
    copy = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=np.int64)
    keys = hash_uniform(seed, [f"{batch['pair_id'][i]}#{k}" for i, k in zip(idx, copy)], f"spread|{epoch}")
    idx = idx[np.argsort(keys, kind="stable")]
    return {k: v[idx] for k, v in batch.items()}


class Sampler:
    """Base: a batch → batch transform (``__call__``), deterministic under ``seed``."""

    def __init__(self, scores: ScoreTable | None = None, seed: int = 0, **params):
        self.scores, self.seed, self.params = scores, seed, params

    def __call__(self, batch: dict, epoch: int = 0) -> dict:
        """The transformed batch; random choices are hashes of (seed, epoch, pair_id)."""
        raise NotImplementedError

    def _need_scores(self) -> ScoreTable:
        if self.scores is None:
            raise RaykdError(f"sampler {self.registered_name}: needs the teacher scoring pass (scores/)")
        return self.scores


@SAMPLERS.register("uniform")
class Uniform(Sampler):
    """Every example once, as stored."""

    def __call__(self, batch, epoch=0):
        return batch


@SAMPLERS.register("entropy")
class EntropyWeighted(Sampler):
    """Examples resampled ∝ (teacher predictive entropy)^γ / mean — the teacher's uncertain, more
    informative examples are seen more often (``gamma``, default 1)."""

    def __call__(self, batch, epoch=0):
        s = self._need_scores()
        e = np.maximum(s.entropy, 1e-6) ** self.params.get("gamma", 1.0)
        w = e[s.rows(batch["pair_id"])] / e.mean()
        return resample(batch, w, self.seed, epoch)


@SAMPLERS.register("domain_aware")
class DomainAware(Sampler):
    """Examples resampled ∝ domain relevance × department balance: relevance = cosine of the teacher
    representation to its department's centroid (clipped at ``min_relevance``), balance = (N / (D ·
    n_dept))^γ (``gamma``, default 0.5), normalised to mean 1 over the data — under-represented
    departments and typical in-domain examples gain."""

    def __call__(self, batch, epoch=0):
        s = self._need_scores()
        gamma = self.params.get("gamma", 0.5)
        n, dcount = len(s.entropy), len(s.department_counts)
        balance = {d: (n / (dcount * c)) ** gamma for d, c in s.department_counts.items()}
        rel_all = np.maximum(s.relevance, self.params.get("min_relevance", 0.05))
        w_all = rel_all * np.fromiter((balance[d] for d in s.department), dtype=np.float64, count=n)
        rows = s.rows(batch["pair_id"])
        return resample(batch, w_all[rows] / w_all.mean(), self.seed, epoch)


@SAMPLERS.register("random_masked")
class RandomMasked(Sampler):
    """Every example once with random token-masking noise: each real, non-special token of the question
    and answer becomes ``mask_id`` with probability ``prob`` (default 0.1), hash-seeded per pair."""

    def __call__(self, batch, epoch=0):
        prob, mask_id = self.params.get("prob", 0.1), self.params.get("mask_id", 4)
        special = set(self.params.get("special_ids", (0, 1, 2, 3, 4)))
        out = dict(batch)
        for col in ("q_input_ids", "a_input_ids"):
            if col not in batch:
                continue
            noisy = []
            for pid, ids in zip(batch["pair_id"], batch[col]):
                ids = np.array(ids, copy=True)
                rng = np.random.default_rng(int(hash_uniform(self.seed, [pid], f"{col}|{epoch}")[0] * 2 ** 63))
                hit = (rng.random(len(ids)) < prob) & ~np.isin(ids, list(special))
                ids[hit] = mask_id
                noisy.append(ids)
            arr = np.empty(len(noisy), dtype=object)
            arr[:] = noisy
            out[col] = arr
        return out


@SAMPLERS.register("hard_negative")
class HardNegative(Sampler):
    """Examples grouped so that each training batch of ``batch_size`` holds near neighbours in teacher
    space: in-batch negatives become hard negatives. Greedy: start from the first unplaced example
    (hash-shuffled order, new each epoch), add its nearest unplaced neighbours (equal similarities
    broken by the same hash) until the group is full — the groups do not depend on the rows' order."""

    def __call__(self, batch, epoch=0):
        s = self._need_scores()
        size = int(self.params.get("batch_size", 16))
        n = len(batch["pair_id"])
        emb = s.embedding[s.rows(batch["pair_id"])]
        key = hash_uniform(self.seed, batch["pair_id"], f"order|{epoch}")
        order = np.argsort(key, kind="stable")
        placed = np.zeros(n, dtype=bool)
        out = []
        sims = emb @ emb.T
        for start in order:
            if placed[start]:
                continue
            placed[start] = True
            group = [start]
            cand = np.where(~placed)[0]
            if len(cand):
                near = cand[np.lexsort((key[cand], -sims[start, cand]))[: size - 1]]  # ties: by hash, not position
                placed[near] = True
                group.extend(near.tolist())
            out.extend(group)
        idx = np.array(out, dtype=np.int64)
        return {k: v[idx] for k, v in batch.items()}


def build_sampler(name: str, scores: ScoreTable | None = None, seed: int = 0, **params) -> Sampler:
    """The registered sampler ``name``."""
    return SAMPLERS.get(name)(scores, seed, **params)
