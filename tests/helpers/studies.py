"""What the integration tests read back from a study, and the local-mode settings they share."""

from __future__ import annotations

import json
from pathlib import Path

# a small local-mode grid study (no references), as the local-mode and API tests run it
LOCAL = ["train.local_mode=true", "train.cpus_per_worker=1", "search.algorithm=grid", "train.steps=16",
         "train.eval_every=4", "train.checkpoint_keep=2", "search.max_concurrent=1", "experiment.references=false"]


def trial_results(exp: Path) -> dict[str, list[dict]]:
    """{trial directory name: its result.json rows (one dict per report)} of an experiment directory."""
    out = {}
    for d in sorted(exp.glob("trial_*")):
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []
        out[d.name] = [json.loads(x) for x in lines if x.strip()]
    return out
