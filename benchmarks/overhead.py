"""``bench.py overhead``: a plain PyTorch loop vs the raykd trial (1 worker), online and cached —
both at once, alternately stopped every ``--slice`` s, compared step by step (or whole runs in rounds)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import median, raykd_study, save_teacher, start_ray, table_rows, workload


def plain_loop(prepared: str, manifest: dict, teacher_dir: str, steps: int, eval_every: int, batch_size: int,
               student_layers: int, cache_dir: str | None, threads: int, record: str | None = None,
               go=None) -> float:
    """The raykd trial's training step as a plain single-process PyTorch loop over the same shards
    (same objective, optimizer, schedule, clipping, collation); returns tokens/s over the windows
    after the first (as the trial measures them). With ``record``, also appends one line per step to
    that file: the step's end (Unix seconds) and its real tokens. With ``go`` (an event), waits for
    it after the set-up, before the first step."""
    import torch

    from raykd.ray_layer.cache.builder import structural_layers
    from raykd.ray_layer.cache.masked_lm import CachedPairCollator, cached_targets
    from raykd.data.shards import shard_paths
    from raykd.ray_layer.stream import PairCollator, department_index
    from raykd.distill.methods import TokenIds, build_method, make_inputs
    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher
    from raykd.train.engine import Engine, linear_warmup_decay

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = load_teacher(teacher_dir).eval()
    teacher.requires_grad_(False)
    tokens = TokenIds.from_manifest(manifest)
    depts = department_index(manifest)
    t_layers = teacher.config.num_hidden_layers
    layers = structural_layers(t_layers, student_layers, student_layers)
    if cache_dir:
        rows = table_rows(sorted(str(p) for p in (Path(cache_dir) / "train").glob("*.parquet")))
        collate = CachedPairCollator(tokens.pad, depts, layers, teacher.config.hidden_size)
    else:
        rows = table_rows(shard_paths(prepared, "train", manifest))
        collate = PairCollator(tokens.pad, depts)
    rows = {k: v for k, v in rows.items() if k in ("pair_id", "department", "q_input_ids", "a_input_ids")
            or k in {f"{s}_h{x}" for x in layers for s in "qa"}}
    method = build_method("structural", build_student(teacher, student_layers, aggregation=True), teacher.config,
                          depth=student_layers, projection_dim=64, n_departments=len(depts))
    method.train()
    engine = Engine(method, lr=5e-4, weight_decay=0.01, schedule=linear_warmup_decay(10, steps))
    n = len(rows["pair_id"])
    order = np.random.default_rng(0).permutation(n)
    windows, toks, t_window, step, pos = [], 0, None, 0, 0
    if go is not None:
        go.wait()
    log = open(record, "a", buffering=1) if record else None  # line-buffered: one write per step
    while step < steps:
        if pos + batch_size > n:
            order, pos = np.random.default_rng(step).permutation(n), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        if t_window is None:
            t_window = time.perf_counter()
        batch = collate({k: v[idx] for k, v in rows.items()})
        batch.pop("pair_id")
        cached = batch.pop("teacher_hidden", None)
        method.set_progress(step / steps)
        inputs = make_inputs(batch, tokens)
        targets = method.teacher_targets(teacher, inputs) if cached is None else cached_targets(cached, "cpu")
        out = method(inputs, targets)
        engine.backward(out["loss"])
        engine.step()
        step += 1
        toks += int(inputs["mask"].sum())
        if log is not None:
            log.write(f"{time.time():.6f} {int(inputs['mask'].sum())}\n")
        if step % eval_every == 0:
            windows.append(toks / (time.perf_counter() - t_window))
            toks, t_window = 0, None
    return median(windows[1:] or windows)

HELP = "plain PyTorch loop vs the raykd trial (1 worker), online and cached"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench overhead --help``)."""
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


