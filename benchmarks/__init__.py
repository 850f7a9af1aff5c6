"""raykd benchmarks, one module per benchmark (``scripts/bench.py SUB`` is the entry). Each
``bench_<name>(args)`` prints its side-by-side figures and returns them as a dict (one JSON line)."""
