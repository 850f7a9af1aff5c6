"""R: the teacher-output cache — one teacher pass over the train split, read by every trial instead
of running the teacher.

``build_cache`` runs the teacher over the prepared train shards with Ray Data (``map_batches`` with
actors; a GPU each when the cluster has them) and writes Parquet shards to
``PREPARED/teacher_cache/<key>/`` that hold the token columns of every pair plus, for each cached
teacher layer L, ``q_h{L}`` and ``a_h{L}``: the layer's hidden states of the question / answer's
*real* tokens as fp16 bytes (row-major [length, hidden]; padding is never stored). The key is a
content hash of (teacher weights, data manifest, max length, layers, dtype, format version), so a
changed input gets a new cache and an unchanged one is reused by every trial and experiment. The
directory appears by one rename when complete (``manifest.json`` last): never half-written.

What is cached: hidden states only, of the layers the study's objectives map to — for the
``structural`` method the teacher layers g(1..k) of every searched depth k plus the last layer
(Y_T and the fusion input). Objectives that need the teacher on *corrupted* inputs (the MLM-logit
baselines: a fresh random masking every step) or attention q/k/v (TinyBERT, MiniLM), and the
``random_masked`` sampler (it changes the input tokens), run the teacher online: a static cache
would change their objective. ``cache_use`` says which and why.

A trial reads the cache shards in place of the data shards; ``CachedPairCollator`` pads the stored
states into ``[b, t, hidden]`` tensors and ``cached_targets`` lays them out exactly as
``DistillMethod.teacher_targets`` does (questions then answers, padded to one width).

Built ahead of a study with ``python -m raykd cache build`` (``cache.cli``) or by the study itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from raykd.data.shards import shard_paths
from raykd.ray_layer.stream import TOKEN_COLUMNS, PairCollator, read_parquet
from raykd.errors import RaykdError
from raykd.ray_layer.cache.builder import (build_inputs, cache_dir_for, load_cache_manifest, refuse_above,
                                          structural_layers, teacher_fingerprint, teacher_pass, write_cache)

CACHE_VERSION = 1
DTYPE = "float16"
ONLINE_METHODS_REASON = "needs the teacher on freshly corrupted inputs or its attention q/k/v"
CACHEABLE_METHODS = ("structural",)
UNCACHEABLE_SAMPLERS = ("random_masked",)


# ------------------------------------------------------------------------------------------ what to cache
def cache_use(method: str, sampler: str) -> str | None:
    """None when a trial with this method and sampler can read the cache, else the reason it runs
    the teacher online."""
    if method not in CACHEABLE_METHODS:
        return f"method {method} {ONLINE_METHODS_REASON}"
    if sampler in UNCACHEABLE_SAMPLERS:
        return f"sampler {sampler} changes the input tokens every epoch"
    return None


def cache_key(fingerprint: str, manifest: dict, layers: list[int]) -> str:
    """Content hash of everything a cache depends on."""
    payload = {"teacher": fingerprint, "data": manifest["key"], "max_length": manifest["max_length"],
               "layers": sorted(layers), "dtype": DTYPE, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def estimate_bytes(prepared: str, manifest: dict, layers: list[int], hidden: int) -> int:
    """Bytes the cache's hidden states will take (fp16; real tokens of every train question and
    answer × hidden × layers; Parquet compression of fp16 noise saves little)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tokens = 0
    for path in shard_paths(prepared, "train", manifest):
        t = pq.read_table(path, columns=["q_input_ids", "a_input_ids"])
        for col in t.column_names:
            tokens += int(pc.sum(pc.list_value_length(t.column(col))).as_py() or 0)
    return tokens * hidden * 2 * len(layers)


