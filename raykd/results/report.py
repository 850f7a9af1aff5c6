"""R: ``python -m raykd.report EXPERIMENT_DIR [--out DIR]`` — an experiment as the paper's table and
figures, and which distillation choices matter.

Reads Tune's own files (``experiment_state-*.json``, each trial's ``result.json`` / ``params.json``
/ ``error.txt`` / ``provenance.json``), so it works on a running or interrupted experiment and says
what is not finished. Writes into ``--out`` (default ``EXPERIMENT_DIR/report``):

- ``results.csv``: one row per trial (counted by trial id, not by directory).
- ``table.md``: finished trials grouped by the varied parameters, test-split metrics as
  mean ± 95 % CI over seeds (Student's t, n − 1 df; n shown); the parameter importance of a search
  (Optuna's fANOVA on the validation metric); paired differences between configurations over shared
  seeds with Holm's correction.
- ``fig_<param>_vs_<metric>.png``: each varied parameter against each metric with 95 % CI bars.

Test numbers appear once per configuration; nothing here selects on them (selection is validation).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from raykd.errors import RaykdError
from raykd.models.families.spec import DEFAULT, FamilySpec, family_names, family_spec
from raykd.results.stats import holm, mean_ci, paired_t

def family_of_records(records) -> FamilySpec:
    """The declaration of the family these trials belong to: the teacher family their provenance names (the
    study's plugins imported first: a plugin family registers itself); for trials without one, the first
    registered family whose default lead metric they report (the default family when none does)."""
    for r in records:
        named = _provenance_family(r)
        if named is not None:
            return named
    for name in family_names():
        lead = family_spec(name).default_metric.split("/", 1)[1]
        if any(k.endswith(f"/{lead}") for r in records for k in r.metrics):
            return family_spec(name)
    return family_spec(DEFAULT)


def _provenance_family(record) -> FamilySpec | None:
    """The family a trial's ``provenance.json`` names (its study's plugins imported), or None."""
    import json

    path = Path(getattr(record, "path", "") or "") / "provenance.json"
    try:
        cfg = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError):
        return None
    name = (cfg.get("teacher") or {}).get("family")
    if not name:
        return None
    try:
        if cfg.get("plugins"):
            from raykd.config.load import import_plugins

            import_plugins(list(cfg["plugins"]), str(path))
        return family_spec(name)
    except RaykdError:  # a plugin not importable here: the family is guessed from the metrics
        return None


def table_metrics(records) -> tuple:
    """The (metric, title, decimals) columns of the tables for these trials' family."""
    return family_of_records(records).table_columns


def figure_metrics(records) -> tuple:
    """The metrics drawn against each varied parameter for these trials' family."""
    return family_of_records(records).figure_metrics


FIGSIZE, DPI = (6.0, 4.0), 100  # every figure is 600 × 400 px
STATUS_ORDER = ("finished", "stopped early", "error", "unfinished")


@dataclass
class TrialRecord:
    """One trial of an experiment, as its files describe it."""

    trial_id: str
    path: str
    status: str  # finished | stopped early | error | unfinished
    error: str = ""
    params: dict = field(default_factory=dict)  # searched parameters (confirm-phase ones unpacked), no seed
    seed: int | None = None
    steps: int = 0
    planned_steps: int | None = None
    metrics: dict = field(default_factory=dict)  # the last reported val/* and test/* values
    role: str = "trial"  # trial | init | no_distill | teacher (see load_references)

    def config_key(self, names) -> tuple:
        return tuple(str(self.params.get(n)) for n in names)


# ------------------------------------------------------------------------------------------ reading
def _read_results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    rows = []
    if f.exists():
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
    return rows


