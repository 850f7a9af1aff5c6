"""A compare study's contenders (``compare.methods``), each one's search space (its own declared settings +
the shared ``space``), the fixed part of its trials and the study's trial count. Pure config logic: no Ray,
no torch; ``raykd.results.comparison`` tests and tabulates what the trials measured."""

from __future__ import annotations

from dataclasses import dataclass, field

from raykd.config.schema import Config, ConfigError
from raykd.distill import settings as S

COMPARISON_FILE = "comparison.json"
TUNE_DIR = "tune"  # <storage>/<name>/tune/<contender>: each contender's tuning experiment
CONTENDER_KEY = "contender"  # the Tune param naming a trial's contender (a label, not a config setting)
REFERENCE_LABEL = "reference"  # the tuning experiment of the no_distill / sft reference


@dataclass(frozen=True)
class Contender:
    """One method of a compare study: its ``label`` (unique within the study), the method and the
    settings the YAML fixes for it (never tuned)."""

    label: str
    method: str
    params: dict = field(default_factory=dict)


def parse_contenders(entries) -> list[Contender]:
    """``compare.methods`` → contenders. An entry is ``NAME`` or ``{NAME: {params}}``; a method named
    more than once gets labels ``NAME[k=v,…]`` from its fixed params. ValueError saying which entry
    is malformed or which labels repeat."""
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a non-empty list of methods (NAME or NAME: {params})")
    parsed = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            parsed.append((e, {}))
        elif isinstance(e, dict) and len(e) == 1 and isinstance(next(iter(e)), str) \
                and isinstance(next(iter(e.values())) or {}, dict):
            name, params = next(iter(e.items()))
            parsed.append((name, dict(params or {})))
        else:
            raise ValueError(f"entry {i} ({e!r}) is not NAME or NAME: {{params}}")
    count = {}
    for name, _ in parsed:
        count[name] = count.get(name, 0) + 1
    out = []
    for name, params in parsed:
        label = name if count[name] == 1 or not params else \
            f"{name}[{','.join(f'{k}={v}' for k, v in sorted(params.items()))}]"
        out.append(Contender(label, name, params))
    labels = [c.label for c in out]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named more than once with the same settings")
    return out


def parse_against(text) -> tuple[str, str]:
    """``"KEY=VALUE"`` → (KEY, VALUE); ValueError otherwise."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"{text!r} is not one KEY=VALUE string (e.g. method=structural)")
    key, value = (x.strip() for x in text.split("=", 1))
    return key, value


def contender_space(c: Contender, shared: dict) -> dict:
    """The search space (YAML form: dotted key → domain) of contender ``c``: the shared ``space`` plus
    every tunable setting its method declares (``settings.tunable``) that the YAML does not fix."""
    return {**shared, **{f"method.params.{k}": dom for k, dom in S.tunable(c.method, c.params).items()}}


def constants(c: Contender) -> dict:
    """The fixed part of every trial of contender ``c`` (dotted keys)."""
    return {"method.name": c.method, CONTENDER_KEY: c.label, **{f"method.params.{k}": v for k, v in c.params.items()}}


def edge_flags(space: dict, best: dict) -> list[str]:
    """The tuned keys whose best value sits on the edge of its search range (``settings.on_range_edge``)."""
    return [k for k, dom in space.items() if k in best and S.on_range_edge(dom, best[k])]


def planned_compare_trials(contenders: int, trials: int, seeds: int, references: bool) -> int:
    """Trials a compare study runs: every contender's (and the reference's) tuning trials, then each
    one's best configuration on every seed."""
    runs = contenders + (1 if references else 0)
    return runs * trials + runs * seeds


def compare_contenders(cfg: Config, src: str = "<config>"):
    """The contenders of ``cfg.compare`` (``Contender``); ConfigError when malformed."""
    try:
        return parse_contenders(cfg.compare.methods)
    except ValueError as e:
        raise ConfigError(f"{src}: compare.methods: {e}") from None


def compare_tuning_seed(cfg: Config) -> int:
    """The seed of a compare study's tuning trials: ``compare.tune.seed`` or max(experiment.seeds) + 1."""
    return cfg.compare.tune.seed if cfg.compare.tune.seed is not None else max(cfg.experiment.seeds) + 1
