#!/usr/bin/env python
"""raykd benchmarks: one sub-command per benchmark, each ending with one JSON line of its figures.

    python scripts/bench.py prepare [--dialogs 50000] [--quick]
    python scripts/bench.py cache [--quick]      online teacher vs teacher cache vs no teacher (24→6 layers)
    python scripts/bench.py overhead [--quick]   plain PyTorch loop vs the raykd trial (1 worker), online and cached:
                                                 both at once, alternately stopped every --slice s, step by step
    python scripts/bench.py startup [--quick]    trial start → first optimizer step, and an empty TorchTrainer
    python scripts/bench.py idle [--quick]       what idle Ray worker processes cost a training trial
    python scripts/bench.py student [--quick]    teacher vs student latency (24 → 6) and retained MRR@10
    python scripts/bench.py search [--quick]     ASHA+TPE vs the grid: compute to within 1 point of its best
    python scripts/bench.py kdloss [--quick]     chunked vs naive KD loss at V=151,936: peak memory and time
    python scripts/bench.py logit_cache [--quick] causal kd at V=151,936: teacher online vs its top-k logits from
                                                 the cache vs no teacher; the cache's bytes per token
    python scripts/bench.py study [--quick] [--anchors DIR]   the anchors' 6-trial study: raykd vs Optuna
                                                 in one process vs HF Trainer + Ray Tune

Each benchmark is a module of the ``benchmarks`` package (``benchmarks/common.py``: what they share).
Numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="pairs/s of `raykd.data prepare` on a generated corpus")
    p.add_argument("--dialogs", type=int, default=50000)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="10,000 dialogues")
    p.add_argument("--verbose", action="store_true")
    p = sub.add_parser("cache", help="online teacher vs teacher cache vs no teacher, 24→6 layers")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pairs", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("overhead", help="plain PyTorch loop vs the raykd trial (1 worker), online and cached")
    p.add_argument("--teacher-layers", type=int, default=12)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=0, help="per run (default 300, --quick 40; --slice 0: 150, 60)")
    p.add_argument("--pairs", type=int, default=3, help="--slice 0: alternating rounds (median reported)")
    p.add_argument("--local-mode", action="store_true", help="raykd trials with train.local_mode (default: a worker group)")
    p.add_argument("--slice", type=float, default=None,
                   help="seconds: both sides run at once, alternately stopped, compared slice by slice (default 8, "
                        "--quick 4); 0: whole runs in alternating rounds instead")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("startup", help="trial start → first optimizer step, and an empty TorchTrainer")
    p.add_argument("--trials", type=int, default=0, help="sequential trials per kind (default 5, --quick 3)")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("idle", help="what idle Ray worker processes cost a training trial (on/off windows)")
    p.add_argument("--idle", type=int, default=5, help="idle 0-CPU actors started in the 'with' windows")
    p.add_argument("--window", type=float, default=20.0, help="seconds per window (--quick 10)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds (median reported; --quick 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (default: one per core)")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("student", help="teacher vs student latency (24 → 6 layers) and retained MRR@10")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--pairs", type=int, default=5, help="alternating teacher/student rounds (median reported)")
    p.add_argument("--repeats", type=int, default=30, help="timed forward passes per round and batch size (median)")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("search", help="ASHA+TPE vs the full grid: compute to within 1 point of the grid's best")
    p.add_argument("--samples", type=int, default=9, help="search trials")
    p.add_argument("--within", type=float, default=1.0, help="points of val/semantic_alignment (0-100)")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("kdloss", help="chunked vs naive KD loss: peak memory and time, forward + backward")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256, help="tokens per chunk of the chunked loss")
    p.add_argument("--divergence", default="forward_kl")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each side a fresh process (median)")
    p.add_argument("--quick", action="store_true", help="1,024 tokens, 3 rounds")
    p = sub.add_parser("logit_cache", help="causal kd: teacher online vs top-k logit cache vs no teacher, V=151,936")
    p.add_argument("--teacher-layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512, help="the teacher's width")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--student-hidden", type=int, default=128, help="0: a student cut from the teacher at its width")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=64, help="cached tokens per response position")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the training steps; the build uses the cluster's GPUs)")
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds (median; default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="600 dialogues, 4 steps per round, 2 rounds")
    p = sub.add_parser("study", help="the anchors' 6-trial study: raykd vs Optuna in one process vs HF + Ray Tune")
    p.add_argument("--anchors", default=str(ROOT.parent / "shared" / "anchors"), help="the anchors folder")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported; --quick: 1)")
    p.add_argument("--workers", action="store_true", help="also raykd with a Train worker group per trial")
    p.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import importlib

    result = getattr(importlib.import_module(f"benchmarks.{args.cmd}"), f"bench_{args.cmd}")(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
