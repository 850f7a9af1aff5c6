"""R: ``python -m raykd.cache build`` — prepare a study's inputs and build its teacher-output cache
(see ``raykd.ray_layer.cache.masked_lm``; causal teachers ``raykd.ray_layer.cache.causal_lm``) ahead of the study,
on a local Ray or ``--address``. With ``teacher.cache: none`` it builds what the study's trials would read.
``import`` / ``export`` move a causal teacher's top-k log-probs between raykd's cache and the layouts other
projects write (``raykd.data.logprob_import``; on the driver, or its files spread over Ray Data actors with
``--workers``).

    python -m raykd.cache build --config search_spaces/depth.yaml [--set key=value ...] [--max-gb G]
    python -m raykd.cache import --format axolotl|distillkit|raykd --from PATH --config X.yaml [--temperature T]
                                 [--renormalized] [--alignment next|current] [--strict] [--workers N]
                                 [--compression DISTILLKIT_CONFIG.json|yaml]
    python -m raykd.cache export --format axolotl --from CACHE_DIR --to OUT --config X.yaml [--temperature T]
"""

from __future__ import annotations

import argparse
import sys

from raykd import config as C
from raykd.errors import RaykdError
from raykd.ray_layer.cluster import init_ray
from raykd.ray_layer.inputs import complete_inputs, log, prepare_inputs, teacher_cache_for


def main(argv: list[str] | None = None) -> int:
    """``python -m raykd.cache build``: prepare the study's inputs and build its teacher cache; exit 0,
    or 2 with a message on bad input / a cache above the size limit."""
    ap = argparse.ArgumentParser(prog="python -m raykd.cache", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="run the teacher once over the train split and store what the study's trials read "
                       "(hidden states; a causal teacher's top-k logits with teacher.cache logits/both)")
    b.add_argument("--config", required=True, help="search-space YAML")
    b.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    b.add_argument("--max-gb", type=float, default=None, help="size limit (default teacher.cache_max_gb)")
    b.add_argument("--address", default=None, help="an existing Ray cluster (default: a local one)")
    _transfer_parsers(sub)
    args = ap.parse_args(argv)
    if args.cmd in ("import", "export"):
        return _transfer(args)
    try:
        cfg = C.load_config(args.config, C.parse_set(args.set))
        plan = prepare_inputs(cfg)
        ray, started = init_ray(args.address)
        try:
            complete_inputs(cfg, plan)
            cache = teacher_cache_for(cfg, plan, force=True, max_gb=args.max_gb)
        finally:
            if started:
                ray.shutdown()
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if cache is None:
        return 0  # teacher_cache_for said why: no trial of this study can read a cache
    held = ([f"layers {cache['layers']}"] if cache["layers"] else []) + \
        ([f"top-{cache['topk']} logits at T = {cache['temperatures']}"] if cache.get("topk") else [])
    log(f"[cache] ready: {cache['dir']} ({', '.join(held)})")
    print(cache["dir"])
    return 0


