"""R: what the two teacher-output caches share — one builder with a part per family (``masked_lm``: hidden
states of the layers the objectives map to; ``causal_lm``: top-k logits with a tail bucket and / or hidden
states): the teacher's identity (``teacher_fingerprint``: its weights, so a retrained teacher gets a new
cache), where a cache lives (``PREPARED/teacher_cache/<key>/``), one teacher pass over the train split with Ray
Data actors (a GPU each where there are GPUs), the size check, the atomic write (the directory appears by one
rename when complete, ``manifest.json`` last) and the integrity check on reading."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from raykd.data.shards import load_manifest
from raykd.errors import RaykdError
from raykd.models.mapping import layer_map

CACHE_DIR = "teacher_cache"


def structural_layers(teacher_layers: int, student_layers: int, depth: int | None) -> list[int]:
    """Teacher hidden-state indices (1-based; 0 = embeddings) the structural method reads at ``depth``:
    the mapped layers g(1..depth) and the last layer."""
    return sorted({g for _, g in layer_map(teacher_layers, student_layers, depth)} | {teacher_layers})


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