def _tune_state(exp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({trial id: Tune status}, {trial directory name: trial id}) from the newest experiment_state
    file (empty when absent or unreadable)."""
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    statuses: dict[str, str] = {}
    dirs: dict[str, str] = {}
    if not files:
        return statuses, dirs
    try:
        data = json.loads(Path(files[-1]).read_text())
        for entry in data.get("trial_data", []):
            state = json.loads(entry[0])
            statuses[str(state["trial_id"])] = str(state.get("status", ""))
            if isinstance(state.get("relative_logdir"), str):
                dirs[state["relative_logdir"]] = str(state["trial_id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return statuses, dirs


def _error_line(trial_dir: Path) -> str:
    f = trial_dir / "error.txt"
    if not f.exists():
        return ""
    lines = [x.strip() for x in f.read_text(errors="replace").splitlines() if x.strip()]
    # the innermost "SomeError: message" line, else the last line
    for x in reversed(lines):
        head = x.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head and not head.startswith("ray."):
            return x[:300]
    return lines[-1][:300] if lines else ""


def _flatten_params(config: dict) -> tuple[dict, int | None]:
    params = {**(config.get("confirm") or {}), **{k: v for k, v in config.items() if k != "confirm"}}
    seed = params.pop("seed", None)
    return params, (int(seed) if isinstance(seed, (int, float)) else None)


REPORT_FILES = ("result.json", "params.json", "provenance.json", "error.txt")
ROLES = ("teacher", "init", "no_distill")


def fetch_experiment(uri: str) -> Path:
    """Copy the files a report reads (not checkpoints or events) of a remote experiment
    (``s3://…``, ``gs://…``, ``file://…``) into a local temporary directory; returns it."""
    import tempfile

    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True))
    except (OSError, ValueError) as e:
        raise RaykdError(f"{uri}: cannot read the experiment: {e}") from None
    dest = Path(tempfile.mkdtemp(prefix="raykd-report-")) / Path(root.rstrip("/")).name
    for info in infos:
        rel = info.path[len(root.rstrip("/")):].lstrip("/")
        parts = rel.split("/")
        if parts[0] == "references":  # the study's reference trials (see load_references)
            parts = parts[1:]
        wanted = (len(parts) == 1 and (parts[0].startswith("experiment_state-") or parts[0] == "comparison.json")) or \
                 (len(parts) == 2 and parts[0].startswith("trial_") and parts[1] in REPORT_FILES)
        if info.type == pafs.FileType.File and wanted:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src:
                (dest / rel).write_bytes(src.read())
    return dest


def load_experiment(exp_dir: str | Path) -> list[TrialRecord]:
    """Every trial of an experiment directory (or a storage URI, see ``fetch_experiment``), one
    record per trial id (a trial restarted into a suffixed directory is read from the directory that
    holds its results)."""
    if isinstance(exp_dir, str) and "://" in exp_dir:
        exp_dir = fetch_experiment(exp_dir)
    exp = Path(exp_dir)
    if not exp.is_dir():
        raise RaykdError(f"{exp}: no such experiment directory")
    statuses, dir_ids = _tune_state(exp)
    by_id: dict[str, TrialRecord] = {}
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("trial_")):
        rows = _read_results(d)
        if rows and rows[-1].get("trial_id") is not None:
            trial_id = str(rows[-1]["trial_id"])
        else:  # no result yet: Tune's state names the directory's trial; else the name without "trial_"
            trial_id = dir_ids.get(d.name, d.name.removeprefix("trial_"))
        config = rows[-1].get("config") if rows else None
        if config is None and (d / "params.json").exists():
            try:
                config = json.loads((d / "params.json").read_text())
            except ValueError:
                config = None
        params, seed = _flatten_params(config or {})
        planned = None
        if (d / "provenance.json").exists():
            try:
                planned = int(json.loads((d / "provenance.json").read_text())["config"]["train"]["steps"])
            except (ValueError, KeyError, TypeError):
                planned = None
        final = rows[-1] if rows else {}
        metrics = {k: v for k, v in final.items() if k.startswith(("val/", "test/")) and isinstance(v, (int, float))}
        steps = int(final.get("step") or 0)
        error = _error_line(d)
        tune_status = statuses.get(trial_id, "")
        if error or tune_status == "ERROR":
            status = "error"
        elif planned is not None and steps >= planned:
            status = "finished"
        elif tune_status == "TERMINATED":
            status = "stopped early"
        else:
            status = "unfinished"
        rec = TrialRecord(trial_id, str(d), status, error, params, seed, steps, planned, metrics)
        old = by_id.get(trial_id)
        if old is None or (rec.steps, bool(rec.params)) > (old.steps, bool(old.params)):
            by_id[trial_id] = rec
    if not by_id:
        raise RaykdError(f"{exp}: holds no trial directories (trial_*): is it a raykd experiment?")
    return sorted(by_id.values(), key=lambda r: r.trial_id)


