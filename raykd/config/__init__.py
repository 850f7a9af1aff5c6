"""Config flows one way: YAML → ``load_config`` (unknown keys, wrong types and impossible values fail at
load time, naming the file, the key and the allowed values) → validated dataclasses → code.

    schema      every setting as a dataclass, the allowed names, mapping → dataclass
    space       search-space keys (aliases) and how many trials a study plans
    contenders  a compare study's contenders and their search spaces
    validate    the checks types alone cannot make
    load        YAML / mapping / ``--set`` → a validated Config; plugin imports

This package's public names, re-exported for ``from raykd import config as C``."""

from raykd.config.contenders import compare_contenders, compare_tuning_seed
from raykd.config.load import as_config, config_from_dict, import_plugins, load_config, parse_set, plugin_paths
from raykd.config.schema import *  # noqa: F401,F403 (the dataclasses and allowed names)
from raykd.config.schema import _build, apply_overrides, get_path, parse_fault, to_dict
from raykd.config.space import planned_trials, resolve_key
from raykd.config.validate import method_names, resolve_family, sampler_names, validate

__all__ = [n for n in dir() if not n.startswith("__")]
