"""Teacher domain adaptation, a training stage of its own: continued MLM + question↔answer contrastive
training (an encoder) or continued causal-LM training (a decoder) on a prepared directory's train split.

``python -m raykd adapt --data PREPARED_DIR --out DIR [--from SPEC] [--steps N]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from raykd.atomic import atomic_directory
from raykd.config.schema import AdaptConfig
from raykd.data.shards import load_manifest, shard_paths
from raykd.data.template import causal_template
from raykd.errors import RaykdError
from raykd.models.families import DEFAULT, TeacherShape, arch_family, family_of
from raykd.models.teacher import build_teacher, load_teacher
from raykd.train.engine import Engine, warmup_times_decay


# ------------------------------------------------------------------------------------------ adaptation
@dataclass
class AdaptSettings(AdaptConfig):
    """Domain adaptation: the YAML's ``teacher.adapt`` (``AdaptConfig``: steps, batch size, learning rate, with
    its defaults) and the rest of the stage's settings."""

    warmup: int = 50
    mlm_prob: float = 0.15
    contrastive_weight: float = 1.0
    temperature: float = 0.05
    max_length: int = 128
    seed: int = 0
    threads: int = 0


def _batch(pairs: list, pad_id: int, max_length: int | None, template=None) -> dict:
    """QA pairs of token ids collated as the study collates them (``data.collate``): a templated family's one
    prompt + response sequence per pair, else the two sides apart, each cut to ``max_length`` tokens."""
    from raykd.data.collate import CausalCollate, PairCollate

    if template is not None:
        return CausalCollate(template)({"q_input_ids": [q for q, _ in pairs], "a_input_ids": [a for _, a in pairs]})
    return PairCollate(pad_id)({"q_input_ids": [list(q)[:max_length] for q, _ in pairs],
                                "a_input_ids": [list(a)[:max_length] for _, a in pairs]})


