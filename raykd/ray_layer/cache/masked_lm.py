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

Built ahead of a study with ``python -m raykd.cache build`` (``cache_cli``) or by the study itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from raykd.data.shards import load_manifest, shard_paths
from raykd.ray_layer.stream import TOKEN_COLUMNS, PairCollator, read_parquet
from raykd.errors import RaykdError
from raykd.models.mapping import layer_map

CACHE_VERSION = 1
CACHE_DIR = "teacher_cache"
DTYPE = "float16"
ONLINE_METHODS_REASON = "needs the teacher on freshly corrupted inputs or its attention q/k/v"
CACHEABLE_METHODS = ("structural",)
UNCACHEABLE_SAMPLERS = ("random_masked",)


# ------------------------------------------------------------------------------------------ what to cache
def structural_layers(teacher_layers: int, student_layers: int, depth: int | None) -> list[int]:
    """Teacher hidden-state indices (1-based; 0 = embeddings) the structural method reads at ``depth``:
    the mapped layers g(1..depth) and the last layer."""
    return sorted({g for _, g in layer_map(teacher_layers, student_layers, depth)} | {teacher_layers})


def cache_use(method: str, sampler: str) -> str | None:
    """None when a trial with this method and sampler can read the cache, else the reason it runs
    the teacher online."""
    if method not in CACHEABLE_METHODS:
        return f"method {method} {ONLINE_METHODS_REASON}"
    if sampler in UNCACHEABLE_SAMPLERS:
        return f"sampler {sampler} changes the input tokens every epoch"
    return None


def teacher_config(teacher: str, teacher_load: dict | None = None):
    """The teacher's HF config (remote code only as the YAML allowed it, with its pinned revision)."""
    from transformers import AutoConfig

    load = teacher_load or {}
    return AutoConfig.from_pretrained(teacher, trust_remote_code=bool(load.get("trust_remote_code", False)),
                                      revision=load.get("revision"))


def teacher_fingerprint(teacher: str, revision: str | None = None) -> str:
    """sha256 over a local teacher directory's config and weight files (so retraining it in place
    invalidates the cache); for a hub id, the id and revision."""
    path = Path(os.path.expanduser(teacher))
    if not path.is_dir():
        return f"hub:{teacher}@{revision}"
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors") and "tokenizer" not in p.name)
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


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


def cache_dir_for(prepared: str, key: str) -> Path:
    """Where the cache with ``key`` lives: beside the data it was computed from."""
    return Path(prepared).absolute() / CACHE_DIR / key


def build_inputs(prepared: str, teacher: str, teacher_load: dict, layers: list[int]) -> tuple[dict, object]:
    """(the prepared data's manifest, the teacher's HF config) for a cache build; RaykdError when a
    requested layer is not one of the teacher's 1..L."""
    manifest = load_manifest(prepared)
    tconf = teacher_config(teacher, teacher_load)
    bad = [x for x in layers if not 1 <= x <= tconf.num_hidden_layers]
    if bad:
        raise RaykdError(f"teacher cache: layers {bad} are outside the teacher's 1..{tconf.num_hidden_layers}")
    return manifest, tconf


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


def refuse_above(size: float, max_bytes: float, advice: str) -> None:
    """RaykdError when a cache's estimated ``size`` (bytes) exceeds ``max_bytes``, with ``advice``."""
    if size > max_bytes:
        raise RaykdError(f"teacher cache: {size / 1e9:.2f} GB estimated exceeds the limit teacher.cache_max_gb = "
                         f"{max_bytes / 1e9:g} GB: raise the limit, {advice}, or set teacher.cache: none to run the "
                         "teacher online")


def teacher_pass(prepared: str, actor, kwargs: dict, batch_size: int):
    """The train split through the Ray Data actor class ``actor`` (constructed with ``kwargs`` and its
    torch ``threads``), one actor per GPU or CPU actors (``actor_plan``): a lazy ``Dataset``."""
    import ray

    from raykd.ray_layer.stream import split_datasets

    actors, resources, threads = actor_plan()
    # blocks enough for every actor to have work (a read gives one block per shard file by default)
    ds = split_datasets(prepared, splits=("train",), num_cpus=0.25, blocks=max(8 * actors, 32))["train"]
    return ds.map_batches(actor, fn_constructor_kwargs={**kwargs, "threads": threads}, batch_size=batch_size,
                          batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), **resources)


def actor_plan() -> tuple[int, dict, int]:
    """(actors, resources per actor, torch threads per actor; 0 = leave them) of a cache build on the
    running Ray: one actor per GPU, else CPU actors leaving one CPU for the reads."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    if gpus:
        return gpus, {"num_gpus": 1}, 0
    actors = max(1, int(cpus - 1) // 2)
    resources = {"num_cpus": max(1.0, (cpus - 1) / actors) if cpus > 1 else 0.5}
    return actors, resources, max(1, int((os.cpu_count() or 1) / actors))


def write_cache(ds, out: Path, train_rows: int, size: float, meta: dict, log=print) -> dict:
    """Write the teacher-output dataset ``ds`` to ``out/train/`` and ``out/manifest.json`` (``meta``
    plus the row count and every shard's rows and bytes) in a temporary directory renamed into place
    when complete; RaykdError when the rows written are not the train split's. Returns the manifest."""
    import pyarrow.parquet as pq

    from raykd.atomic import atomic_directory

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        # row groups of ~64 MB: a reader holds one row group at a time (a whole 8,192-row file is one
        # group by default: gigabytes at a real model's width)
        row_group = int(min(8192, max(16, 64e6 * train_rows / max(size, 1))))
        ds.write_parquet(str(tmp / "train"), compression="zstd", min_rows_per_file=8192, row_group_size=row_group)
        files = sorted((tmp / "train").glob("*.parquet"))
        rows = {p.name: pq.ParquetFile(p).metadata.num_rows for p in files}
        if sum(rows.values()) != train_rows:
            raise RaykdError(f"teacher cache: wrote {sum(rows.values())} rows, the train split has {train_rows}")
        meta = {**meta, "rows": sum(rows.values()),
                "files": {n: {"rows": r, "bytes": (tmp / "train" / n).stat().st_size} for n, r in rows.items()}}
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=1))
    total = sum(f["bytes"] for f in meta["files"].values())
    log(f"[cache] wrote {meta['rows']:,} rows in {len(files)} shard(s), {total / 1e9:.3f} GB on disk")
    return meta


# ------------------------------------------------------------------------------------------ reading
def load_cache_manifest(cache_dir: str | Path) -> dict:
    """The cache's manifest, after checking every listed shard exists with its recorded size
    (RaykdError otherwise: a cache that was tampered with is never read)."""
    cache_dir = Path(cache_dir)
    try:
        meta = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise RaykdError(f"teacher cache {cache_dir}: no readable manifest.json ({e})") from None
    for name, f in meta["files"].items():
        p = cache_dir / "train" / name
        if not p.exists() or p.stat().st_size != f["bytes"]:
            raise RaykdError(f"teacher cache {cache_dir}: shard {name} is missing or changed; delete the directory "
                             "to rebuild it")
    return meta


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