def _transfer_parsers(sub) -> None:
    """The ``import`` and ``export`` subcommands."""
    from raykd.data.logprob_import import FORMATS

    i = sub.add_parser("import", help="turn a top-k log-prob dataset made elsewhere into the study's logit cache "
                       f"(formats: {', '.join(FORMATS)})")
    i.add_argument("--format", required=True, choices=FORMATS,
                   help="axolotl: KD rows (input_ids, target_token_ids, target_logprobs[, target_mask]; raw v2: "
                        "logprobs); distillkit: raw rows (input_ids, token_ids, top_values) or compressed ones "
                        "(compressed_logprobs, bytepacked_indices: with --compression); raykd: a raykd cache")
    i.add_argument("--from", dest="source", required=True, help="a Parquet / JSONL file, a folder of them, an HF "
                   "save_to_disk folder, or (raykd) a cache directory")
    e = sub.add_parser("export", help="write a study's causal logit cache in another project's layout")
    e.add_argument("--format", required=True, choices=("axolotl",))
    e.add_argument("--from", dest="source", required=True, help="the raykd cache directory")
    e.add_argument("--to", required=True, help="the output directory (made atomically)")
    for p in (i, e):
        p.add_argument("--config", required=True, help="the study's YAML (its prepared data and template)")
        p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
        p.add_argument("--temperature", type=float, default=None,
                       help="import: the temperature the source's log-probs were made at (default 1; exact only "
                            "there); export: which cached temperature to write (default the cache's first)")
    i.add_argument("--renormalized", action="store_true", help="the source's top-k was renormalised to mass 1 "
                   "(axolotl's prepared rows): the tail bucket is stored empty, an approximation")
    i.add_argument("--alignment", choices=("next", "current"), default="next",
                   help="axolotl prepared rows: row j over token j + 1 (axolotl > 0.18, default) or over token j")
    i.add_argument("--strict", action="store_true", help="any unmatched source row or train pair is an error")
    i.add_argument("--compression", default=None, metavar="FILE", help="DistillKit's DistributionQuantizationConfig "
                   "as JSON/YAML (its teacher.logprob_compressor block), needed for compressed rows "
                   "(compressed_logprobs / bytepacked_indices); only with --format distillkit")
    i.add_argument("--workers", type=int, default=0, help="convert the source's files on this many Ray Data actors "
                   "(a local Ray, or --address); 0: one after the other on the driver, no Ray (default)")
    i.add_argument("--address", default=None, help="an existing Ray cluster for --workers")


def _transfer(args) -> int:
    """``import`` / ``export``: exit 0 printing the directory written, or 2 with one ``error:`` line."""
    from raykd.config.tokenizers import tokenizer_mismatch
    from raykd.data import logprob_import as I
    from raykd.data.shards import load_manifest
    from raykd.data.template import CausalTemplate
    from raykd.models.families import family_spec
    from raykd.ray_layer.cache.builder import cache_dir_for

    try:
        compression = _compression(args)
        # the study's config may already name the cache this makes (teacher.cache_import): not read here
        cfg = C.load_config(args.config, C.parse_set([*args.set, "teacher.cache_import=null"]))
        if not family_spec(cfg.teacher.family).template:
            raise RaykdError(f"{args.config}: teacher.family {cfg.teacher.family}: top-k next-token log-probs are a "
                             "causal teacher's (a family with a prompt/response template)")
        if tokenizer_mismatch(cfg) is not None:
            raise RaykdError(f"{args.config}: teacher.tokenizer differs from the data's: a top-k log-prob cache compares "
                             "one vocabulary entry by entry, which a cross-tokenizer objective (uld, gold) never reads")
        plan = prepare_inputs(cfg)
        manifest = load_manifest(plan.prepared)
        template = CausalTemplate.from_dict(plan.template)
        if args.cmd == "export":
            I.export_axolotl(args.source, plan.prepared, manifest, template, args.to, args.temperature, log=log)
            print(args.to)
            return 0
        settings = I.ImportSettings(args.format, args.source, temperature=args.temperature or 1.0,
                                    renormalized=args.renormalized, alignment=args.alignment, strict=args.strict,
                                    compression=compression)
        files = I.source_files(settings.source, settings.format)
        key = I.import_key(settings, files, manifest, plan.template, int(manifest["tokenizer"]["vocab_size"]))
        out = cache_dir_for(plan.prepared, f"imported-{key}")
        if args.workers > 0:
            from raykd.ray_layer.cache.importer import ray_data_mapper

            ray, started = init_ray(args.address)
            try:
                I.import_logprobs(settings, plan.prepared, manifest, template, out, log=log,
                                  map_files=ray_data_mapper(args.workers))
            finally:
                if started:
                    ray.shutdown()
        else:
            I.import_logprobs(settings, plan.prepared, manifest, template, out, log=log)
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(out)
    return 0


def _compression(args):
    """``import --compression FILE``: DistillKit's compression config (None without the flag); RaykdError
    with another ``--format`` or a bad file — before the study's data is prepared."""
    path = getattr(args, "compression", None)
    if path is None:
        return None
    if args.format != "distillkit":
        raise RaykdError(f"--compression: only with --format distillkit (not {args.format})")
    from raykd.data.distillkit_compressed import load_compression_config

    return load_compression_config(path)


if __name__ == "__main__":
    sys.exit(main())
