"""A compare study's pure parts: its contenders (``compare.methods``), each one's search space (its own
declared settings + the shared ``space``), the declared tests and ``comparison.json``. No Ray, no torch:
``raykd.ray_layer.compare`` runs the trials, this module says what they are and what they mean.

The protocol (what a reviewer of a benchmark paper asks for): every contender gets exactly the same
number of tuning trials of the same search algorithm, on the validation lead metric, on a tuning seed
outside ``experiment.seeds``; its best configuration is re-run on every seed of ``experiment.seeds``
(the references beside them, their shared settings tuned with the same budget); then only the
comparisons declared in the YAML before the run (``against`` × ``metrics``) form the Holm family.
Everything else is reported as exploratory.
"""

from __future__ import annotations

import math

from raykd.results.stats import holm, paired_t

# ------------------------------------------------------------------------------------------ tests


def _pairs(a: list, b: list) -> tuple[list, list]:
    keep = [i for i in range(min(len(a), len(b))) if _finite(a[i]) and _finite(b[i])]
    return [a[i] for i in keep], [b[i] for i in keep]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN: strict readers refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _test(a_label: str, b_label: str, metric: str, a: list, b: list) -> dict:
    """One paired comparison (a − b over the seeds both have); ``note`` says why there is no p."""
    x, y = _pairs(a, b)
    r = paired_t(x, y) if x else {"diff": math.nan, "ci": math.nan, "p": math.nan, "n": 0}
    half = r["ci"]
    out = {"a": a_label, "b": b_label, "metric": metric, "n": r["n"], "diff": r["diff"],
           "ci_low": r["diff"] - half if half == half else math.nan,
           "ci_high": r["diff"] + half if half == half else math.nan, "p": r["p"]}
    if not _finite(r["p"]):
        out["note"] = (f"{r['n']} seed(s) with both values: no test" if r["n"] < 2 else
                       "the same difference on every seed (no variance): no t-test")
    return out


def _with_holm(rows: list[dict]) -> list[dict]:
    """Holm over all ``rows`` — a test without a p (too few seeds, no variance) still counts in the
    family, as p = 1 (its own ``p_holm`` stays absent): the family never shrinks below its declared size."""
    adjusted = holm([r["p"] if _finite(r["p"]) else 1.0 for r in rows])
    for r, ph in zip(rows, adjusted):
        r["p_holm"] = ph if _finite(r["p"]) else math.nan
    return rows


def declared_tests(confirm: dict[str, dict[str, list]], against: str, metrics: list[str]) -> list[dict]:
    """The declared family: ``against`` − each other contender on each declared metric, paired by seed
    (position i of every list is seed ``experiment.seeds[i]``), paired t, Holm over exactly these
    |others| × |metrics| tests. Rows {a, b, metric, n, diff, ci_low, ci_high, p, p_holm}."""
    rows = [_test(against, other, m, confirm[against].get(m, []), confirm[other].get(m, []))
            for m in metrics for other in confirm if other != against]
    return _with_holm(rows)


def exploratory_tests(confirm: dict[str, dict[str, list]], against: str, declared: list[str],
                      metrics: list[str], contenders: list[str]) -> list[dict]:
    """Every pair of ``confirm``'s entries (contenders and references) on every one of ``metrics``,
    except the declared family (``against`` vs another contender on a ``declared`` metric):
    exploratory, Holm-adjusted among themselves (never mixed into the declared family). Same rows as
    ``declared_tests``; ``against`` (then the contenders) on the ``a`` side."""
    labels = list(confirm)
    rows = []
    for m in metrics:
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                if m in declared and against in (a, b) and a in contenders and b in contenders:
                    continue
                first, second = (b, a) if b == against else (a, b)  # the declared side first
                rows.append(_test(first, second, m, confirm[first].get(m, []), confirm[second].get(m, [])))
    return _with_holm(rows)


def comparison_doc(*, against: str, metrics: list[str], trials_per_method: int, steps: int, seeds: list,
                   tuning_seed: int, algorithm: str, scheduler: str, methods: dict, references: dict,
                   exploratory_metrics: list[str]) -> dict:
    """``comparison.json``: the declared comparisons, the budget, each contender's tuning and
    confirmation (``methods[label]`` = {method, fixed, tuning_trials, compute_s, best, on_range_edge,
    confirm: {metric: [one value per seed, in order]}}), the references, the declared ``tests`` and the
    ``exploratory`` ones."""
    confirm = {label: m["confirm"] for label, m in methods.items()}
    tests = declared_tests(confirm, against, metrics)
    # exploratory: every other pair, the undeclared metrics, and each contender against the references
    with_refs = {**confirm, **{role: references[role]["confirm"] for role in ("no_distill", "init")
                               if role in references}}
    explore = exploratory_tests(with_refs, against, metrics, list(dict.fromkeys(metrics + exploratory_metrics)),
                                list(confirm))
    return {"declared": {"against": f"method={against}", "metrics": list(metrics)},
            "exploratory_metrics": list(exploratory_metrics),
            "budget": {"trials_per_method": trials_per_method, "steps": steps, "search": algorithm,
                       "scheduler": scheduler, "tuning_seed": tuning_seed, "seeds": list(seeds)},
            "methods": methods, "references": references, "tests": tests, "exploratory": explore}


# ------------------------------------------------------------------------------------------ text


def _num(v, decimals: int = 4) -> str:
    return "—" if not _finite(v) else f"{v:.{decimals}f}"


