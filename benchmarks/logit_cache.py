"""``bench.py logit_cache``: a causal kd step with the teacher online vs its top-k logits read from the
cache vs no teacher at all, at vocabulary 151,936, alternating rounds; and the cache's bytes per token."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, start_ray, table_rows

VOCAB = 151_936  # Qwen's vocabulary: the dense fp16 row the cache is compared with


def _inputs(tmp: Path, dialogs: int, max_length: int, args) -> tuple[str, dict, dict, str]:
    """Generated corpus with a BPE tokenizer, its causal template and a seeded random LLaMA teacher whose
    head has ``VOCAB`` rows (the data's ids use the first 2,000): (prepared, manifest, template, teacher dir)."""
    from transformers import AutoTokenizer

    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.template import causal_template
    from raykd.models.teacher import TeacherShape, build_teacher

    write_corpus(tmp / "raw", dialogs, seed=0)
    manifest = prepare(PrepareSettings(raw=[str(tmp / "raw")], out=str(tmp / "prepared"), tokenizer="train-bpe:2000",
                                       max_length=max_length, quiet=True))
    prepared = str(tmp / "prepared")
    tok = AutoTokenizer.from_pretrained(os.path.join(prepared, manifest["tokenizer"]["path"]))
    template = causal_template(tok).as_dict()
    shape = TeacherShape(layers=args.teacher_layers, hidden=args.hidden, heads=args.heads, intermediate=3 * args.hidden,
                         max_position=3 * max_length + 16, arch="llama")
    build_teacher(shape, VOCAB, tok.pad_token_id, seed=0, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id).save_pretrained(tmp / "teacher")
    return prepared, manifest, template, str(tmp / "teacher")


def _column_bytes(files: list[Path], columns: tuple[str, ...]) -> int:
    """On-disk (compressed) bytes of ``columns`` over the Parquet ``files``."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                if rg.column(c).path_in_schema in columns:
                    total += rg.column(c).total_compressed_size
    return total

HELP = "causal kd: teacher online vs top-k logit cache vs no teacher, V=151,936"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench logit_cache --help``)."""
    p.add_argument("--teacher-layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512, help="the teacher's width")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--student-hidden", type=int, default=128, help="0: a student cut from the teacher at its width")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=64, help="cached tokens per response position")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the training steps; the build uses the cluster's GPUs)")
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds (median; default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="600 dialogues, 4 steps per round, 2 rounds")


def bench_logit_cache(args) -> dict:
    """Step time (forward + backward + AdamW) of forward-KL kd from an ``--teacher-layers`` LLaMA teacher
    into a 2-layer student ``--student-hidden`` wide (0: cut from the teacher at its width), both with a
    151,936-row head (as a 7B teacher and a 0.5B student of one tokenizer: teacher width ÷ student ≈ 4): teacher online (the full-vocabulary loss),
    top-k read from the cache (Parquet rows → ``CausalCachedCollate`` → the sparse loss: the trial's
    own path), and no teacher at all (the same sparse step with its targets already in memory: the
    bound). Median of ``--rounds`` alternating rounds; the cache built through Ray Data first."""
    import torch

    from raykd.data.collate import CausalCollate

    from raykd.train.engine import Engine
    from raykd.data.shards import shard_paths
    from raykd.data.template import CausalTemplate
    from raykd.distill.methods import TokenIds, build_method, make_inputs
    from raykd.models.families import family as get_family
    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher
    from raykd.ray_layer.cache.causal_lm import TOPK_COLUMNS, CausalCachedCollate, build_causal_cache, \
        causal_cached_targets

    torch.set_num_threads(os.cpu_count() or 1)
    steps = 4 if args.quick else 10
    rounds = args.rounds or (2 if args.quick else 3)
    causal = get_family("causal_lm")
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        prepared, manifest, template, teacher_dir = _inputs(Path(tmp), 600 if args.quick else 1500, 48, args)
        ray, _ = start_ray()
        t = time.perf_counter()
        cache_dir, meta = build_causal_cache(prepared, teacher_dir, template, [], args.k, [1.0], vocab=VOCAB,
                                             log=lambda m: print(m, flush=True))
        build_s = time.perf_counter() - t
        ray.shutdown()
        files = sorted((Path(cache_dir) / "train").glob("*.parquet"))
        topk_bytes = _column_bytes(files, TOPK_COLUMNS) / meta["response_tokens"]
        dev = torch.device(args.device)
        teacher = load_teacher(teacher_dir).to(dev).eval()
        tokens = TokenIds.from_manifest(manifest)
        tpl = CausalTemplate.from_dict(template)
        data_rows = table_rows(shard_paths(prepared, "train", manifest))
        cache_rows = table_rows([str(p) for p in files])
        plain = CausalCollate(tpl)
        cached = CausalCachedCollate(tpl, None, [], args.hidden, topk=meta["topk"], cached_topk=meta["topk"])
        torch.manual_seed(0)
        student = build_student(teacher, 2, hidden=args.student_hidden or None,
                                heads=max(1, args.student_hidden // 64) if args.student_hidden else None)
        method = build_method("kd", student, teacher.config, divergence="forward_kl").to(dev)
        method.train()
        engine = Engine(method, lr=1e-4, clip=None)
        b = args.batch_size
        order = {str(p): i for i, p in enumerate(data_rows["pair_id"])}
        # the cache's rows in the data's order: every mode trains on the same batches
        perm = [order[str(p)] for p in cache_rows["pair_id"]]
        inv = sorted(range(len(perm)), key=lambda i: perm[i])
        cache_rows = {k: v[inv] for k, v in cache_rows.items()}

        def rows(src, i):
            return {k: v[i * b:(i + 1) * b] for k, v in src.items()}

        def batch_of(mode, i):
            if mode == "online":
                batch = plain(rows(data_rows, i))
                batch.pop("pair_id", None)
                return make_inputs({k: v.to(dev) for k, v in batch.items()}, tokens, family=causal), None
            batch = cached(rows(cache_rows, i))
            batch.pop("pair_id", None)
            targets = causal_cached_targets(batch.pop("teacher_cached"), dev)
            return make_inputs({k: v.to(dev) for k, v in batch.items()}, tokens, family=causal), targets

        free = {i: batch_of("cache", i) for i in range(steps)}  # the bound's targets, made outside its timing

        def step(mode: str, i: int) -> None:
            inputs, targets = free[i] if mode == "student_only" else batch_of(mode, i)
            if mode == "online":
                targets = method.teacher_targets(teacher, inputs)
            out = method(dict(inputs), targets)
            engine.backward(out["loss"])
            engine.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        times: dict[str, list[float]] = {"online": [], "cache": [], "student_only": []}
        for r in range(rounds):
            for mode in (("online", "cache", "student_only") if r % 2 == 0 else ("student_only", "cache", "online")):
                step(mode, 0)  # warm-up
                t = time.perf_counter()
                for i in range(steps):
                    step(mode, i)
                times[mode].append((time.perf_counter() - t) / steps)
                print(f"  round {r + 1} {mode:12s} {times[mode][-1] * 1000:8.1f} ms/step", flush=True)
    return _report(args, times, meta, topk_bytes, build_s, steps, rounds)


def _report(args, times: dict, meta: dict, topk_bytes: float, build_s: float, steps: int, rounds: int) -> dict:
    """Print the side-by-side line and return the figures (medians over rounds, ms per step; bytes per token)."""
    med = {k: median(v) for k, v in times.items()}
    speedup, bound = med["online"] / med["cache"], med["online"] / med["student_only"]
    dense_row = 2 * VOCAB
    print(f"{args.teacher_layers}→2 layers, hidden {args.hidden}→{args.student_hidden or args.hidden}, vocabulary {VOCAB:,}, batch {args.batch_size} pairs, top-{meta['topk']}: "
          f"online {med['online'] * 1000:.0f} ms/step, cache {med['cache'] * 1000:.0f}, no teacher "
          f"{med['student_only'] * 1000:.0f} → speedup {speedup:.2f}× of a {bound:.2f}× bound ({speedup / bound:.0%}); "
          f"{topk_bytes:.0f} bytes per response token on disk = {topk_bytes / dense_row:.3%} of a dense fp16 row "
          f"({dense_row:,} B); cache build {build_s:.1f} s")
    spread = {k: [round(min(v) * 1000, 1), round(max(v) * 1000, 1)] for k, v in times.items()}
    return {"bench": "logit_cache", "speedup": round(speedup, 3), "bound": round(bound, 3),
            "fraction_of_bound": round(speedup / bound, 3), "bytes_per_token": round(topk_bytes, 1),
            "bytes_fraction_of_dense_fp16": round(topk_bytes / dense_row, 5), "vocab": VOCAB, "topk": meta["topk"],
            "online_ms": round(med["online"] * 1000, 1), "cache_ms": round(med["cache"] * 1000, 1),
            "student_only_ms": round(med["student_only"] * 1000, 1), "ms_range": spread, "build_s": round(build_s, 1),
            "teacher_layers": args.teacher_layers, "hidden": args.hidden, "student_hidden": args.student_hidden, "batch_pairs": args.batch_size, "rounds": rounds,
            "steps": steps, "cores": os.cpu_count(), "device": args.device}
