"""``bench.py student``: teacher vs student latency (24 → 6 layers) and retained MRR@10."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks.common import BENCH_BASE, ROOT, median, start_ray

HELP = "teacher vs student latency (24 → 6 layers) and retained MRR@10"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench student --help``)."""
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--pairs", type=int, default=5, help="alternating teacher/student rounds (median reported)")
    p.add_argument("--repeats", type=int, default=30, help="timed forward passes per round and batch size (median)")
    p.add_argument("--quick", action="store_true")


def bench_student(args) -> dict:
    """Inference latency of a 24-layer teacher vs the 6-layer student built from it (same width) at
    batch 1 and 32 (alternating, median of ``--pairs``), and the retained QA-retrieval quality
    (student ÷ teacher MRR@10 on test) of the best trial of a short raykd search."""
    import torch

    from raykd.metrics import representation as metrics
    from raykd.models.student import build_student
    from raykd.models.teacher import TeacherShape, build_teacher

    torch.set_num_threads(os.cpu_count() or 1)
    teacher = build_teacher(TeacherShape(24, args.hidden, args.heads, 4 * args.hidden, 512), 8000).eval()
    student = build_student(teacher, 6).eval()
    lat: dict[str, list[dict]] = {"teacher": [], "student": []}
    for r in range(args.pairs):
        for who in (("teacher", "student") if r % 2 == 0 else ("student", "teacher")):
            model = teacher.base_model if who == "teacher" else student.mlm.base_model  # encoders alone
            lat[who].append(metrics.efficiency(model, (1, 32), args.seq_len, repeats=args.repeats))
    out = {"bench": "student", "hidden": args.hidden, "seq_len": args.seq_len, "pairs": args.pairs,
           "repeats": args.repeats}
    for b in (1, 32):
        t = median([x[f"latency_ms_b{b}"] for x in lat["teacher"]])
        s_ = median([x[f"latency_ms_b{b}"] for x in lat["student"]])
        out[f"teacher_ms_b{b}"], out[f"student_ms_b{b}"] = round(t, 3), round(s_, 3)
        out[f"speedup_b{b}"] = round(t / s_, 3)
    out["teacher_params"], out["student_params"] = lat["teacher"][0]["params"], lat["student"][0]["params"]
    print(f"24 → 6 layers, hidden {args.hidden}, length {args.seq_len}: speedup {out['speedup_b1']:.2f}× at batch 1, "
          f"{out['speedup_b32']:.2f}× at batch 32 (ms/sample teacher {out['teacher_ms_b32']:.2f}, student "
          f"{out['student_ms_b32']:.2f}); params {out['teacher_params']:,} → {out['student_params']:,}")
    from raykd.ray_layer.tune import main as tune_main

    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        ray, _ = start_ray()
        samples = 3 if args.quick else 6
        rc = tune_main(["--config", str(ROOT / "search_spaces" / "smoke.yaml"), "--storage", str(tmp / "exp"),
                        "--name", "student", "--set", f"data.work_dir={tmp / 'work'}", f"search.num_samples={samples}",
                        f"train.steps={60 if args.quick else 120}", f"train.eval_every={30 if args.quick else 40}",
                        "teacher.cache=true", *BENCH_BASE, "train.local_mode=true"])
        ray.shutdown()
        if rc != 0:
            raise SystemExit(f"bench: the search failed (exit {rc})")
        finals = []
        for d in (tmp / "exp" / "student").glob("trial_*"):
            rows = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip()]
            if rows and "test/retained_mrr" in rows[-1]:
                finals.append(rows[-1])
    best = max(finals, key=lambda r: r["val/semantic_alignment"])
    out.update({"retained": round(best["test/retained_mrr"], 4), "student_mrr10": round(best["test/mrr@10"], 4),
                "teacher_mrr10": round(best["test/teacher_mrr@10"], 4), "search_trials": samples})
    print(f"best of {samples} trials (by val/semantic_alignment): test MRR@10 student {best['test/mrr@10']:.4f} ÷ "
          f"teacher {best['test/teacher_mrr@10']:.4f} = retained {best['test/retained_mrr']:.3f}")
    return out