def _p(v) -> str:
    return "—" if not _finite(v) else (f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}")


def _tests_table(rows: list[dict]) -> list[str]:
    out = ["| a − b | metric | n | diff | 95 % CI | p | p (Holm) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "—" if not _finite(r.get("ci_low")) else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        p = _p(r.get("p")) if _finite(r.get("p")) else f"— ({r.get('note') or 'no test'})"
        out.append(f"| `{r['a']}` − `{r['b']}` | {r['metric']} | {r['n']} | {_num(r.get('diff'))} | {ci} | {p} | "
                   f"{_p(r.get('p_holm'))} |")
    return out


def _settings_text(best: dict, edge: list[str]) -> str:
    shown = []
    for k, v in best.items():
        if k in ("method.name",):
            continue
        short = k.removeprefix("method.params.")
        val = f"{v:.3g}" if isinstance(v, float) else str(v)
        shown.append(f"{short}={val}" + (" ⚠edge" if k in edge else ""))
    return ", ".join(shown) or "—"


def rederive(doc: dict) -> dict:
    """``doc`` with its ``tests`` and ``exploratory`` recomputed from the per-seed values it stores
    (what ``scripts/check_findings.py`` trusts: the rows, never the stored results of the tests)."""
    against = doc["declared"]["against"].split("=", 1)[1]
    metrics = list(doc["declared"]["metrics"])
    confirm = {label: m["confirm"] for label, m in doc["methods"].items()}
    refs = {role: doc["references"][role]["confirm"] for role in ("no_distill", "init") if role in doc["references"]}
    explore_metrics = doc.get("exploratory_metrics") or list(dict.fromkeys(r["metric"] for r in doc["exploratory"]))
    return {**doc, "tests": declared_tests(confirm, against, metrics),
            "exploratory": exploratory_tests({**confirm, **refs}, against, metrics,
                                             list(dict.fromkeys(metrics + explore_metrics)), list(confirm))}


def declared_table(doc: dict) -> list[str]:
    """The declared family as a Markdown table (``a − b``, metric, n, diff, CI, p, Holm p)."""
    return _tests_table(doc["tests"])


def exploratory_table(doc: dict) -> list[str]:
    """The exploratory tests as a Markdown table (same columns as ``declared_table``)."""
    return _tests_table(doc["exploratory"])


def methods_table(doc: dict, metrics: list[str] | None = None) -> list[str]:
    """Each contender and reference: tuned settings (⚠edge flags), tuning trials and compute, and each
    of ``metrics`` (default: the declared ones) as mean ± 95 % t-interval over its seeds (n shown)."""
    from raykd.results.stats import mean_ci

    metrics = list(metrics or doc["declared"]["metrics"])
    md = ["| method | tuned settings (⚠edge: best on the edge of its range) | tuning trials | tuning compute (s) | "
          + " | ".join(metrics) + " |", "|---|---|---|---|" + "---|" * len(metrics)]
    rows = list(doc["methods"].items()) + [(f"({role})", r) for role, r in doc.get("references", {}).items()]
    for label, m in rows:
        cells = []
        for metric in metrics:
            mean, half, n = mean_ci([v for v in m["confirm"].get(metric, []) if _finite(v)])
            cells.append("—" if n == 0 else (f"{mean:.4f}" if half != half else f"{mean:.4f} ± {half:.4f}") + f" (n={n})")
        settings = _settings_text(m.get("best") or {}, m.get("on_range_edge") or []) if "best" in m else "—"
        trials = m.get("tuning_trials", "—")
        compute = f"{m['compute_s']:.0f}" if _finite(m.get("compute_s")) else "—"
        md.append(f"| `{label}` | {settings} | {trials} | {compute} | " + " | ".join(cells) + " |")
    return md


def comparison_markdown(doc: dict) -> list[str]:
    """``comparison.json`` as Markdown lines: the budget, the declared family first (labelled), each
    method's tuned settings (best values on the edge of their range flagged) beside its confirmed
    values, the references, then the exploratory tests (labelled)."""
    b, d = doc["budget"], doc["declared"]
    metrics = list(d["metrics"])
    md = ["## Compare study: equal tuning budget, declared comparisons", "",
          f"Every method: **{b['trials_per_method']} tuning trials** ({b['search']}, scheduler {b['scheduler']}) of "
          f"{b['steps']} steps on the validation metric, tuning seed {b['tuning_seed']}; its best configuration "
          f"confirmed on seeds {b['seeds']}; the reference (no distillation) tuned the same way over the shared "
          "settings.", "",
          f"### Declared comparisons ({d['against']} against each other method on {', '.join(metrics)}; "
          f"fixed before the run, Holm over exactly these {len(doc['tests'])} tests)", ""]
    md += declared_table(doc)
    md += ["", "### Methods: tuned settings and confirmed values (mean ± 95 % CI over seeds)", ""]
    md += methods_table(doc)
    rows = list(doc["methods"].items()) + [(f"({role})", r) for role, r in doc.get("references", {}).items()]
    edges = [f"`{label}`: {', '.join(m['on_range_edge'])}" for label, m in rows if m.get("on_range_edge")]
    if edges:
        md += ["", "**Best values on the edge of their search range** (the range may have cut the optimum off): "
               + "; ".join(edges) + "."]
    md += ["", "### Exploratory (not declared before the run: every other pair, other metrics, the references; "
               "Holm within this table only — hypotheses, not findings)", ""]
    md += exploratory_table(doc)
    return md
