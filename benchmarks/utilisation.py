"""``bench.py utilisation``: how busy the whole machine is while a study's trials run, and how long they take,
with one torch thread per local-mode trial (``train.threads_per_worker=1``: the rule before #34, a core kept
for Ray Data) against the automatic share (the node's CPUs divided among the concurrent trials,
``ray_layer.tuners.local_threads``), the two run alternately in one process, ``--rounds`` times each."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import median

HELP = "busy fraction of all cores during a study's trials and its trial time: one thread per trial vs the node's share"
TRIAL_PHASES = ("references", "search", "confirm", "tuning")
VARIANTS = (("one thread per trial (before)", 1), ("the node's CPUs per trial (after)", 0))


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench utilisation --help``)."""
    p.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternated (default 2)")
    p.add_argument("--full", action="store_true",
                   help="the embedded default as it is (6 trials, confirm on 3 seeds); default: 4 trials, no confirm")
    p.add_argument("--work", default=".raykd/data", help="data work directory (corpus, teacher, scores cached)")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat's first line (idle and iowait not busy)."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


class CpuSampler:
    """/proc/stat sampled every ``period_s`` seconds in a thread (as a context manager): (wall time, busy, total)."""

    def __init__(self, period_s: float = 0.5):
        from raykd.ray_layer.monitoring import PeriodicSampler

        outer = self

        class _Sampler(PeriodicSampler):
            def sample(self):
                outer.samples.append((time.time(), *cpu_times()))

        self.samples: list[tuple[float, float, float]] = []
        self._sampler = _Sampler(period_s)

    def __enter__(self):
        self.samples.append((time.time(), *cpu_times()))
        self._sampler.__enter__()
        return self

    def __exit__(self, *exc):
        self._sampler.__exit__(*exc)

    def busy_fraction(self, spans: list[tuple[float, float]]) -> float:
        """Busy share of all cores over ``spans`` (wall-clock windows), from the samples at their edges."""
        busy = total = 0.0
        for start, end in spans:
            inside = [s for s in self.samples if start <= s[0] <= end]
            if len(inside) >= 2:
                busy += inside[-1][1] - inside[0][1]
                total += inside[-1][2] - inside[0][2]
        return busy / total if total else float("nan")


def _study(threads: int, args, storage: Path, name: str) -> dict:
    """One study of the embedded default with ``train.threads_per_worker=threads`` (0: automatic): the seconds
    of its trial phases and the machine's busy fraction over them."""
    from raykd import config as C
    from raykd.ray_layer.tune import DEFAULT_CONFIG, run_phases

    sets = {"train.threads_per_worker": threads, "data.work_dir": args.work}
    if not args.full:
        sets.update({"search.num_samples": 4, "search.confirm.top_k": 0})
    cfg = C.load_config(DEFAULT_CONFIG, sets)
    with CpuSampler() as cpu:
        out = run_phases(cfg, str(storage), name, False, None)
    spans = [s for p in TRIAL_PHASES for s in out.clock.spans.get(p, [])]
    return {"trials_s": sum(e - s for s, e in spans), "busy": cpu.busy_fraction(spans),
            "total_s": sum(out.clock.seconds.values())}


def bench_utilisation(args) -> dict:
    """Per variant: median trial-phase seconds and busy fraction over ``--rounds``; the before ÷ after ratio of
    trial time per round (its spread is the machine's noise)."""
    runs: dict[int, list[dict]] = {t: [] for _, t in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        for r in range(args.rounds):
            for label, threads in VARIANTS:
                res = _study(threads, args, Path(tmp), f"u{r}-{threads}")
                runs[threads].append(res)
                print(f"[utilisation] round {r + 1}: {label}: trials {res['trials_s']:.0f} s, all cores "
                      f"{100 * res['busy']:.0f} % busy (study {res['total_s']:.0f} s)", flush=True)
    ratios = [b["trials_s"] / a["trials_s"] for b, a in zip(runs[1], runs[0])]
    out = {"rounds": args.rounds, "full": bool(args.full), "ratio_before_over_after": ratios}
    for label, threads in VARIANTS:
        key = "before" if threads == 1 else "after"
        out[f"{key}_trials_s"] = median([x["trials_s"] for x in runs[threads]])
        out[f"{key}_busy"] = median([x["busy"] for x in runs[threads]])
        print(f"{label:38s} trials {out[f'{key}_trials_s']:6.0f} s · all cores {100 * out[f'{key}_busy']:3.0f} % busy")
    print(f"trial time before ÷ after: {', '.join(f'{x:.2f}' for x in ratios)} (per round)")
    return out
