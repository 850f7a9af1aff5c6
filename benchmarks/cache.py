"""``bench.py cache``: online teacher vs teacher cache vs no teacher (24 → 6 layers), alternating rounds."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, save_teacher, start_ray, table_rows, workload

HELP = "online teacher vs teacher cache vs no teacher, 24→6 layers"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench cache --help``)."""
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pairs", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--quick", action="store_true")


def bench_cache(args) -> dict:
    """Step time of the structural objective at 24→6 layers (depth 6) with the teacher run online,
    with its states read from the teacher cache (decode + pad included), and with the teacher
    removed entirely (targets free: the bound). Alternating, median of ``--pairs`` rounds."""
    import torch

    from raykd.ray_layer.cache.builder import structural_layers
    from raykd.ray_layer.cache.masked_lm import CachedPairCollator, build_cache, cached_targets

    from raykd.train.engine import Engine
    from raykd.data.shards import shard_paths
    from raykd.ray_layer.stream import PairCollator, department_index
    from raykd.distill.methods import TokenIds, build_method, make_inputs
    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher

    torch.set_num_threads(os.cpu_count() or 1)
    steps = 8 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        prepared, manifest = workload(Path(tmp), 1500 if args.quick else 3000, args.max_length)
        teacher_dir = save_teacher(Path(tmp), manifest, 24, args.hidden, args.heads, args.max_length)
        layers = structural_layers(24, 6, 6)
        ray, _ = start_ray()
        t = time.perf_counter()
        cache_dir = build_cache(prepared, teacher_dir, layers, log=lambda m: print(m, flush=True))
        build_s = time.perf_counter() - t
        ray.shutdown()
        teacher = load_teacher(teacher_dir).eval()
        tokens = TokenIds.from_manifest(manifest)
        depts = department_index(manifest)
        data_rows = table_rows(shard_paths(prepared, "train", manifest))
        cache_rows = table_rows(sorted(str(p) for p in (Path(cache_dir) / "train").glob("*.parquet")))
        b = args.batch_size
        n_batches = len(cache_rows["pair_id"]) // b
        plain, cached_collate = PairCollator(tokens.pad, depts), CachedPairCollator(tokens.pad, depts, layers, args.hidden)
        torch.manual_seed(0)
        method = build_method("structural", build_student(teacher, 6, aggregation=True), teacher.config, depth=6,
                              projection_dim=64, n_departments=len(depts))
        method.train()
        method.set_progress(0.5)  # past the fusion's annealing: every mode runs the same student graph
        engine = Engine(method, lr=1e-4, clip=None)
        free = {}  # the bound: targets precomputed, free at step time

        def batch_of(rows, collate, i):
            return collate({k: v[i * b:(i + 1) * b] for k, v in rows.items()})

        def step(mode: str, i: int) -> None:
            if mode == "cache":
                batch = batch_of(cache_rows, cached_collate, i)
                batch.pop("pair_id")
                targets = cached_targets(batch.pop("teacher_hidden"), "cpu")
                inputs = make_inputs(batch, tokens)
            else:
                batch = batch_of(data_rows, plain, i)
                batch.pop("pair_id")
                inputs = make_inputs(batch, tokens)
                if mode == "online":
                    targets = method.teacher_targets(teacher, inputs)
                else:
                    if i not in free:
                        free[i] = method.teacher_targets(teacher, inputs)
                    targets = free[i]
            out = method(inputs, targets)
            engine.backward(out["loss"])
            engine.step()

        for i in range(min(steps, n_batches)):  # targets for the bound, computed outside its timing
            batch = batch_of(data_rows, plain, i)
            batch.pop("pair_id")
            free[i] = method.teacher_targets(teacher, make_inputs(batch, tokens))
        times: dict[str, list[float]] = {"online": [], "cache": [], "student_only": []}
        for r in range(args.pairs):
            for mode in (("online", "cache", "student_only") if r % 2 == 0 else ("student_only", "cache", "online")):
                step(mode, 0)  # warm-up
                t = time.perf_counter()
                for i in range(min(steps, n_batches)):
                    step(mode, i)
                times[mode].append((time.perf_counter() - t) / min(steps, n_batches))
                print(f"  round {r + 1} {mode:12s} {times[mode][-1] * 1000:8.1f} ms/step", flush=True)
    med = {k: median(v) for k, v in times.items()}
    speedup, bound = med["online"] / med["cache"], med["online"] / med["student_only"]
    print(f"24→6 layers, hidden {args.hidden}, batch {b} pairs, depth 6 ({len(layers)} cached layers): "
          f"online {med['online'] * 1000:.1f} ms/step, cache {med['cache'] * 1000:.1f}, no teacher "
          f"{med['student_only'] * 1000:.1f} → speedup {speedup:.2f}× of a {bound:.2f}× bound "
          f"({speedup / bound:.0%}); cache build {build_s:.1f} s")
    return {"bench": "cache", "speedup": round(speedup, 3), "bound": round(bound, 3),
            "fraction_of_bound": round(speedup / bound, 3), "online_ms": round(med["online"] * 1000, 2),
            "cache_ms": round(med["cache"] * 1000, 2), "student_only_ms": round(med["student_only"] * 1000, 2),
            "build_s": round(build_s, 1), "hidden": args.hidden, "batch_pairs": b, "pairs": args.pairs,
            "cores": os.cpu_count()}
