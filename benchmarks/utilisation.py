"""``bench.py utilisation``: how busy the whole machine is while a study's trials run, how long they take, and
who used the CPU (the trials, Ray Data's tasks and actors, Ray's own services, the driver) — for three ways
of using a 2-core node: one trial at a time on one torch thread (``train.cpus_per_worker=1``,
``train.threads_per_worker=1``: the rule before #34, a core kept for Ray Data), one trial at a time on the
node's CPUs (``train.cpus_per_worker=1``: ``ray_layer.tuners.local_threads`` gives it both cores), and two
trials at once with one thread each (today's default, ``ray_layer.tuners.trial_cpus``: 0.5 CPU a trial). They
run alternately in one process, ``--rounds`` times each."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from benchmarks.common import median

HELP = "busy fraction of all cores during a study's trials and its trial time: one trial on one thread, on every core, or one trial per core"
TRIAL_PHASES = ("references", "search", "confirm", "tuning")
VARIANTS = (("one trial, one thread (before)", "before", {"train.cpus_per_worker": 1, "train.threads_per_worker": 1}),
            ("one trial, the node's CPUs", "after", {"train.cpus_per_worker": 1}),
            ("two trials at once, one thread each (default)", "parallel", {}))
# who a process is, from its title (Ray names a worker process after the task or actor method it runs)
ROLES = (("trial", re.compile(r"ray::(ImplicitFunc|_Inner|RayTrainWorker|TrainController|PlacementGroupCleaner"
                              r"|SynchronizationActor)")),
         ("ray data", re.compile(r"ray::(.*(Read|Map|Shuffle|Split|Repartition|Sort|Aggregate|Limit|Project|Filter)"
                                 r"|DatasetManager|_StatsActor|_AutoscalingCoordinatorActor|ActorLocationTracker)")),
         # a worker starting (``default_worker.py``, before it takes a title) or between tasks (after one shorter
         # than a sample): an upper bound on what the Ray Data share can miss
         ("idle ray workers", re.compile(r"^ray::IDLE|default_worker\.py|setup_worker\.py")),
         ("ray services", re.compile(r"(^|/)(gcs_server|raylet)( |$)|dashboard|ray::DashboardAgent|ray::RuntimeEnvAgent"
                                     r"|log_monitor|autoscaler|monitor\.py|ray::TrainStateActor")))


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


def process_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (title, user + system CPU seconds since it started)} of every process now running."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        out[int(d)] = (title, (float(fields[11]) + float(fields[12])) / tick)
    return out


def role(pid: int, title: str) -> str:
    """Which part of a study a process is: the driver (this process), a trial, Ray Data, Ray's services, other."""
    if pid == os.getpid():
        return "driver"
    return next((name for name, pattern in ROLES if pattern.search(title)), "other")


class ProcessCpu:
    """CPU seconds per role (``role``) over wall-clock spans, from every process's /proc entry sampled each
    ``period_s``: a process's CPU between two samples counts for the role its title had at the earlier one when
    it reads ``ray::IDLE`` at the later (a task that ended meanwhile), else at the later one."""

    def __init__(self, period_s: float = 0.25):
        from raykd.ray_layer.monitoring import PeriodicSampler

        outer = self

        class _Sampler(PeriodicSampler):
            def sample(self):
                outer.samples.append((time.time(), process_cpu()))

        self.samples: list[tuple[float, dict]] = []
        self._sampler = _Sampler(period_s)

    def __enter__(self):
        self.samples.append((time.time(), process_cpu()))
        self._sampler.__enter__()
        return self

    def __exit__(self, *exc):
        self._sampler.__exit__(*exc)

    def seconds(self, spans: list[tuple[float, float]]) -> dict[str, float]:
        """CPU seconds of each role within ``spans``."""
        used: dict[str, float] = {}
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:]):
            if not any(start <= t0 and t1 <= end for start, end in spans):
                continue
            for pid, (title, cpu) in b.items():
                before = a.get(pid)
                was = before[0] if before else title
                name = role(pid, was if title == "ray::IDLE" else title)
                # a process new since the last sample counts whole; a reused pid (a smaller total) from zero
                used[name] = used.get(name, 0.0) + (cpu - before[1] if before and cpu >= before[1] else cpu)
        return used


