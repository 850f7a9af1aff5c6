"""What every benchmark shares: the generated workload, a saved teacher, a local Ray started as
raykd starts one, Parquet row counts, the median, and the one-configuration raykd study."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


START_ENV = dict(os.environ)  # before start_ray adds raykd's single-machine Ray settings


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def workload(tmp: Path, dialogs: int, max_length: int) -> tuple[str, dict]:
    """A generated corpus prepared under ``tmp``: (prepared dir, manifest)."""
    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus

    write_corpus(tmp / "raw", dialogs, seed=0)
    m = prepare(PrepareSettings(raw=[str(tmp / "raw")], out=str(tmp / "prepared"), max_length=max_length, quiet=True))
    return str(tmp / "prepared"), m


def save_teacher(tmp: Path, manifest: dict, layers: int, hidden: int, heads: int, max_length: int) -> str:
    """A seeded random BERT teacher of the given shape saved as an HF directory; returns its path."""
    from raykd.models.teacher import TeacherShape, build_teacher

    t = build_teacher(TeacherShape(layers=layers, hidden=hidden, heads=heads, intermediate=4 * hidden,
                                   max_position=max(64, max_length)), manifest["tokenizer"]["vocab_size"], seed=0)
    t.save_pretrained(tmp / "teacher")
    return str(tmp / "teacher")


def start_ray(cpus: int | None = None, paths: tuple = (), keep_idle_workers: bool = True):
    """A local Ray for a benchmark, started as ``raykd.tune`` starts one (``start_local_ray``: loopback
    only, dashboard on, Ray Data's service actors asked for at once, idle workers kept for reuse
    with ``keep_idle_workers`` as for worker-group trials; the repository and ``paths`` on the
    workers' PYTHONPATH); returns (ray, seconds from ``ray.init`` until those actors are ready).
    Waiting for them keeps their start-up (~3 s of CPU) out of whatever the benchmark times next;
    ``raykd.tune`` does not wait (they start while it prepares its inputs and Tune starts the first
    trial)."""
    import ray

    from raykd.ray_layer.cluster import start_local_ray

    t = time.perf_counter()
    _, services = start_local_ray(cpus, os.pathsep.join([str(ROOT), *map(str, paths)]), keep_idle_workers)
    ray.get([h.__ray_ready__.remote() for h in services.values()])
    return ray, time.perf_counter() - t


def table_rows(paths: list[str]) -> dict:
    """Parquet files → {column: numpy array of rows}."""
    import pyarrow.parquet as pq

    t = pq.read_table(paths)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


BENCH_BASE = ["train.local_mode=false", "student.hidden=null", "search.confirm.top_k=0", "search.confirm.seeds=[]",
              "experiment.references=false"]


def raykd_study(tmp: Path, name: str, prepared: str, teacher: str, sets: list[str]) -> list[dict]:
    """Run a one-configuration raykd study (through ``raykd.tune.main`` on the running Ray) and
    return each trial's result rows after training steps (its step-0 row, which trains nothing, left
    out). The study keeps the embedded default's old shape the benchmarks were written for: worker
    groups unless ``sets`` asks for local mode, a student copied from the teacher, no confirm phase,
    no reference trials."""
    from raykd.ray_layer.tune import main as tune_main

    exp = tmp / "exp"
    base = [f"data.prepared={prepared}", f"teacher.spec={teacher}", "teacher.adapt=null", "search.algorithm=grid",
            "space={}", "search.scheduler.type=none", f"data.work_dir={tmp / 'work'}", "train.eval_pairs=32",
            *BENCH_BASE]
    rc = tune_main(["--config", str(ROOT / "search_spaces" / "smoke.yaml"), "--storage", str(exp), "--name", name,
                    "--set", *base, *sets])
    if rc != 0:
        raise SystemExit(f"bench: the raykd study {name} failed (exit {rc})")
    out = []
    for d in sorted((exp / name).glob("trial_*")):
        rows = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip()]
        out.append([r for r in rows if r.get("step", 0) > 0])
    return out
