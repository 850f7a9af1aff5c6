"""``bench.py kdloss``: peak memory and time of the chunked KD loss vs the naive one (forward + backward)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import median

ROOT = Path(__file__).resolve().parents[1]

HELP = "chunked vs naive KD loss: peak memory and time, forward + backward"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench kdloss --help``)."""
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256, help="tokens per chunk of the chunked loss")
    p.add_argument("--divergence", default="forward_kl")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each side a fresh process (median)")
    p.add_argument("--quick", action="store_true", help="1,024 tokens, 3 rounds")


def bench_kdloss(args) -> dict:
    """The chunked KD loss (``raykd.distill.chunked``) against the naive one — logits of both models
    materialised, ``losses.divergence`` on them — at vocabulary ``--vocab`` (151,936: Qwen's), hidden
    ``--hidden`` (896: a 0.5B-class head), ``--tokens`` tokens, on this machine's device, forward +
    backward. Each side runs in a fresh subprocess, the sides alternating round by round; peak memory
    = the process's peak RSS (CUDA: peak allocated) during the loss's forward + backward minus its
    RSS once the inputs (hidden states, heads) exist. Returns the medians over ``--rounds`` and
    ``memory_ratio`` = chunked ÷ naive peak (goal ≤ 0.25), ``time_ratio`` = chunked ÷ naive seconds
    (goal ≤ 1.25)."""
    rounds = 3 if args.quick else args.rounds
    tokens = 1024 if args.quick else args.tokens
    sides = {"naive": [], "chunked": []}
    for r in range(rounds):
        for side in (("naive", "chunked") if r % 2 == 0 else ("chunked", "naive")):
            cmd = [sys.executable, "-m", "benchmarks.kdloss", side, str(args.vocab), str(args.hidden), str(tokens),
                   str(args.chunk), args.divergence, args.device]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=1800,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if res.returncode != 0:
                raise SystemExit(f"bench kdloss: the {side} side failed:\n{res.stderr[-3000:]}")
            m = json.loads(res.stdout.strip().splitlines()[-1])
            sides[side].append(m)
            print(f"[kdloss] round {r + 1}/{rounds} {side}: {m['seconds']:.3f} s, peak +{m['peak_mib']:.0f} MiB "
                  f"(loss {m['loss']:.6f})", file=sys.stderr, flush=True)
    med = {s: {k: median([m[k] for m in ms]) for k in ("seconds", "peak_mib")} for s, ms in sides.items()}
    loss_gap = max(abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12)
                   for a, b in zip(sides["chunked"], sides["naive"]))
    return {"bench": "kdloss", "device": args.device, "vocab": args.vocab, "hidden": args.hidden, "tokens": tokens,
            "chunk_tokens": args.chunk, "divergence": args.divergence, "rounds": rounds,
            "naive_s": med["naive"]["seconds"], "chunked_s": med["chunked"]["seconds"],
            "naive_peak_mib": med["naive"]["peak_mib"], "chunked_peak_mib": med["chunked"]["peak_mib"],
            "memory_ratio": med["chunked"]["peak_mib"] / med["naive"]["peak_mib"],
            "time_ratio": med["chunked"]["seconds"] / med["naive"]["seconds"],
            "time_ratio_per_round": [c["seconds"] / n["seconds"] for c, n in zip(sides["chunked"], sides["naive"])],
            "loss_relative_gap": loss_gap}


class PeakRSS:
    """The process's peak resident memory while it runs, sampled every millisecond by a thread (and
    ``ru_maxrss`` when it rose above the start), in MiB."""

    def __enter__(self):
        import threading

        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.start = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        import time

        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        import resource

        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        self.mib = (self.peak - self.start) / 2**20


def _side(side: str, vocab: int, hidden: int, tokens: int, chunk: int, divergence: str, device: str) -> dict:
    """One side in this process: inputs, then forward + backward of the loss, timed and measured."""
    import time

    import torch

    from raykd.distill import losses as L
    from raykd.distill.chunked import chunked_divergence

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(device)
    h_s = torch.randn(tokens, hidden, device=dev, requires_grad=True)
    w_s = (torch.randn(vocab, hidden, device=dev) * 0.02).requires_grad_(True)
    h_t = torch.randn(tokens, hidden, device=dev)
    w_t = torch.randn(vocab, hidden, device=dev) * 0.02
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        t = time.perf_counter()
        if side == "naive":
            loss = L.divergence(divergence, h_s @ w_s.T, h_t @ w_t.T, temperature=1.0)
        else:
            loss = chunked_divergence(h_s, w_s, h_t, w_t, divergence=divergence, chunk_tokens=chunk)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else rss.mib
    return {"side": side, "seconds": seconds, "peak_mib": peak, "loss": float(loss)}


if __name__ == "__main__":
    side, vocab, hidden, tokens, chunk, divergence, device = sys.argv[1:8]
    print(json.dumps(_side(side, int(vocab), int(hidden), int(tokens), int(chunk), divergence, device)))
