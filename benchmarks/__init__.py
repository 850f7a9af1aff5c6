"""raykd benchmarks, one module per benchmark; each registers its own options (``HELP``, ``add_arguments``)
and ``bench_<name>(args)`` prints its side-by-side figures and returns them as a dict (one JSON line).
``main`` only dispatches: ``python -m raykd bench NAME`` or ``python scripts/bench.py NAME``."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from pathlib import Path


def benchmark_names() -> list[str]:
    """The modules of this package that are benchmarks (they define ``add_arguments`` and ``bench_<name>``)."""
    names = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        mod = importlib.import_module(f"benchmarks.{info.name}")
        if hasattr(mod, "add_arguments") and hasattr(mod, f"bench_{info.name}"):
            names.append(info.name)
    return names


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (each benchmark's own options), run the benchmark, print its figures as one JSON line;
    returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m raykd bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in benchmark_names():
        mod = importlib.import_module(f"benchmarks.{name}")
        mod.add_arguments(sub.add_parser(name, help=mod.HELP))
    args = ap.parse_args(argv)
    result = getattr(importlib.import_module(f"benchmarks.{args.cmd}"), f"bench_{args.cmd}")(args)
    print(json.dumps(result))
    return 0
