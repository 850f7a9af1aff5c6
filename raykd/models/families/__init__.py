"""Model families: each is a declaration (``spec.FamilySpec``: pure, read without torch by config validation,
the plan, the budget and the views) and an implementation of ``base.ModelFamily`` (torch + transformers: build,
load, cut, corrupt, task loss, export), imported the first time it is asked for. The built-in families are
``masked_lm`` and ``causal_lm``; a plugin adds one with ``register_family`` (its spec names its implementation).

Importing this package imports no torch; ``family``, ``family_of`` and ``FAMILIES`` do."""

from __future__ import annotations

import importlib

from .spec import (DEFAULT, FamilySpec, TeacherShape, all_archs, arch_family, family_names, family_of_architectures,
                   family_spec, register_family)

__all__ = ["DEFAULT", "FamilySpec", "TeacherShape", "all_archs", "arch_family", "family", "family_names", "family_of",
           "family_of_architectures", "family_of_spec", "family_spec", "register_family"]
_IMPLEMENTATIONS: dict = {}


def family(name: str = DEFAULT):
    """The implementation (a ``base.ModelFamily``) of the registered family ``name``; RaykdError naming the
    registered families otherwise."""
    spec = family_spec(name)
    if name not in _IMPLEMENTATIONS:
        module, cls = spec.implementation.split(":")
        _IMPLEMENTATIONS[name] = getattr(importlib.import_module(module), cls)()
    return _IMPLEMENTATIONS[name]


def family_of(model):
    """The implementation of the family an HF model (or a raykd Student, through its ``mlm``) belongs to."""
    model = getattr(model, "mlm", model)
    for name in family_names():
        f = family(name)
        if f.matches(model):
            return f
    raise ValueError(f"{type(model).__name__}: no registered model family matches it ({', '.join(family_names())})")


def family_of_spec(spec: str) -> str:
    """The family of the model in a local HF directory, from its config.json's ``architectures``; ``DEFAULT``
    for a hub id or a config that names none."""
    import json
    import os

    path = os.path.join(os.path.expanduser(spec), "config.json")
    try:
        archs = json.loads(open(path, encoding="utf-8").read()).get("architectures") or []
    except (OSError, ValueError):
        return DEFAULT
    return family_of_architectures(archs) or DEFAULT


def __getattr__(name: str):
    """``ModelFamily``, ``INTERFACE`` (the torch side's interface) and ``FAMILIES`` ({name: implementation} of
    every registered family), imported on first use."""
    if name in ("ModelFamily", "INTERFACE"):
        from . import base

        return getattr(base, name)
    if name == "FAMILIES":
        return {n: family(n) for n in family_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