def references_dir(exp_dir: str | Path) -> Path:
    """Where the reference trials of an experiment live: ``EXP/references``; for a confirm phase
    (``NAME-confirm``) those of its search, ``NAME/references``."""
    exp = Path(exp_dir)
    own = exp / "references"
    if not own.is_dir() and exp.name.endswith("-confirm"):
        return exp.parent / exp.name.removesuffix("-confirm") / "references"
    return own


def _split_prefixed(row: dict, prefix: str = "") -> dict:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and k[len(prefix):].startswith(
        ("val/", "test/")) and isinstance(v, (int, float))}


def load_references(exp_dir: str | Path) -> list[TrialRecord]:
    """The study's reference rows, one per role and seed (and searched student shape): ``teacher``
    (the teacher scored as its own student, from a reference trial's step-0 row), ``init`` (the plain
    student as built, its step-0 row) and ``no_distill`` (the same trial's final row: the student
    trained on its own task loss, same steps and data). ``trial_id`` = ``<role>-s<seed>``. Empty
    when the experiment has no references."""
    refs = references_dir(exp_dir)
    if not refs.is_dir():
        return []
    out = []
    for rec in load_experiment(refs):
        rows = _read_results(Path(rec.path))
        start = next((r for r in rows if r.get("step") == 0), None)
        shape = "".join(f"-{k.split('.')[-1]}{v}" for k, v in rec.params.items() if k != "reference")
        sid = f"s{rec.seed}{shape}"
        params = {k: v for k, v in rec.params.items() if k != "reference"}
        if start is not None:
            out.append(TrialRecord(f"teacher-{sid}", rec.path, "finished", "", params, rec.seed, 0, 0,
                                   _split_prefixed(start, "teacher/"), role="teacher"))
            out.append(TrialRecord(f"init-{sid}", rec.path, "finished", "", params, rec.seed, 0, 0,
                                   _split_prefixed(start), role="init"))
        out.append(TrialRecord(f"no_distill-{sid}", rec.path, rec.status, rec.error, params, rec.seed, rec.steps,
                               rec.planned_steps, rec.metrics, role="no_distill"))
    return out


def reference_means(refs: list[TrialRecord], metric: str) -> dict[str, float]:
    """{role (teacher, init, no_distill): mean of ``metric`` over its finished rows (seeds, student shapes)};
    roles without a finite value are left out."""
    out = {}
    for role in ROLES:  # the reference table's rows and mean (mean_ci: finite values only)
        mean, _, n = mean_ci([r.metrics.get(metric) for r in refs if r.role == role and r.status == "finished"])
        if n:
            out[role] = mean
    return out


def experiment_metric(trials: list[TrialRecord]) -> tuple[str, str]:
    """(validation metric, mode) the experiment selected on, from a trial's provenance."""
    for t in trials:
        p = Path(t.path) / "provenance.json"
        if p.exists():
            try:
                e = json.loads(p.read_text())["config"]["experiment"]
                return e["metric"], e["mode"]
            except (ValueError, KeyError, TypeError):
                continue
    return family_spec(DEFAULT).default_metric, "max"


def varied_parameters(trials: list[TrialRecord]) -> list[str]:
    """Parameters (not the seed) that take more than one value across the trials, in order."""
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    return [n for n in names if len({json.dumps(t.params.get(n), sort_keys=True) for t in trials}) > 1]


# ------------------------------------------------------------------------------------------ outputs
def write_csv(trials: list[TrialRecord], path: Path) -> None:
    """results.csv: trial_id, role (trial | init | no_distill | teacher), status, error, steps,
    parameters, seed, every val/ and test/ metric."""
    pnames: list[str] = []
    mnames: set[str] = set()
    for t in trials:
        pnames += [k for k in t.params if k not in pnames]
        mnames |= set(t.metrics)
    mcols = sorted(m for m in mnames if m.startswith("val/")) + sorted(m for m in mnames if m.startswith("test/"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "role", "status", "error", "steps"] + pnames + ["seed"] + mcols)
        for t in trials:
            w.writerow([t.trial_id, t.role, t.status, t.error, t.steps] + [t.params.get(p, "") for p in pnames]
                       + ["" if t.seed is None else t.seed] + [t.metrics.get(m, "") for m in mcols])


