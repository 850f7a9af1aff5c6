#!/usr/bin/env python
"""How far the top-k + tail-bucket divergence is from the full-vocabulary one, on a causal study's
own data and teacher: the (k + 1)-category loss the logit cache gives vs the dense loss, at k = 8, 32,
64, 128 and temperatures 1 and 2, on held-out validation pairs, for the student as cut from the
teacher and after training it with the full-vocabulary forward-KL kd (in this process, the study's
batch size and learning rate, AdamW). Also the teacher's tail mass 1 − Σ_{top k} p.

    python scripts/topk_gap.py [--config search_spaces/causal_topk.yaml] [--steps 300] [--pairs 512]

Needs the study's prepared data and adapted teacher (run the study, or `python -m raykd.cache build`,
once). Ends with one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KS = (8, 32, 64, 128)
TEMPS = (1.0, 2.0)


def _batches(prepared: str, manifest: dict, split: str, template: dict, batch_size: int, limit: int):
    import pyarrow.parquet as pq

    from raykd.data.collate import CausalCollate
    from raykd.data.shards import shard_paths
    from raykd.data.template import CausalTemplate

    t = pq.read_table(shard_paths(prepared, split, manifest), columns=["q_input_ids", "a_input_ids"])
    rows = {c: t.column(c).to_numpy(zero_copy_only=False)[:limit] for c in t.column_names}
    collate = CausalCollate(CausalTemplate.from_dict(template))
    n = len(rows["q_input_ids"])
    return [collate({k: v[i:i + batch_size] for k, v in rows.items()}) for i in range(0, n, batch_size)]


def measure(method, teacher, batches, tokens, vocab: int) -> dict:
    """{T: {"dense": nats, k: (sparse nats, mean teacher tail mass)}} over ``batches``."""
    import torch

    from raykd.distill import losses as L
    from raykd.distill.methods import make_inputs
    from raykd.distill.topk import sparse_divergence, teacher_log_probs, teacher_topk
    from raykd.models.families import family as get_family

    sums: dict = {t: {"dense": 0.0, **{k: [0.0, 0.0] for k in KS}} for t in TEMPS}
    n = 0
    method.eval()
    with torch.no_grad():
        for batch in batches:
            inputs = make_inputs({k: v for k, v in batch.items() if k != "pair_id"}, tokens,
                                 family=get_family("causal_lm"))
            out_t = teacher.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["mask"])
            h_t = out_t.last_hidden_state[inputs["chosen"]]
            head = teacher.get_output_embeddings()
            z_t = (h_t @ head.weight.T)[:, :vocab]
            z_s = method.student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits
            z_s = z_s[inputs["chosen"]][:, :vocab]
            m = z_t.shape[0]
            ids, logp, tails = teacher_topk(h_t, head.weight, head.bias, max(KS), list(TEMPS), vocab=vocab)
            for j, t in enumerate(TEMPS):
                sums[t]["dense"] += m * float(L.forward_kl(z_s, z_t, temperature=t))
                for k in KS:
                    lp = teacher_log_probs(logp, tails[:, j], t, k)
                    sums[t][k][0] += m * float(sparse_divergence("forward_kl", z_s, ids[:, :k], lp, temperature=t))
                    sums[t][k][1] += float(lp[:, -1].exp().sum())
            n += m
    method.train()
    return {t: {"dense": v["dense"] / n, **{k: (v[k][0] / n, v[k][1] / n) for k in KS}} for t, v in sums.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "search_spaces" / "causal_topk.yaml"))
    ap.add_argument("--steps", type=int, default=300, help="full-vocabulary kd steps before the second measurement")
    ap.add_argument("--pairs", type=int, default=512, help="validation pairs measured")
    args = ap.parse_args()
    import torch

    from raykd import config as C

    from raykd.train.engine import Engine
    from raykd.data.shards import load_manifest
    from raykd.distill.methods import TokenIds, build_method, make_inputs
    from raykd.models.families import family as get_family
    from raykd.models.student import build_student
    from raykd.models.teacher import load_teacher
    from raykd.ray_layer.inputs import prepare_inputs

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = C.load_config(args.config, {"space": {}})
    plan = prepare_inputs(cfg)
    if not Path(plan.teacher, "config.json").exists():
        print(f"error: no adapted teacher at {plan.teacher}: run the study (or raykd.cache build) first",
              file=sys.stderr)
        return 2
    manifest = load_manifest(plan.prepared)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    tokens = TokenIds.from_manifest(manifest)
    teacher = load_teacher(plan.teacher, family="causal_lm").eval()
    torch.manual_seed(cfg.experiment.seeds[0])
    method = build_method("kd", build_student(teacher, cfg.student.layers), teacher.config, divergence="forward_kl")
    method.vocab = vocab
    val = _batches(plan.prepared, manifest, "validation", plan.template, 32, args.pairs)
    train = _batches(plan.prepared, manifest, "train", plan.template, cfg.train.batch_size,
                     args.steps * cfg.train.batch_size)
    results = {"init": measure(method, teacher, val, tokens, vocab)}
    engine = Engine(method, lr=cfg.train.lr, clip=None)
    for i, batch in enumerate(train[:args.steps]):
        inputs = make_inputs({k: v for k, v in batch.items() if k != "pair_id"}, tokens, family=get_family("causal_lm"))
        loss = method(inputs, method.teacher_targets(teacher, inputs))["loss"]
        engine.backward(loss)
        engine.step()
        if (i + 1) % 100 == 0:
            print(f"  step {i + 1}: loss {float(loss.detach()):.3f}", flush=True)
    results[f"kd_{args.steps}"] = measure(method, teacher, val, tokens, vocab)
    print(f"\nforward KL, full vocabulary ({vocab:,}) vs top-k + tail bucket, {args.pairs} validation pairs:")
    print(f"{'student':>10} {'T':>4} {'full':>8} " + " ".join(f"{'k=' + str(k):>16}" for k in KS))
    for who, by_t in results.items():
        for t, r in by_t.items():
            cells = " ".join(f"{r[k][0]:.4f} ({r[k][0] / r['dense']:.0%})".rjust(16) for k in KS)
            print(f"{who:>10} {t:>4} {r['dense']:8.4f} {cells}")
    tails = {t: {k: round(results["init"][t][k][1], 4) for k in KS} for t in TEMPS}
    print(f"teacher tail mass 1 − Σ top-k p (mean): {tails}")
    print(json.dumps({"bench": "topk_gap", "vocab": vocab, "pairs": args.pairs, "steps": args.steps,
                      "results": {w: {str(t): {"full": round(r["dense"], 5),
                                               **{str(k): round(r[k][0], 5) for k in KS}} for t, r in by.items()}
                                  for w, by in results.items()},
                      "teacher_tail_mass": {str(t): {str(k): v for k, v in d.items()} for t, d in tails.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