# ------------------------------------------------------------------------------------------ writing
class TeacherStates:
    """Ray Data actor: a batch of prepared rows → the same rows plus ``{q,a}_h{L}`` fp16 bytes
    of the teacher's hidden states of their real tokens. Loads the teacher once per actor."""

    def __init__(self, teacher: str, teacher_load: dict, layers: list[int], pad_id: int, threads: int = 0):
        import torch

        from raykd.models.teacher import load_teacher
        from raykd.train.precision import precision_policy

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision_policy(self.device)  # fp16 autocast on CUDA, fp32 on CPU
        self.teacher = load_teacher(teacher, **teacher_load).to(self.device).eval()
        self.layers, self.pad_id = layers, pad_id
        self.collate = PairCollator(pad_id)

    def __call__(self, batch):
        """``batch``: a pyarrow Table of prepared rows → the Table with the binary state columns
        appended (pyarrow in and out, so the token columns keep their plain list types on disk)."""
        import pyarrow as pa
        import torch

        ids = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in ("q_input_ids", "a_input_ids")}
        padded = self.collate(ids)
        for side in ("q", "a"):
            x = padded[f"{side}_input_ids"].to(self.device)
            mask = padded[f"{side}_attention_mask"].to(self.device)
            with torch.no_grad(), self.precision.autocast():
                hs = self.teacher(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
            lengths = mask.sum(1).tolist()
            for layer in self.layers:
                h = hs[layer].to(torch.float16).cpu().numpy()
                col = pa.array([h[i, :n].tobytes() for i, n in enumerate(lengths)], type=pa.binary())
                batch = batch.append_column(f"{side}_h{layer}", col)
        return batch


def build_cache(prepared: str, teacher: str, layers: list[int], teacher_load: dict | None = None,
                max_bytes: float = 20e9, batch_size: int = 64, log=print) -> Path:
    """Write (or reuse) the teacher cache of ``prepared``'s train split for ``layers``; returns its
    directory. Prints the estimated size first and refuses (RaykdError) above ``max_bytes``. Needs
    a running Ray (``ray.init``); uses one actor per GPU, or CPU actors leaving one CPU for reads."""
    teacher_load = teacher_load or {}
    manifest, tconf = build_inputs(prepared, teacher, teacher_load, layers)
    key = cache_key(teacher_fingerprint(teacher, teacher_load.get("revision")), manifest, layers)
    out = cache_dir_for(prepared, key)
    if (out / "manifest.json").exists():
        load_cache_manifest(out)
        log(f"[cache] reusing {out}")
        return out
    size = estimate_bytes(prepared, manifest, layers, tconf.hidden_size)
    train_rows = manifest["splits"]["train"]["rows"]
    log(f"[cache] teacher layers {layers} of {tconf.num_hidden_layers} (hidden {tconf.hidden_size}) over "
        f"{train_rows:,} train pairs: about {size / 1e9:.2f} GB (fp16) → {out}")
    refuse_above(size, max_bytes, "cache fewer layers (search fewer depths)")
    ds = teacher_pass(prepared, TeacherStates, {"teacher": teacher, "teacher_load": teacher_load, "layers": sorted(layers),
                                                "pad_id": manifest["tokenizer"]["pad_token_id"]}, batch_size)
    write_cache(ds, out, train_rows, size, {"key": key, "version": CACHE_VERSION, "data_key": manifest["key"],
                                            "teacher": teacher, "layers": sorted(layers), "hidden": tconf.hidden_size,
                                            "dtype": DTYPE}, log)
    return out


# ------------------------------------------------------------------------------------------ reading
def cached_dataset(cache_dir: str | Path, layers: list[int], num_cpus: float | None = None):
    """A ``ray.data.Dataset`` of the cache's train rows: the token columns plus ``{q,a}_h{L}`` for
    ``layers`` only (other cached layers stay on disk)."""
    meta = load_cache_manifest(cache_dir)
    missing = sorted(set(layers) - set(meta["layers"]))
    if missing:
        raise RaykdError(f"teacher cache {cache_dir}: layers {missing} are not cached (it has {meta['layers']})")
    columns = list(TOKEN_COLUMNS) + [f"{s}_h{x}" for x in sorted(layers) for s in "qa"]
    paths = [str(Path(cache_dir) / "train" / n) for n in sorted(meta["files"])]
    return read_parquet(paths, num_cpus).select_columns(columns)


class CachedPairCollator(PairCollator):
    """``PairCollator`` for cache rows: adds ``teacher_hidden`` = {layer: (q [b, t_q, hidden],
    a [b, t_a, hidden])} float32 tensors, zero at padding."""

    def __init__(self, pad_id: int, departments: dict[str, int] | None, layers: list[int], hidden: int):
        super().__init__(pad_id, departments)
        self.layers, self.hidden = sorted(layers), hidden

    def __call__(self, batch: dict) -> dict:
        import torch

        out = super().__call__({k: v for k, v in batch.items() if not k.startswith(("q_h", "a_h"))})
        hidden = {}
        for layer in self.layers:
            sides = []
            for side in ("q", "a"):
                width = out[f"{side}_input_ids"].shape[1]
                rows = batch[f"{side}_h{layer}"]
                arr = np.zeros((len(rows), width, self.hidden), dtype=np.float32)
                for i, b in enumerate(rows):
                    h = np.frombuffer(b, dtype=np.float16).reshape(-1, self.hidden)
                    arr[i, : h.shape[0]] = h
                sides.append(torch.from_numpy(arr))
            hidden[layer] = tuple(sides)
        out["teacher_hidden"] = hidden
        return out


def cached_targets(teacher_hidden: dict, device) -> dict:
    """The ``targets`` dict a method expects (``{"hidden": {layer: [2b, t, hidden]}}``, questions then
    answers, padded to one width) from a ``CachedPairCollator`` batch's ``teacher_hidden``."""
    import torch
    import torch.nn.functional as F

    hidden = {}
    for layer, (q, a) in teacher_hidden.items():
        width = max(q.shape[1], a.shape[1])
        hidden[layer] = torch.cat([F.pad(q, (0, 0, 0, width - q.shape[1])),
                                   F.pad(a, (0, 0, 0, width - a.shape[1]))]).to(device, non_blocking=True)
    return {"hidden": hidden}


def study_layers(cfg, teacher_layers: int) -> list[int]:
    """Every teacher layer the study ``cfg`` can read through the cache: the union over the base
    depth and each searched depth of ``structural_layers``."""
    from raykd.config import resolve_key

    depths = {cfg.method.depth}
    for name, spec in cfg.space.items():
        if resolve_key(name) == "method.depth":
            kind, values = next(iter(spec.items()))
            depths |= set(values) if kind in ("choice", "grid") else set(range(int(values[0]), int(values[-1]) + 1))
    layers: set[int] = set()
    for d in depths:
        layers |= set(structural_layers(teacher_layers, cfg.student.layers, d))
    return sorted(layers)
