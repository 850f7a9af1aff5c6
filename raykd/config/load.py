"""YAML (``yaml.safe_load``) or a mapping → a validated ``Config``; ``--set`` overrides; plugin imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raykd.config.schema import ALIASES, Config, ConfigError, _build, apply_overrides, to_dict
from raykd.config.space import resolve_key
from raykd.config.validate import validate


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "search.num_samples=4"]`` → {dotted key: YAML-typed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, plugins: list[str] | tuple = ()) -> Config:
    """Read a YAML config with ``yaml.safe_load`` (a Python tag is refused), apply dotted overrides
    (the command line wins), import its ``plugins`` (and ``plugins`` given here, e.g. ``--plugin``),
    build and validate the dataclasses. Raises ConfigError on any problem."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{src}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML (Python tags are refused): {str(e).splitlines()[0]}") from None
    return config_from_dict(data, src, overrides, plugins)


def config_from_dict(data: dict, src: str = "<dict>", overrides: dict[str, Any] | None = None,
                     plugins: list[str] | tuple = ()) -> Config:
    """A validated Config from nested dicts (as YAML gives them): overrides applied, plugins
    imported (their registrations are then valid names). ``src`` names the source in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: top level must be a mapping of sections")
    if overrides:
        data = apply_overrides(data, {resolve_key(k) if k in ALIASES else k: v for k, v in overrides.items()})
    if plugins:
        data = {**data, "plugins": list(data.get("plugins") or []) + [p for p in plugins
                                                                        if p not in (data.get("plugins") or [])]}
    cfg = _build(Config, data, "", src)
    import_plugins(cfg.plugins, src)
    return validate(cfg, src)


def as_config(config, overrides: dict[str, Any] | None = None) -> Config:
    """``config`` as a validated Config: a YAML path (str or Path), nested dicts, or a Config
    (re-validated, with ``overrides`` applied)."""
    if isinstance(config, Config):
        return config_from_dict(to_dict(config), "<Config>", overrides)
    if isinstance(config, dict):
        return config_from_dict(config, "<dict>", overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise ConfigError(f"config: expected a YAML path, a dict or a Config, got {type(config).__name__}")


def import_plugins(names: list, src: str = "<config>", paths: list[str] | tuple = ()) -> list:
    """Import each plugin module (a dotted name on ``sys.path``; ``paths`` are added to it first
    when missing: where the driver found them); returns the modules. ConfigError naming the module
    when one cannot be imported."""
    import importlib
    import sys

    for d in paths:
        if d not in sys.path:
            sys.path.append(d)
    modules = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{src}: plugins: {name!r} is not a module name")
        try:
            modules.append(importlib.import_module(name))
        except Exception as e:  # not found, or the module failed while importing (a name registered twice…)
            why = str(e).splitlines()[0] if str(e) else ""
            raise ConfigError(f"{src}: plugins: cannot import {name!r}: {type(e).__name__}: {why}") from None
    return modules


def plugin_paths(names: list) -> list[str]:
    """The ``sys.path`` entries the (imported) plugin modules were found under, for workers."""
    import sys

    out = []
    for name in names:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        root = Path(f).resolve().parent
        for _ in range(name.count(".") + (1 if Path(f).name == "__init__.py" else 0)):
            root = root.parent
        if str(root) not in out:
            out.append(str(root))
    return out