def bench_overhead(args) -> dict:
    """Throughput of the raykd trial (Ray Train, 1 worker, Ray Data input) ÷ a plain PyTorch loop
    doing the identical training work, with the online teacher and with the teacher cache: both run
    at once, alternately stopped every ``--slice`` seconds (``sliced_pair``), median over the slice
    pairs; ``--slice 0`` runs whole runs in rounds that alternate the two sides instead, median of
    ``--pairs``. ``--local-mode`` runs the raykd trials in ``train.local_mode`` (in a reused Tune
    actor) instead of a one-worker group."""
    from raykd.ray_layer.cache.builder import structural_layers
    from raykd.ray_layer.cache.masked_lm import build_cache

    if args.slice is None:
        args.slice = 4.0 if args.quick else 8.0
    if args.slice:
        steps = args.steps or (40 if args.quick else 300)
        every = steps // 3
    else:
        steps = args.steps or (60 if args.quick else 150)
        every = steps // 3 if args.quick else steps // 5
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        prepared, manifest = workload(tmp, 600 if args.quick else 1500, 64)
        teacher = save_teacher(tmp, manifest, args.teacher_layers, args.hidden, args.heads, 64)
        ray, _ = start_ray()
        cache_dir = str(build_cache(prepared, teacher, structural_layers(args.teacher_layers, args.student_layers,
                                                                           args.student_layers), log=print))
        sets = [f"train.steps={steps}", f"train.eval_every={every}", f"train.batch_size={args.batch_size}",
                f"student.layers={args.student_layers}", f"method.depth={args.student_layers}",
                "method.projection_dim=64", f"train.threads_per_worker={threads}", "train.cpus_per_worker=1",
                "sampler.name=uniform", f"train.local_mode={'true' if args.local_mode else 'false'}"]
        ratios: dict[str, list[float]] = {"online": [], "cached": []}
        tps: dict[str, list[float]] = {"plain_online": [], "raykd_online": [], "plain_cached": [], "raykd_cached": []}
        run, others_cores = 0, {}
        for mode in ("online", "cached") if args.slice else ():
            got = sliced_pair(tmp, f"overhead_{mode}", prepared, manifest, teacher,
                              cache_dir if mode == "cached" else None,
                              sets + [f"teacher.cache={'true' if mode == 'cached' else 'false'}"], steps, every, args,
                              threads)
            assert got["rows"][-1]["teacher_source"] == ("cache" if mode == "cached" else "online")
            ratios[mode] = got["ratios"]
            tps[f"plain_{mode}"], tps[f"raykd_{mode}"] = [got["plain_tps"]], [got["raykd_tps"]]
            print(f"  {mode:7s} {got['slices']} slice pairs of {args.slice:g} s ({got['raykd_slices']} raykd slices; "
                  f"those with < 3 whole steps — start-up, evaluations — are left out): raykd ÷ plain median "
                  f"{median(got['ratios']):.3f} (quartiles {np.percentile(got['ratios'], 25):.3f}–"
                  f"{np.percentile(got['ratios'], 75):.3f}); pooled plain {got['plain_tps']:.0f} tok/s · "
                  f"raykd {got['raykd_tps']:.0f} tok/s → {got['raykd_tps'] / got['plain_tps']:.3f}; other processes "
                  f"used {got['others_cores']['raykd']:.3f} cores during raykd's slices, "
                  f"{got['others_cores']['plain']:.3f} during the plain loop's", flush=True)
            for side in ("plain", "raykd"):
                print(f"    {side} tok/s by slice: " + " ".join(f"{x:.0f}" if x else "-" for x in got["rates"][side])
                      + "; busiest other processes in its slices (cores): "
                      + ", ".join(f"{t} {c}" for t, c in got["others_top"][side]))
            others_cores[mode] = {k: round(v, 3) for k, v in got["others_cores"].items()}
        for r in range(0 if args.slice else args.pairs):
            for mode in ("online", "cached"):
                sides = ("plain", "raykd") if r % 2 == 0 else ("raykd", "plain")
                got = {}
                for side in sides:
                    if side == "plain":
                        got[side] = plain_loop(prepared, manifest, teacher, steps, every, args.batch_size,
                                               args.student_layers, cache_dir if mode == "cached" else None, threads)
                    else:
                        run += 1
                        rows = raykd_study(tmp, f"overhead{run}", prepared, teacher,
                                           sets + [f"teacher.cache={'true' if mode == 'cached' else 'false'}"])[0]
                        assert rows[-1]["teacher_source"] == ("cache" if mode == "cached" else "online")
                        got[side] = median([x["tokens_per_s"] for x in rows[1:]] or [rows[0]["tokens_per_s"]])
                    tps[f"{side}_{mode}"].append(got[side])
                ratios[mode].append(got["raykd"] / got["plain"])
                print(f"  round {r + 1} {mode:7s} plain {got['plain']:9.0f} tok/s · raykd {got['raykd']:9.0f} tok/s "
                      f"→ {ratios[mode][-1]:.3f}", flush=True)
        ray.shutdown()
    out = {"bench": "overhead", "ratio_online": round(median(ratios["online"]), 3),
           "ratio_cached": round(median(ratios["cached"]), 3),
           **{f"{k}_tokens_per_s": round(median(v), 1) for k, v in tps.items()},
           "teacher_layers": args.teacher_layers, "student_layers": args.student_layers, "hidden": args.hidden,
           "batch_pairs": args.batch_size, "steps": steps, "local_mode": args.local_mode, "cores": os.cpu_count(),
           **({"slice_s": args.slice, "slice_pairs": {k: len(v) for k, v in ratios.items()},
               "pooled_online": round(tps["raykd_online"][0] / tps["plain_online"][0], 3),
               "pooled_cached": round(tps["raykd_cached"][0] / tps["plain_cached"][0], 3),
               "others_cores": others_cores}
              if args.slice else {"pairs": args.pairs})}
    print(f"{args.teacher_layers}→{args.student_layers} layers, hidden {args.hidden}, batch {args.batch_size} pairs, "
          f"{steps} steps: raykd ÷ plain = {out['ratio_online']:.3f} online, {out['ratio_cached']:.3f} cached")
    return out


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first, ppid second, …)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _actor_process(class_name: str) -> int | None:
    """The pid of the newest live process of a ``class_name`` actor (Ray titles it
    ``ray::<class>.<method>``) that descends from this process — i.e. runs on the Ray this benchmark
    started — or None. Read from /proc: Ray's actor tables (state API, GCS) missed the second
    study's trial actor here."""
    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = int(_proc_stat(pid)[1])
        return False

    best = None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            fields = _proc_stat(int(name))
            if title.startswith(f"ray::{class_name}") and fields[0] != "Z" and ours(int(name)):
                started = int(fields[19])
                best = max(best or (started, int(name)), (started, int(name)))
        except (OSError, ValueError, IndexError):
            continue
    return best[1] if best else None


