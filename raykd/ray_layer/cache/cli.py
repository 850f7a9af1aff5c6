"""R: ``python -m raykd.cache build`` — prepare a study's inputs and build its teacher-output cache
(see ``raykd.ray_layer.cache.masked_lm``; causal teachers ``raykd.ray_layer.cache.causal_lm``) ahead of the study,
on a local Ray or ``--address``. With ``teacher.cache: none`` it builds what the study's trials would read.

    python -m raykd.cache build --config search_spaces/depth.yaml [--set key=value ...] [--max-gb G]
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
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
