#!/usr/bin/env python3
"""Re-derive every table of a findings file from the rows stored under the repository's docs/findings/,
and check that every figure linked from any Markdown under docs/ exists.

    python scripts/check_findings.py [FINDINGS_MD]        (default docs/findings.md)
    python scripts/check_findings.py --render 'KIND SOURCE [ARGS]'   print the table a marker derives

A table is derived from stored rows when the line before it (blank lines skipped) is a marker
``<!-- table: KIND SOURCE [ARGS] -->``; SOURCE is relative to the repository's docs/ directory:

- ``compare-declared findings/S/comparison.json``: the declared family, its tests recomputed from the
  per-seed values (paired t, Holm over exactly the declared tests), never read from the stored tests;
- ``compare-exploratory findings/S/comparison.json``: the exploratory tests, recomputed the same way;
- ``compare-methods findings/S/comparison.json [METRIC,METRIC…]``: each method's tuned settings and
  its metrics as mean ± 95 % t-interval over the seeds;
- ``rows findings/S/rows.csv group=COL[,COL] metrics=COL:DECIMALS[,…] [where=COL=VALUE]``: rows of a
  results.csv grouped, each metric as mean ± 95 % t-interval (n shown).

Every cell is compared as printed; a table without a marker may hold no ``mean ± half-width`` cell.
Exits 1 naming the table, row, column and both values on the first mismatches (all are listed), 0
when everything is re-derived. Needs no Ray, deterministic, a few seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(REPO))

MARKER = re.compile(r"<!--\s*table:\s*(.+?)\s*-->")
MEAN_PM = re.compile(r"-?\d+(\.\d+)?\s*±\s*\d")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


class Mismatch(Exception):
    pass


# ------------------------------------------------------------------------------------------ derive
def derive(spec: str) -> list[str]:
    """The Markdown table lines a marker's ``KIND SOURCE [ARGS]`` derives from the stored rows."""
    from raykd.results import comparison as K

    parts = spec.split()
    if len(parts) < 2:
        raise Mismatch(f"marker {spec!r}: expected KIND SOURCE [ARGS]")
    kind, source, args = parts[0], DOCS / parts[1], parts[2:]
    if not source.exists():
        raise Mismatch(f"marker {spec!r}: {source} does not exist")
    if kind.startswith("compare-"):
        doc = K.rederive(json.loads(source.read_text(encoding="utf-8")))
        if kind == "compare-declared":
            return K.declared_table(doc)
        if kind == "compare-exploratory":
            return K.exploratory_table(doc)
        if kind == "compare-methods":
            return K.methods_table(doc, args[0].split(",") if args else None)
    if kind == "rows":
        return rows_table(source, dict(a.split("=", 1) for a in args))
    raise Mismatch(f"marker {spec!r}: unknown kind {kind!r} (compare-declared, compare-exploratory, "
                   "compare-methods, rows)")


def rows_table(path: Path, opts: dict) -> list[str]:
    """Rows of a CSV grouped by ``group`` (first appearance order), ``metrics`` as mean ± 95 % t-interval."""
    from raykd.results.stats import mean_ci

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if "where" in opts:
        col, _, value = opts["where"].partition("=")
        rows = [r for r in rows if r.get(col) == value]
    group = opts.get("group", "").split(",") if opts.get("group") else []
    metrics = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else 3) for m in opts["metrics"].split(",")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(g, "") for g in group), []).append(r)
    lines = ["| " + " | ".join(group + ["n"] + [m for m, _ in metrics]) + " |",
             "|" + "---|" * (len(group) + 1 + len(metrics))]
    for key, rs in groups.items():
        cells = list(key) + [str(len(rs))]
        for m, dec in metrics:
            vals = [float(r[m]) for r in rs if r.get(m) not in (None, "")]
            mean, half, n = mean_ci(vals)
            cells.append("—" if n == 0 else (f"{mean:.{dec}f}" if half != half else f"{mean:.{dec}f} ± {half:.{dec}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------ compare
def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[tuple[int, str | None, list[str]]]:
    """(first line number, marker spec or None, table lines) of every Markdown table in ``text``."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and (i == 0 or not lines[i - 1].lstrip().startswith("|")):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = MARKER.search(lines[k]) if k >= 0 else None
            out.append((i + 1, m.group(1) if m else None, lines[i:j]))
            i = j
        else:
            i += 1
    return out


def compare_table(where: str, have: list[str], want: list[str]) -> list[str]:
    """Differences between a table as written and as derived: 'row R (first cell), column C: …'."""
    problems = []
    hc, wc = [cells(x) for x in have], [cells(x) for x in want]
    if hc[:1] != wc[:1]:
        problems.append(f"{where}: header {hc[:1]} differs from the derived {wc[:1]}")
        return problems
    head = wc[0]
    body_h, body_w = hc[2:], wc[2:]
    if len(body_h) != len(body_w):
        problems.append(f"{where}: {len(body_h)} rows, the stored rows give {len(body_w)}")
    for r, (h, w) in enumerate(zip(body_h, body_w), start=1):
        for c, (a, b) in enumerate(zip(h, w)):
            if a != b:
                problems.append(f"{where}: row {r} ({w[0]}), column {head[c]!r}: has {a!r}, the rows give {b!r}")
        if len(h) != len(w):
            problems.append(f"{where}: row {r} ({w[0]}) has {len(h)} cells, the derived row {len(w)}")
    return problems


def check_findings(md: Path) -> list[str]:
    problems = []
    for line, spec, lines in tables(md.read_text(encoding="utf-8")):
        where = f"{md.name}: table at line {line}" + (f" ({spec})" if spec else "")
        if spec is None:
            bad = [c for x in lines for c in cells(x) if MEAN_PM.search(c)]
            if bad:
                problems.append(f"{where}: has no <!-- table: … --> source but holds mean ± half-width cells "
                                f"(e.g. {bad[0]!r}): every such number must be derived from stored rows")
            continue
        try:
            problems += compare_table(where, lines, derive(spec))
        except Mismatch as e:
            problems.append(f"{where}: {e}")
    return problems


def check_figures(root: Path = DOCS) -> list[str]:
    """Every image / figure file linked from a Markdown file under ``root`` exists."""
    problems = []
    for md in sorted(root.rglob("*.md")):
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("#") or not target.lower().endswith((".png", ".svg", ".jpg", ".jpeg")):
                continue
            if not (md.parent / target.split("#")[0]).exists():
                problems.append(f"{md.relative_to(root.parent)}: links {target}, which does not exist")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("findings", nargs="?", default=str(DOCS / "findings.md"))
    ap.add_argument("--render", metavar="SPEC", help="print the table a marker derives and exit")
    args = ap.parse_args(argv)
    if args.render:
        print("\n".join(derive(args.render)))
        return 0
    md = Path(args.findings)
    if not md.exists():
        print(f"error: {md}: no such file", file=sys.stderr)
        return 2
    problems = check_findings(md) + check_figures()
    for p in problems:
        print(p)
    n = len(tables(md.read_text(encoding="utf-8")))
    print(f"check_findings: {n} tables in {md}, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