def adapt_teacher(model, pairs: list[tuple[list[int], list[int]]], tok_ids: dict, settings: AdaptSettings,
                  log=print, device: str | torch.device = "cpu", template=None) -> dict:
    """Train ``model`` in place on ``device`` on QA pairs of token ids with its family's adaptation objective
    (``ModelFamily.adaptation_step``: masked_lm, MLM on both sides + in-batch InfoNCE between each question's
    and its answer's masked-mean representations; causal_lm, given ``template``, continued causal-LM training
    on the dialogues). Batches are drawn and corrupted on the CPU with a seeded generator, so any device sees
    the same inputs. Returns the loss history ({term: [value per step]}); the model is left on ``device``."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    g = torch.Generator().manual_seed(settings.seed)
    engine = Engine(model, lr=settings.lr, weight_decay=0.01,
                    schedule=warmup_times_decay(settings.warmup, settings.steps))
    fam = family_of(model)
    model.to(device).train()
    history: dict[str, list[float]] = {}
    t0 = time.monotonic()
    order = torch.randperm(len(pairs), generator=g)
    pos = 0
    for step in range(settings.steps):
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(pairs), generator=g), 0
        idx = order[pos: pos + settings.batch_size].tolist()
        pos += settings.batch_size
        batch = _batch([pairs[i] for i in idx], tok_ids["pad"], settings.max_length, template)
        loss, terms = fam.adaptation_step(model, batch, tok_ids, settings, g, device)
        engine.backward(loss)
        engine.step()
        for name, value in terms.items():
            history.setdefault(name, []).append(float(value.detach()))
        if (step + 1) % 50 == 0 or step + 1 == settings.steps:
            means = " · ".join(f"{k} {sum(v[-50:]) / len(v[-50:]):.3f}" for k, v in history.items())
            log(f"[adapt] step {step + 1}/{settings.steps} · {means} · {time.monotonic() - t0:.0f} s")
    model.eval()
    return history


def _built_family(shape: TeacherShape) -> str:
    """The family ``build_teacher`` builds ``shape`` in when none is named."""
    return (arch_family(shape.arch) if shape.arch else None) or DEFAULT


def _first_set(*ids):
    """The first id that is not None (a WordPiece tokenizer's [CLS] / [SEP] stand in for bos / eos), or None."""
    return next((i for i in ids if i is not None), None)


def adapt_key(manifest_key: str, source: str, shape: TeacherShape | None, settings: AdaptSettings,
              family: str | None = None) -> str:
    """Content hash of an adaptation's inputs and settings (the reuse key). A teacher built from ``shape`` in a
    ``family`` other than the one its architecture (or no architecture) builds by default has the family in
    its key; the keys of the others are what they were before families were named."""
    shape_d = asdict(shape) if shape else None
    if shape_d is not None and shape_d.get("arch") is None:
        del shape_d["arch"]  # the key of an encoder teacher is what it was before architectures were named
    payload = {"data": manifest_key, "from": source, "shape": shape_d,
               "settings": asdict(settings), "version": 1}
    if shape is not None and family is not None and family != _built_family(shape):
        payload["family"] = family
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_adapted(out: str | Path, key: str) -> bool:
    """Whether ``out`` holds the adapted teacher of ``key`` (see ``adapt_key``)."""
    stamp = Path(out).absolute() / "raykd_adapt.json"
    return stamp.exists() and json.loads(stamp.read_text()).get("key") == key and \
        (Path(out).absolute() / "model.safetensors").exists()


def adapt_prepared(prepared_dir: str, out: str, source: str | None = None, shape: TeacherShape | None = None,
                   settings: AdaptSettings | None = None, log=print, device: str = "cpu",
                   family: str | None = None) -> Path:
    """Domain-adapt a teacher on ``device`` on a prepared directory's train split and save it
    (safetensors + tokenizer) to ``out``; returns ``out``. ``source`` is an HF dir / hub id, or None
    to build from ``shape``. Reuses ``out`` when it holds the result of the same inputs and settings;
    writes atomically. ``family`` names a hub ``source``'s family (a directory's config.json says it)."""
    settings = settings or AdaptSettings()
    shape = None if source else (shape or TeacherShape())
    manifest = load_manifest(prepared_dir)
    key = adapt_key(manifest["key"], source or "config", shape, settings, family)
    out_p = Path(out).absolute()
    if is_adapted(out_p, key):
        log(f"[adapt] reusing {out_p} (same data, teacher and settings)")
        return out_p
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(prepared_dir) / manifest["tokenizer"]["path"]))
    t = manifest["tokenizer"]
    tok_ids = {"pad": t["pad_token_id"], "mask": t["mask_token_id"],
               "special": tuple(sorted({i for i in (t["pad_token_id"], t["cls_token_id"], t["sep_token_id"],
                                                    t["mask_token_id"], *tok.all_special_ids) if i is not None}))}
    if source:
        model = load_teacher(source, family=family)
        if model.config.vocab_size < t["vocab_size"]:
            raise RaykdError(f"teacher {source}: vocabulary ({model.config.vocab_size}) is smaller than the prepared "
                             f"tokenizer's ({t['vocab_size']}): the tokenizer does not match this teacher")
    else:
        model = build_teacher(shape, t["vocab_size"], t["pad_token_id"], seed=settings.seed, family=family,
                              bos_token_id=_first_set(tok.bos_token_id, tok.cls_token_id),
                              eos_token_id=_first_set(tok.eos_token_id, tok.sep_token_id))
    template = None
    if family_of(model).spec.template:
        template = causal_template(tok)
    table = pq.read_table(shard_paths(prepared_dir, "train", manifest), columns=["q_input_ids", "a_input_ids"])
    pairs = list(zip(table.column("q_input_ids").to_pylist(), table.column("a_input_ids").to_pylist()))
    log(f"[adapt] {len(pairs):,} train pairs · {settings.steps} steps · batch {settings.batch_size}")
    t0 = time.monotonic()
    history = adapt_teacher(model, pairs, tok_ids, settings, log, device=device, template=template)
    model.to("cpu")
    with atomic_directory(out_p) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "raykd_adapt.json").write_text(json.dumps({
            "key": key, "data": str(Path(prepared_dir).absolute()), "data_key": manifest["key"],
            "from": source or "config", "shape": asdict(shape) if shape else None, "settings": asdict(settings),
            "seconds": time.monotonic() - t0, "device": str(device),
            "final": {k: sum(v[-50:]) / len(v[-50:]) for k, v in history.items()}}, indent=1))
    log(f"[adapt] saved {out_p} in {time.monotonic() - t0:.0f} s")
    return out_p


def main(argv: list[str] | None = None) -> int:
    """``python -m raykd adapt …``; returns the exit code (2 for bad input)."""
    a = argparse.ArgumentParser(prog="python -m raykd adapt", description="domain-adapt a teacher on a prepared directory")
    a.add_argument("--data", required=True, help="prepared directory (python -m raykd.data prepare)")
    a.add_argument("--out", required=True)
    a.add_argument("--from", dest="source", default=None, help="HF dir or hub id (default: build from --layers …)")
    a.add_argument("--steps", type=int, default=AdaptSettings.steps)
    a.add_argument("--batch-size", type=int, default=AdaptSettings.batch_size)
    a.add_argument("--lr", type=float, default=AdaptSettings.lr)
    a.add_argument("--layers", type=int, default=TeacherShape.layers)
    a.add_argument("--hidden", type=int, default=TeacherShape.hidden)
    a.add_argument("--heads", type=int, default=TeacherShape.heads)
    a.add_argument("--intermediate", type=int, default=TeacherShape.intermediate)
    a.add_argument("--seed", type=int, default=0)
    args = a.parse_args(argv)
    try:
        if args.steps < 1:
            raise RaykdError(f"--steps {args.steps}: must be at least 1")
        adapt_prepared(args.data, args.out, args.source,
                       TeacherShape(args.layers, args.hidden, args.heads, args.intermediate),
                       AdaptSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                     threads=os.cpu_count() or 1),
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
