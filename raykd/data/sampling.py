"""Sampling strategies (registry ``samplers``) over the teacher's scores.

The scores (``PREPARED/scores/<hash>/scores.parquet``, one row per ``pair_id``: ``entropy``, ``relevance``,
``department``, ``embedding``) come from one teacher pass, ``raykd.stages.score``; the shards are never
rewritten.

A sampler is a transform of one window of rows (a dict of numpy arrays with ``pair_id``) and the
epoch number, so it runs on a stream with only the score table in memory: a trial applies it on
its worker to windows of its (globally shuffled) shard, epoch by epoch. Every random choice is a
hash of (seed, epoch, pair_id): deterministic under the trial seed, different each epoch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from raykd.errors import RaykdError
from raykd.registry import SAMPLERS


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
        key = hash_uniform(self.seed, batch["pair_id"], f"order|{epoch}")
        order = np.argsort(key, kind="stable")  # positions below are in this (hashed) order, not the rows'
        emb = s.embedding[s.rows(batch["pair_id"][order])]
        # one product over rows in the hashed order: BLAS rounds a dot product by where its rows sit in the
        # matrix, so computed in the rows' order two equally near candidates could swap with that order
        sims = emb @ emb.T
        placed = np.zeros(n, dtype=bool)
        out = []
        for start in range(n):
            if placed[start]:
                continue
            placed[start] = True
            group = [start]
            cand = np.where(~placed)[0]
            if len(cand):
                near = cand[np.argsort(-sims[start, cand], kind="stable")[: size - 1]]  # ties: by hash order
                placed[near] = True
                group.extend(near.tolist())
            out.extend(group)
        idx = order[np.array(out, dtype=np.int64)]
        return {k: v[idx] for k, v in batch.items()}


def build_sampler(name: str, scores: ScoreTable | None = None, seed: int = 0, **params) -> Sampler:
    """The registered sampler ``name``."""
    return SAMPLERS.get(name)(scores, seed, **params)
