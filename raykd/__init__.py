"""raykd: Ray-distributed hyperparameter and ablation studies of domain-oriented knowledge distillation.

The Python API (the CLI ``python -m raykd.tune`` is a thin layer over it)::

    import raykd
    cfg = raykd.load_config("search_spaces/smoke.yaml", {"train.steps": 40})
    results, path = raykd.run_study(cfg, name="my-study")

Importing ``raykd`` imports neither Ray nor torch; ``run_study`` does, when called.
"""

from raykd._version import __version__
__all__ = ["load_config", "run_study"]


def load_config(path, overrides=None):
    """The validated ``raykd.config.Config`` of a YAML file with dotted-key ``overrides`` (a dict)
    applied; raises ``raykd.config.ConfigError`` naming the file, key and allowed values."""
    from raykd.config import load_config as _load

    return _load(path, overrides)


def run_study(config, *, overrides=None, storage=None, name=None, resume=False):
    """Run a study: ``config`` is a YAML path, a dict or a ``Config``; ``overrides`` dotted keys →
    values; ``storage`` / ``name`` default to ``experiment.storage`` / ``experiment.name``. Runs on
    the Ray this process initialised, else a local one started and stopped here. Returns the named
    tuple ``(results, path)``: the Tune ``ResultGrid`` and the experiment directory (a confirm
    phase's results under ``path + "-confirm"``, the references under ``path/references``)."""
    from raykd.ray_layer.tune import run_study as _run

    return _run(config, overrides=overrides, storage=storage, name=name, resume=resume)
