"""``python -m raykd <verb> …`` — the one command line. ``python -m raykd --help`` lists the verbs; each verb's
``--help`` its options. ``python -m raykd.data|tune|cache|report|export`` keep working (the same code).

    prepare   raw MedDialog (txt / JSON / HF dataset) → tokenized Parquet shards   (raykd.data)
    synth     write the generated corpus in the raw txt format                     (raykd.data)
    adapt     domain-adapt a teacher on a prepared directory                      (raykd.stages.adapt)
    cache     build a study's teacher-output cache on Ray Data                    (raykd.ray_layer.cache.cli)
    tune      run a study: search, confirm, references, compare                   (raykd.ray_layer.tune)
    report    an experiment directory → tables, tests, figures                    (raykd.results.report)
    export    the chosen student → a plain Hugging Face model                     (raykd.results.export)
    bench     the benchmarks of a raykd checkout (its benchmarks/ folder)          (benchmarks)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# verb → (module, argv prefix, one line of help); a verb's module is imported only when it runs
VERBS = {
    "prepare": ("raykd.data.__main__", ["prepare"], "raw MedDialog → tokenized Parquet shards + manifest"),
    "synth": ("raykd.data.__main__", ["synth"], "write the generated corpus in the raw txt format"),
    "adapt": ("raykd.stages.adapt", [], "domain-adapt a teacher on a prepared directory"),
    "cache": ("raykd.ray_layer.cache.cli", [], "build a study's teacher-output cache (Ray Data)"),
    "tune": ("raykd.ray_layer.tune", [], "run a study (search, confirm, references, compare)"),
    "report": ("raykd.results.report", [], "an experiment directory → tables, tests and figures"),
    "export": ("raykd.results.export", [], "the chosen student → a plain Hugging Face model"),
    "bench": ("benchmarks", [], "the benchmarks of a raykd checkout (python -m raykd bench --help)"),
}


def usage() -> str:
    """The top-level help text: every verb with its line."""
    lines = ["usage: python -m raykd <verb> [options]   (python -m raykd <verb> --help for a verb's options)", "",
             "verbs:"]
    lines += [f"  {verb:<8}  {text}" for verb, (_, _, text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its verb's ``main``; returns the exit code (2 for an
    unknown verb)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, prefix, _ = VERBS[verb]
    if module == "benchmarks":
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "benchmarks" / "__init__.py").exists():
            print(f"error: bench needs a raykd checkout (no benchmarks/ beside {checkout / 'raykd'})", file=sys.stderr)
            return 2
        sys.path.insert(0, str(checkout))
    return importlib.import_module(module).main(prefix + rest)


if __name__ == "__main__":
    sys.exit(main())
