"""``bench.py idle``: what idle Ray worker processes cost a training trial (on/off windows)."""

from __future__ import annotations

import os
import time

from benchmarks.common import median, start_ray

HELP = "what idle Ray worker processes cost a training trial (on/off windows)"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench idle --help``)."""
    p.add_argument("--idle", type=int, default=5, help="idle 0-CPU actors started in the 'with' windows")
    p.add_argument("--window", type=float, default=20.0, help="seconds per window (--quick 10)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds (median reported; --quick 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (default: one per core)")
    p.add_argument("--quick", action="store_true")


def bench_idle(args) -> dict:
    """What idle Ray worker processes cost a training trial on this machine. A 1-CPU actor (a Ray
    worker at Ray's niceness, as a local-mode trial is) trains the anchors' kd_task step (a 2-layer
    BERT student against an 8-layer teacher's hidden states, width 128, batch 32 × 64) with
    ``--threads`` torch threads in a background thread (as Tune runs a trial function) and logs each
    step's end; the driver starts ``--idle`` idle 0-CPU actors, waits ``--window`` s, kills them,
    waits ``--window`` s again — the order alternating round by round. Every Ray worker process, idle
    or not, wakes ~100 times a second (its task loop's 10 ms signal check), and on a host whose every
    core trains each wake-up preempts a training thread. Returns ``ratio`` = median over rounds of
    the step rate with the idle actors ÷ without, and ``cost_per_process`` = (1 − ratio) ÷ ``--idle``."""
    import threading

    import torch

    from raykd.train.engine import Engine

    if args.idle < 1 or args.window <= 0 or args.rounds < 1:
        raise SystemExit(f"bench idle: --idle ≥ 1, --window > 0 and --rounds ≥ 1 "
                         f"(got {args.idle}, {args.window}, {args.rounds})")
    rounds, window = (4, 10.0) if args.quick else (args.rounds, args.window)
    threads = args.threads or os.cpu_count() or 1
    ray_, init_s = start_ray(os.cpu_count())

    @ray_.remote(num_cpus=1)
    class Trainer:
        def __init__(self, threads: int):
            from transformers import BertConfig, BertModel

            torch.set_num_threads(threads)
            torch.manual_seed(0)
            shape = dict(vocab_size=8000, hidden_size=128, num_attention_heads=4, intermediate_size=512)
            self.teacher = BertModel(BertConfig(num_hidden_layers=8, **shape), add_pooling_layer=False).eval()
            self.student = BertModel(BertConfig(num_hidden_layers=2, **shape), add_pooling_layer=False)
            self.engine = Engine(self.student, lr=1e-4, clip=None)
            self.ids = torch.randint(1, 8000, (32, 64))
            self.ends: list[float] = []
            self.stop = False

        def start(self) -> None:
            def loop():
                while not self.stop:  # the anchors' kd_task step: student layers 1, 2 → teacher layers 4, 8
                    with torch.no_grad():
                        t = self.teacher(self.ids, output_hidden_states=True).hidden_states
                    s = self.student(self.ids, output_hidden_states=True).hidden_states
                    loss = (torch.nn.functional.mse_loss(s[1], t[4]) + torch.nn.functional.mse_loss(s[2], t[8])) / 2
                    self.engine.backward(loss)
                    self.engine.step()
                    self.ends.append(time.time())
            threading.Thread(target=loop, daemon=True).start()

        def finish(self) -> list[float]:
            self.stop = True
            return self.ends

    @ray_.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    trainer = Trainer.remote(threads)
    ray_.get(trainer.start.remote())
    time.sleep(5)  # past the first steps' allocations
    windows = []
    try:
        for r in range(rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                idle = [Idle.remote() for _ in range(args.idle if on else 0)]
                ray_.get([a.pid.remote() for a in idle])
                time.sleep(2)  # their start-up is not part of the window
                t0 = time.time()
                time.sleep(window)
                windows.append((on, t0, time.time()))
                for a in idle:
                    ray_.kill(a)
                time.sleep(1)
                print(f"[idle] round {r + 1}/{rounds}: {'with' if on else 'without'} {args.idle} idle actors",
                      flush=True)
        ends = ray_.get(trainer.finish.remote())
    finally:
        ray_.shutdown()

    def rate(t0, t1):  # steps/s from the step ends inside the window
        xs = [t for t in ends if t0 <= t <= t1]
        if len(xs) < 3:
            raise SystemExit(f"bench idle: {len(xs)} steps in a {t1 - t0:.0f} s window (raise --window)")
        return (len(xs) - 1) / (xs[-1] - xs[0])

    with_idle = [rate(a, b) for on, a, b in windows if on]
    without = [rate(a, b) for on, a, b in windows if not on]
    ratios = [a / b for a, b in zip(with_idle, without)]
    med = median(ratios)
    print(f"steps/s without idle actors {', '.join(f'{x:.2f}' for x in without)}; with {args.idle} "
          f"{', '.join(f'{x:.2f}' for x in with_idle)}; ratio per round {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"{args.idle} idle Ray worker processes: training at {med:.3f} × its speed without them "
          f"({100 * (1 - med) / args.idle:.2f} % each; {threads} torch threads, {os.cpu_count()} cores, "
          f"Ray start {init_s:.1f} s)")
    return {"bench": "idle", "ratio": round(med, 4), "cost_per_process": round((1 - med) / args.idle, 5),
            "idle_actors": args.idle, "ratios": [round(x, 4) for x in ratios], "threads": threads,
            "window_s": window, "rounds": rounds, "cores": os.cpu_count()}