def _study(sets: dict, args, storage: Path, name: str) -> dict:
    """One study of the embedded default with ``sets`` on top: the seconds of its trial phases, the machine's
    busy fraction over them and the CPU seconds each role used there."""
    from raykd import config as C
    from raykd.ray_layer.tune import DEFAULT_CONFIG, run_phases

    sets = {**sets, "data.work_dir": args.work}
    if not args.full:
        sets.update({"search.num_samples": 4, "search.confirm.top_k": 0})
    cfg = C.load_config(DEFAULT_CONFIG, sets)
    with CpuSampler() as cpu, ProcessCpu() as procs:
        out = run_phases(cfg, str(storage), name, False, None)
    spans = [s for p in TRIAL_PHASES for s in out.clock.spans.get(p, [])]
    return {"trials_s": sum(e - s for s, e in spans), "busy": cpu.busy_fraction(spans),
            "total_s": sum(out.clock.seconds.values()), "cpu_s": procs.seconds(spans),
            "found": findings(str(storage / name), cfg)}


def findings(exp: str, cfg) -> dict:
    """What a study found, to set beside its time: each search trial (params, status, steps, last validation
    lead metric) and, where a confirm phase ran, the confirmed configuration's gains over ``init`` and
    ``no_distill`` on the test lead metric (paired by seed: mean, 95 % CI half-width, Holm p)."""
    from raykd.results.report import gains_over_references, load_experiment, load_references, varied_parameters

    lead = cfg.experiment.metric
    trials = load_experiment(exp)
    search = [{"params": t.params, "status": t.status, "steps": t.steps, lead: t.metrics.get(lead)} for t in trials]
    confirm = Path(exp + "-confirm")
    gains = []
    if confirm.exists():
        done = [t for t in load_experiment(confirm) if t.status == "finished"]
        rows = gains_over_references(done, load_references(exp), varied_parameters(done),
                                     "test/" + lead.split("/", 1)[-1])
        gains = [{k: r[k] for k in ("label", "role", "n", "diff", "ci", "p_holm")} for r in rows]
    return {"search": search, "gains": gains}


def _cores(res: dict, name: str) -> float:
    """Mean cores a role kept busy over the trial phases."""
    return res["cpu_s"].get(name, 0.0) / res["trials_s"] if res["trials_s"] else float("nan")


def bench_utilisation(args) -> dict:
    """Per variant: median trial-phase seconds, busy fraction and cores per role over ``--rounds``; each
    variant's trial time ÷ that of one trial on the node's CPUs ("after"), per round (their spread is the
    machine's noise)."""
    runs: dict[str, list[dict]] = {key: [] for _, key, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        for r in range(args.rounds):
            for label, key, sets in VARIANTS:
                res = _study(sets, args, Path(tmp), f"u{r}-{key}")
                runs[key].append(res)
                roles = ", ".join(f"{name} {_cores(res, name):.2f}" for name in sorted(res["cpu_s"]))
                print(f"[utilisation] round {r + 1}: {label}: trials {res['trials_s']:.0f} s, all cores "
                      f"{100 * res['busy']:.0f} % busy (study {res['total_s']:.0f} s); cores used: {roles}", flush=True)
                for g in res["found"]["gains"]:
                    print(f"[utilisation]   found: {g['label']} over {g['role']}: {g['diff']:+.4f} ± {g['ci']:.4f} "
                          f"(n={g['n']}, p_holm={g['p_holm']:.3g})", flush=True)
    out = {"rounds": args.rounds, "full": bool(args.full), "runs": runs}
    for label, key, _ in VARIANTS:
        rows = runs[key]
        out[key] = {"trials_s": median([x["trials_s"] for x in rows]), "busy": median([x["busy"] for x in rows]),
                    "cores": {name: median([_cores(x, name) for x in rows])
                              for name in sorted({n for x in rows for n in x["cpu_s"]})},
                    "over_after": [x["trials_s"] / a["trials_s"] for x, a in zip(rows, runs["after"])]}
        v = out[key]
        print(f"{label:38s} trials {v['trials_s']:6.0f} s · all cores {100 * v['busy']:3.0f} % busy · ray data "
              f"{v['cores'].get('ray data', 0.0):.3f} cores · trial time ÷ one trial on the node's CPUs "
              f"{', '.join(f'{x:.2f}' for x in v['over_after'])} (per round)")
    return out
