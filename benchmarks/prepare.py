"""``bench.py prepare``: pairs/s of ``raykd.data prepare`` on a generated corpus."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

HELP = "pairs/s of `raykd.data prepare` on a generated corpus"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench prepare --help``)."""
    p.add_argument("--dialogs", type=int, default=50000)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="10,000 dialogues")
    p.add_argument("--verbose", action="store_true")


def bench_prepare(args) -> dict:
    """Prepare a generated corpus from scratch (tokenizer training included); pairs/s over the whole run."""
    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus

    dialogs = 10000 if args.quick else args.dialogs
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        t = time.perf_counter()
        write_corpus(Path(tmp) / "raw", dialogs, seed=0)
        synth_s = time.perf_counter() - t
        t = time.perf_counter()
        m = prepare(PrepareSettings(raw=[str(Path(tmp) / "raw")], out=str(Path(tmp) / "out"),
                                    max_length=args.max_length, quiet=not args.verbose))
        prep_s = time.perf_counter() - t
        t = time.perf_counter()
        prepare(PrepareSettings(raw=[str(Path(tmp) / "raw")], out=str(Path(tmp) / "out"),
                                max_length=args.max_length, quiet=True))
        reuse_s = time.perf_counter() - t
    pairs = m["counts"]["pairs"]
    print(f"synth {dialogs:,} dialogues: {synth_s:.1f} s; prepare: {pairs:,} pairs "
          f"({m['counts']['pairs_built']:,} built) in {prep_s:.1f} s on {os.cpu_count()} cores; "
          f"re-run with identical inputs (reuse): {reuse_s:.2f} s")
    return {"bench": "prepare", "dialogs": dialogs, "pairs": pairs, "seconds": round(prep_s, 2),
            "pairs_per_s": round(pairs / prep_s, 1), "reuse_s": round(reuse_s, 2), "cores": os.cpu_count()}