def _fmt(mean: float, half: float, decimals: int = 2) -> str:
    if mean != mean:
        return "—"
    return f"{mean:.{decimals}f}" if half != half else f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def groups_of(trials: list[TrialRecord], names: list[str]) -> dict[tuple, list[TrialRecord]]:
    """Trials grouped by their values of ``names`` (insertion-ordered by first appearance)."""
    out: dict[tuple, list[TrialRecord]] = {}
    for t in trials:
        out.setdefault(t.config_key(names), []).append(t)
    return out


def summary_table(finished: list[TrialRecord], names: list[str]) -> str:
    """Markdown: one row per configuration with test metrics as mean ± 95 % CI and n (seeds)."""
    columns = table_metrics(finished)
    head = names + ["n"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, ts in groups_of(finished, names).items():
        cells = list(key) + [str(len(ts))]
        for m, _, decimals in columns:
            mean, half, _ = mean_ci([t.metrics.get(f"test/{m}") for t in ts])
            cells.append(_fmt(mean, half, decimals))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_table(refs: list[TrialRecord]) -> str:
    """Markdown: one row per reference role, test metrics as mean ± 95 % CI over seeds."""
    fam = family_of_records(refs)
    columns = fam.table_columns + fam.reference_columns
    head = ["reference", "n"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for role in ROLES:
        ts = [r for r in refs if r.role == role and r.status == "finished"]
        if not ts:
            continue
        cells = [f"`{role}`", str(len(ts))]
        for m, _, decimals in columns:
            mean, half, _ = mean_ci([t.metrics.get(f"test/{m}") for t in ts])
            cells.append(_fmt(mean, half, decimals))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains_over_references(finished: list[TrialRecord], refs: list[TrialRecord], names: list[str],
                          metric: str) -> list[dict]:
    """Per configuration: its gain on ``metric`` over ``init`` and over ``no_distill``, paired by seed
    (and student shape where searched): rows {key, role, n, diff, ci, p, p_holm, significant},
    Holm-adjusted across all rows."""
    def ref_key(t):
        return (t.seed,) + tuple(sorted((k, str(v)) for k, v in t.params.items() if k.startswith("student.")))

    base = {role: {ref_key(r): r.metrics.get(metric) for r in refs if r.role == role and r.status == "finished"
                   and r.metrics.get(metric) is not None} for role in ("init", "no_distill")}
    rows = []
    for key, ts in groups_of(finished, names).items():
        for role, ref in base.items():
            pairs = [(t.metrics[metric], ref[ref_key(t)]) for t in ts
                     if t.metrics.get(metric) is not None and ref_key(t) in ref]
            if not pairs:
                continue
            r = paired_t([a for a, _ in pairs], [b for _, b in pairs])
            label = _key_text(names, key) if names else (", ".join(f"{k}={v}" for k, v in ts[0].params.items())
                                                         or "all")
            rows.append({"key": key, "label": label, "role": role, **r})
    for r, ph in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = ph
        r["significant"] = ph == ph and ph < 0.05
    return rows


def importance(trials: list[TrialRecord], names: list[str], metric: str, mode: str) -> tuple[dict, int]:
    """({parameter: importance in [0, 1]}, trials used) by Optuna's fANOVA evaluator on the trials'
    final validation ``metric``; {} when fewer than 3 usable trials, nothing varies, or every trial
    scored the same (no variance to attribute)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    usable = [t for t in trials if t.metrics.get(metric) is not None and math.isfinite(t.metrics[metric])
              and all(isinstance(t.params.get(n), (int, float, str, bool)) for n in names)]
    if len(usable) < 3 or not names or len({t.metrics[metric] for t in usable}) < 2:
        return {}, len(usable)
    dists = {n: CategoricalDistribution(sorted({t.params[n] for t in usable}, key=str)) for n in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in usable:
        study.add_trial(optuna.trial.create_trial(params={n: t.params[n] for n in names}, distributions=dists,
                                                  value=t.metrics[metric]))
    ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=ev)), len(usable)


def paired_differences(finished: list[TrialRecord], names: list[str], metric: str) -> list[dict]:
    """Every pair of configurations compared on ``metric`` over their shared seeds (≥ 2), paired t,
    Holm-adjusted across the comparisons. Rows: a, b, n, diff, ci, p, p_holm, significant."""
    groups = {k: {t.seed: t.metrics.get(metric) for t in ts if t.metrics.get(metric) is not None}
              for k, ts in groups_of(finished, names).items()}
    keys = list(groups)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            seeds = sorted(s for s in set(groups[a]) & set(groups[b]) if s is not None)
            if len(seeds) < 2:
                continue
            r = paired_t([groups[a][s] for s in seeds], [groups[b][s] for s in seeds])
            rows.append({"a": a, "b": b, **r})
    for r, ph in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = ph
        r["significant"] = ph == ph and ph < 0.05
    return rows


def against(finished: list[TrialRecord], names: list[str], base: dict[str, str], metrics: list[str]) -> list[dict]:
    """``base`` (the configuration whose varied parameters have these values, e.g. ours) against every
    other configuration on each of ``metrics``, paired by seed (≥ 2 shared), paired t, Holm-adjusted
    across all rows. Rows: other, metric, n, diff (base − other), ci, p, p_holm, significant."""
    unknown = sorted(set(base) - set(names))
    if unknown:
        raise RaykdError(f"--against: {', '.join(unknown)} is not a varied parameter of this experiment "
                         f"(varied: {', '.join(names) or 'nothing'})")
    groups = groups_of(finished, names)
    base_keys = [k for k in groups if all(str(v) == base[n] for n, v in zip(names, k) if n in base)]
    if len(base_keys) != 1:
        raise RaykdError(f"--against {base}: matches {len(base_keys)} finished configurations, not 1 "
                         f"(configurations: {'; '.join(_key_text(names, k) for k in groups)})")
    rows = []
    for metric in metrics:
        by_seed = {k: {t.seed: t.metrics.get(metric) for t in ts if t.metrics.get(metric) is not None}
                   for k, ts in groups.items()}
        ours = by_seed[base_keys[0]]
        for k in groups:
            if k == base_keys[0]:
                continue
            seeds = sorted(s for s in set(ours) & set(by_seed[k]) if s is not None)
            if len(seeds) < 2:
                continue
            r = paired_t([ours[s] for s in seeds], [by_seed[k][s] for s in seeds])
            rows.append({"other": k, "metric": metric, **r})
    for r, ph in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = ph
        r["significant"] = ph == ph and ph < 0.05
    return rows


def figures(trials: list[TrialRecord], names: list[str], split: str, out: Path,
            refs: list[TrialRecord] | None = None) -> list[Path]:
    """One PNG per (varied parameter, metric): the metric's mean ± 95 % CI at each value of the
    parameter (other parameters pooled), with the references' means (teacher, init, no_distill) as
    horizontal lines. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in names:
        values = sorted({t.params.get(name) for t in trials}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        for m in figure_metrics(trials):
            stats_ = [mean_ci([t.metrics.get(f"{split}/{m}") for t in trials if t.params.get(name) == v])
                      for v in values]
            if all(n == 0 for _, _, n in stats_):
                continue
            fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
            means = [s[0] for s in stats_]
            errs = [0.0 if s[1] != s[1] else s[1] for s in stats_]
            if numeric:
                ax.errorbar(values, means, yerr=errs, marker="o", capsize=4)
                if max(values) / max(min(values), 1e-9) >= 8:
                    ax.set_xscale("log", base=2)
                ax.set_xticks(values, [str(v) for v in values])
            else:
                ax.bar(range(len(values)), means, yerr=errs, capsize=4)
                labels = [str(v) for v in values]
                long = sum(map(len, labels)) > 40  # would overlap at this width: slant them
                ax.set_xticks(range(len(values)), labels, rotation=25 if long else 0, ha="right" if long else "center")
            for x, (mean, _, n) in zip(values if numeric else range(len(values)), stats_):
                if n:
                    ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(0, 6), ha="center",
                                fontsize=8)
            for role, style in zip(ROLES, ("k-", "r--", "b:")):
                mean, _, n_ref = mean_ci([r.metrics.get(f"{split}/{m}") for r in refs or [] if r.role == role])
                if n_ref:
                    ax.axhline(mean, linestyle=style[1:], color=style[0], linewidth=1, label=f"{role} (n={n_ref})")
            if refs:
                ax.legend(fontsize=7, loc="best")
            ax.set_xlabel(name)
            ax.set_ylabel(f"{split}/{m}")
            ax.set_title(f"{name} vs {m} (mean ± 95 % CI over seeds)")
            fig.tight_layout()
            path = out / f"fig_{_safe(name)}_vs_{_safe(m)}.png"
            fig.savefig(path, dpi=DPI)
            plt.close(fig)
            written.append(path)
    return written


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


# ------------------------------------------------------------------------------------------ report
def read_comparison(exp: Path) -> dict | None:
    """A compare study's ``comparison.json`` at the experiment root, or None."""
    from raykd.config.contenders import COMPARISON_FILE

    f = exp / COMPARISON_FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RaykdError(f"{f}: not valid JSON: {e}") from None


def build_report(exp_dir: str | Path, out: str | Path | None = None, against_config: dict[str, str] | None = None) -> dict:
    """Write results.csv, table.md and the figures for ``exp_dir`` into ``out``; returns a summary
    (counts, files, the Markdown text). ``against_config`` (e.g. ``{"method": "structural"}``) adds
    that configuration against each other one on every test metric of the table (``against``)."""
    if isinstance(exp_dir, str) and "://" in exp_dir:
        exp_dir = fetch_experiment(exp_dir)
    exp = Path(exp_dir).absolute()
    trials = load_experiment(exp)
    out_dir = Path(out) if out else exp / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    metric, mode = experiment_metric(trials)
    comparison = read_comparison(exp)
    names = ["contender"] if comparison is not None else varied_parameters(trials)
    counts = {s: sum(t.status == s for t in trials) for s in STATUS_ORDER}
    finished = [t for t in trials if t.status == "finished"]
    refs = load_references(exp)
    write_csv(refs + trials, out_dir / "results.csv")
    lead = "test/" + metric.split("/", 1)[-1]
    md = _header_md(exp, trials, counts, names, metric, mode)
    if comparison is not None:
        from raykd.results.comparison import comparison_markdown

        md += comparison_markdown(comparison) + [
            "", "---", "", "_Everything below is **exploratory**: tables over the confirmation's trials, not the "
            "declared comparisons above._", ""]
    md += ["## Test metrics by configuration (mean ± 95 % CI over seeds, Student's t, n − 1 df)", ""]
    md.append(summary_table(finished, names) if finished else "_No finished trial yet._")
    md += _references_md(finished, refs, names, lead)
    errors = [t for t in trials if t.status == "error"]
    if errors:
        md += ["", "## Errored trials", ""] + [f"- `{t.trial_id}` ({_params_text(t)}): {t.error}" for t in errors]
    imp, used = importance(finished, names, metric, mode)
    diffs = paired_differences(finished, names, lead)
    md += _choices_md(imp, used, diffs, names, metric, lead)
    vs = against(finished, names, against_config, [lead] + [f"test/{m}" for m in figure_metrics(trials)
                                                            if f"test/{m}" != lead]) if against_config else []
    if against_config:
        md += _against_md(vs, names, against_config)
    figs = figures(finished or trials, names, "test" if finished else "val", out_dir, refs)
    if figs:
        md += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figs]
    text = "\n".join(md) + "\n"
    (out_dir / "table.md").write_text(text, encoding="utf-8")
    return {"trials": len(trials), "counts": counts, "out": str(out_dir), "figures": [str(p) for p in figs],
            "comparison": comparison,
            "importance": imp, "paired": diffs, "references": len(refs), "against": vs,
            "gains": gains_over_references(finished, refs, names, lead) if refs else [], "markdown": text}


def _header_md(exp: Path, trials: list, counts: dict, names: list, metric: str, mode: str) -> list[str]:
    """The report's title, trial counts, what is incomplete, where the confirm phase is, what varied."""
    md = [f"# Experiment `{exp.name}`", "",
          f"{len(trials)} trials: " + ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER) + "."]
    if counts["unfinished"]:
        md.append(f"**Incomplete:** {counts['unfinished']} trial(s) are still running or were interrupted; "
                  "this report covers what is finished (re-run it later, or `python -m raykd.tune --resume`).")
    confirm = exp.parent / f"{exp.name}-confirm"
    if confirm.is_dir():
        md.append(f"The confirm phase of this search is `{confirm}`: report that one for the final numbers.")
    return md + ["", f"Selection metric: `{metric}` ({mode}), validation split. Varied: "
                 + (", ".join(f"`{n}`" for n in names) or "nothing") + ".", ""]


