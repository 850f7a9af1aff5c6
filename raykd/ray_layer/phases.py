"""Where a study's wall time goes: the seconds of each phase (prepare, Ray start, adaptation and scoring, the
teacher cache, references, search, confirm — or a compare study's tuning, confirmation and references) and
the share of the trials' time spent evaluating, printed as one line at the end of the run."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path


class PhaseClock:
    """Wall seconds per phase, in the order the phases first ran (a phase timed twice adds up)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.spans: dict[str, list[tuple[float, float]]] = {}  # each phase's (start, end) wall-clock times (epoch s)

    @contextmanager
    def __call__(self, phase: str):
        t0, w0 = time.monotonic(), time.time()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - t0
            self.spans.setdefault(phase, []).append((w0, time.time()))

    def line(self, eval_share: float | None = None) -> str:
        """``[tune] time by phase: prepare 4 s · … · total 312 s · evaluation 31 % of the trials' time``."""
        parts = [f"{name} {s:.0f} s" for name, s in self.seconds.items()]
        parts.append(f"total {sum(self.seconds.values()):.0f} s")
        if eval_share is not None:
            parts.append(f"evaluation {100 * eval_share:.0f} % of the trials' time")
        return "[tune] time by phase: " + " · ".join(parts)


def evaluation_share(*exp_dirs: str | Path) -> float | None:
    """Σ seconds the trials under ``exp_dirs`` (their references and tuning trials included) spent
    evaluating ÷ Σ their wall seconds, from each trial's last ``result.json`` row (``time/eval_s``,
    ``time_total_s``); None when no trial reported both (a remote storage, an older run)."""
    spent = total = 0.0
    for path in (p for d in exp_dirs for p in Path(d).rglob("result.json")):
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        last = json.loads(lines[-1])
        if last.get("time/eval_s") is not None and last.get("time_total_s"):
            spent += float(last["time/eval_s"])
            total += float(last["time_total_s"])
    return spent / total if total > 0 else None
