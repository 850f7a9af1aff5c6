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
    python scripts/bench.py study --anchors DIR [--quick]   the anchors' 6-trial study: raykd vs Optuna
                                                 in one process vs HF Trainer + Ray Tune

Each benchmark is a module of the ``benchmarks`` package registering its own options (``benchmarks/common.py``:
what they share); this script and ``python -m raykd bench`` only dispatch.
Numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import main  # noqa: E402 (the checkout's benchmarks package, found through the line above)

if __name__ == "__main__":
    sys.exit(main())