def _references_md(finished: list, refs: list, names: list, lead: str) -> list[str]:
    """The references' table and each configuration's gain over them on ``lead`` (or why there is none)."""
    if not refs:
        return ["", "_This experiment has no references (`experiment.references: false`): its numbers have no "
                "reference point._"]
    md = ["", "## References (test, mean ± 95 % CI over seeds)", "",
          "`teacher`: the teacher scored as its own student; `init`: the plain student as built, before "
          "its first step; `no_distill`: the same student trained with the same steps and data on its own "
          "task loss only.", "", reference_table(refs)]
    gains = gains_over_references(finished, refs, names, lead)
    md += ["", f"## Gain over the references on `{lead}` (paired by seed; paired t, Holm-adjusted)", ""]
    if not gains:
        return md + ["_No finished trial shares a seed with a finished reference._"]
    md += ["| configuration | over | n | gain (95 % CI) | p | p (Holm) | real at 0.05 |", "|---|---|---|---|---|---|---|"]
    return md + [_test_row([r["label"], f"`{r['role']}`"], r) for r in gains]


def _choices_md(imp: dict, used: int, diffs: list, names: list, metric: str, test_metric: str) -> list[str]:
    """'Which choices matter': parameter importance and the paired differences between configurations."""
    md = ["", "## Which choices matter", "", f"### Parameter importance (Optuna fANOVA on `{metric}`, "
          f"{used} finished trials)", ""]
    if imp:
        md += ["| parameter | importance |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in imp.items()]
    else:
        md.append(f"_Not computed: needs ≥ 3 finished trials, a varied parameter and trials that differ on the metric "
                  f"(have {used} trials)._")
    md += ["", f"### Paired differences on `{test_metric}` (same seeds; paired t, Holm-adjusted)", ""]
    if not diffs:
        return md + ["_No two configurations share ≥ 2 finished seeds._"]
    md += ["| A | B | n | A − B (95 % CI) | p | p (Holm) | real at 0.05 |", "|---|---|---|---|---|---|---|"]
    return md + [_test_row([_key_text(names, r["a"]), _key_text(names, r["b"])], r) for r in diffs]


def _against_md(vs: list, names: list, against_config: dict) -> list[str]:
    """One configuration against each other one, every test metric (``--against``)."""
    label = ", ".join(f"{k}={v}" for k, v in against_config.items())
    md = ["", f"### {label} against each other configuration (test; paired by seed, paired t, Holm-adjusted "
          "over every row)", ""]
    if not vs:
        return md + ["_No other configuration shares ≥ 2 finished seeds with it._"]
    md += ["| other | metric | n | difference (95 % CI) | p | p (Holm) | real at 0.05 |", "|---|---|---|---|---|---|---|"]
    return md + [_test_row([_key_text(names, r["other"]), f"`{r['metric']}`"], r) for r in vs]


def _test_row(cells: list[str], r: dict) -> str:
    """A Markdown row: ``cells``, then n, difference ± CI, p, Holm p and the verdict of test row ``r``."""
    return (f"| {' | '.join(cells)} | {r['n']} | {_fmt(r['diff'], r['ci'], 4)} | {_p(r['p'])} | {_p(r['p_holm'])} | "
            f"{'yes' if r['significant'] else 'no'} |")


def _p(p: float) -> str:
    return "—" if p != p else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


def _key_text(names, key) -> str:
    return ", ".join(f"{n}={v}" for n, v in zip(names, key)) or "all"


def _params_text(t: TrialRecord) -> str:
    return ", ".join(f"{k}={v}" for k, v in t.params.items()) + f", seed={t.seed}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit code (0 written, 2 bad input)."""
    ap = argparse.ArgumentParser(prog="python -m raykd.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="experiment directory (STORAGE/NAME)")
    ap.add_argument("--out", default=None, help="output directory (default EXPERIMENT/report)")
    ap.add_argument("--against", action="append", default=[], metavar="PARAM=VALUE",
                    help="compare this configuration (e.g. method=structural) with every other one on each test "
                         "metric (repeat for more parameters)")
    args = ap.parse_args(argv)
    try:
        base = {}
        for item in args.against:
            if "=" not in item:
                raise RaykdError(f"--against {item!r}: expected PARAM=VALUE, e.g. method=structural")
            k, v = item.split("=", 1)
            base[k.strip()] = v.strip()
        summary = build_report(args.experiment, args.out, base or None)
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(summary["markdown"])
    print(f"report: {summary['out']} (results.csv, table.md, {len(summary['figures'])} figures)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
