"""Search-space keys: aliases to dotted config paths, and how many trials a study plans."""

from __future__ import annotations


from raykd.config.contenders import compare_contenders, planned_compare_trials
from raykd.config.schema import ALIASES, Config, ConfigError


def resolve_key(name: str) -> str:
    """The dotted config path of a search-space key (aliases expanded)."""
    return ALIASES.get(name, name)


def planned_trials(cfg: Config) -> int:
    """Trials the search runs before any confirm phase: grid size × seeds (grid), or num_samples; for a
    compare study every trial it runs (tuning, confirmation and the reference's)."""
    if cfg.compare is not None:
        return planned_compare_trials(len(compare_contenders(cfg)), cfg.compare.tune.trials or 0,
                                      len(cfg.experiment.seeds), cfg.experiment.references)
    if cfg.search.algorithm == "grid":
        size = 1
        for spec in cfg.space.values():
            kind, values = next(iter(spec.items()))
            if kind not in ("choice", "grid"):
                raise ConfigError(f"search.algorithm grid: space entry with {kind!r} cannot be enumerated")
            size *= len(values)
        return size * len(cfg.experiment.seeds)
    return cfg.search.num_samples