def _signal(pid: int | None, sig) -> None:
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _cpu_seconds_by_process(pids: set) -> dict[int, float]:
    """{pid: CPU seconds (user + system) used so far} of every process on this machine but ``pids``."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in pids:
            try:
                fields = _proc_stat(int(name))
            except OSError:  # gone meanwhile
                continue
            out[int(name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _process_title(pid: int) -> str:
    """The command (process title) of ``pid``, shortened; this benchmark's own process is named so."""
    if pid == os.getpid():
        return "this benchmark (Tune driver)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")[:60] or f"pid {pid}"
    except OSError:
        return f"pid {pid} (gone)"


def _trial_steps(trial_dir: Path) -> list[tuple[int, float, float]]:
    """(step, end time in Unix s, real tokens) of every optimizer step of a raykd trial, read from its
    per-step TensorBoard events (``train/tokens``, wall time = the step's end)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return sorted((e.step, e.wall_time, e.value) for e in ea.Scalars("train/tokens"))


def _slice_rates(steps: list[tuple[int, float, float]], slices: list[tuple[float, float]], skip_step) -> list:
    """Tokens/s of each time slice from the steps that began and ended inside it (a step begins when
    the one before it ended; ``skip_step(step)`` drops steps that also span other work, e.g. an
    evaluation); None for a slice with fewer than 3 such steps. Also returns the pooled (tokens, s)."""
    rates, pooled = [], [0.0, 0.0]
    for t0, t1 in slices:
        toks = secs = n = 0
        for (_, prev, _), (step, end, tokens) in zip(steps, steps[1:]):
            if t0 <= prev and end <= t1 and not skip_step(step):
                toks, secs, n = toks + tokens, secs + (end - prev), n + 1
        rates.append(toks / secs if n >= 3 else None)
        pooled[0] += toks if n >= 3 else 0
        pooled[1] += secs if n >= 3 else 0
    return rates, pooled


def sliced_pair(tmp: Path, name: str, prepared: str, manifest: dict, teacher: str, cache_dir: str | None,
                sets: list[str], steps: int, every: int, args, threads: int) -> dict:
    """The raykd trial and the plain loop run at the same time but never together: every
    ``args.slice`` seconds one is stopped (SIGSTOP) and the other resumed (SIGCONT), so the host's
    drift (±10–20 % over minutes here) hits both sides alike. Each side's throughput in a slice comes
    from its own per-step end times (raykd: its TensorBoard step events; plain: a step log), steps
    that straddle a switch excluded; each raykd slice is compared with the mean of the plain slices
    on either side of it. The processes left running (Ray's, the raykd trial's controller and data
    actors, this driver) are charged by their CPU use during each side's slices that counted: returned
    as ``others_cores`` per side beside the per-slice ratios and the pooled tokens/s of both sides.
    The plain loop sets itself up meanwhile but takes its first step only once raykd's training
    process exists: it runs at nice 0 and Ray's workers at nice 15, so running beside the trial's
    start-up it would starve it (minutes). The same priorities keep raykd's helpers (nice 15) from
    taking CPU in the plain loop's slices: their work waits for raykd's slices, which pay for it —
    run at nice 15, the plain loop shared its slices with them (0.26–0.32 cores) and measured
    10–25 % slower than raykd."""
    import multiprocessing
    import signal
    import threading

    record = tmp / f"{name}.plain.steps"
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    plain = spawn.Process(
        target=plain_loop, args=(prepared, manifest, teacher, 10 ** 7, 10 ** 7, args.batch_size, args.student_layers,
                                 cache_dir, threads, str(record), go), daemon=True)
    box: dict = {}
    study = threading.Thread(target=lambda: box.update(rows=raykd_study(tmp, name, prepared, teacher, sets)))
    study.start()
    plain.start()
    cls = "ImplicitFunc" if args.local_mode else "RayTrainWorker"
    slices: dict[str, list] = {"plain": [], "raykd": []}
    others: dict[str, list] = {"plain": [], "raykd": []}  # CPU s of every other process in each side's slices
    titles: dict[int, str] = {}
    pid = None
    try:
        deadline = time.time() + 300
        while pid is None and study.is_alive():  # raykd starts alone until its training process exists
            if time.time() > deadline:
                raise SystemExit(f"bench: no live {cls} actor 300 s into {name}")
            time.sleep(1.0)
            pid = _actor_process(cls)
        if pid is None:
            raise SystemExit(f"bench: the raykd study {name} ended before its {cls} process was seen")
        go.set()
        side, pids = "plain", {"plain": plain.pid, "raykd": pid}
        _signal(pid, signal.SIGSTOP)
        t0, c0 = time.time(), _cpu_seconds_by_process(set(pids.values()))
        while study.is_alive():
            study.join(args.slice)
            other = "raykd" if side == "plain" else "plain"
            _signal(pids[side], signal.SIGSTOP)
            t1, c1 = time.time(), _cpu_seconds_by_process(set(pids.values()))
            slices[side].append((t0, t1))
            others[side].append({p: c - c0.get(p, 0.0) for p, c in c1.items() if c > c0.get(p, 0.0)})
            titles.update({p: _process_title(p) for p in others[side][-1] if p not in titles})
            _signal(pids[other], signal.SIGCONT)
            side, t0, c0 = other, time.time(), _cpu_seconds_by_process(set(pids.values()))
    finally:
        _signal(pid, signal.SIGCONT)
        _signal(plain.pid, signal.SIGCONT)
        plain.terminate()
        plain.join(30)
        study.join()
    if "rows" not in box:
        raise SystemExit(f"bench: the raykd study {name} failed")
    trial = sorted((tmp / "exp" / name).glob("trial_*"))[0]
    raykd_steps = _trial_steps(trial)
    lines = [x.split() for x in record.read_text().splitlines() if x.strip()]
    plain_steps = [(i + 1, float(t), float(n)) for i, (t, n) in enumerate(lines)]
    # a raykd step right after an evaluation also spans that evaluation and its report
    r_rates, r_pool = _slice_rates(raykd_steps, slices["raykd"], lambda s: (s - 1) % every == 0)
    p_rates, p_pool = _slice_rates(plain_steps, slices["plain"], lambda s: False)
    ratios = []
    for i, r in enumerate(r_rates):  # plain slice i ran just before raykd slice i, plain slice i+1 just after
        around = [x for x in p_rates[i:i + 2] if x]
        if r and around:
            ratios.append(r / (sum(around) / len(around)))
    if not ratios:
        raise SystemExit(f"bench: no slice of {name} held 3 whole steps of both sides (raise --slice)")
    def cores(side, rates):  # other processes' cores over the slices that counted (start-up ones not)
        used = [(t1 - t0, cpu) for (t0, t1), cpu, r in zip(slices[side], others[side], rates) if r]
        by_pid: dict[int, float] = {}
        for _, cpu in used:
            for p, c in cpu.items():
                by_pid[p] = by_pid.get(p, 0.0) + c
        secs = max(sum(t for t, _ in used), 1e-9)
        top = sorted(by_pid.items(), key=lambda x: -x[1])[:4]
        return sum(by_pid.values()) / secs, [(titles[p], round(c / secs, 3)) for p, c in top]

    r_others, p_others = cores("raykd", r_rates), cores("plain", p_rates)
    return {"ratios": ratios, "raykd_tps": r_pool[0] / r_pool[1], "plain_tps": p_pool[0] / p_pool[1],
            "slices": len(ratios), "raykd_slices": len(slices["raykd"]), "rows": box["rows"][0],
            "rates": {"raykd": r_rates, "plain": p_rates},
            "others_cores": {"raykd": r_others[0], "plain": p_others[0]},
            "others_top": {"raykd": r_others[1], "plain": p_others[1]}}
