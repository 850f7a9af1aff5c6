"""Model families (registry ``FAMILIES``): one module per architecture family, each implementing
``base.ModelFamily``. Adding a family = one module + one registration here."""

from __future__ import annotations

from ...architectures import family_of_architectures
from ...registry import Registry
from .base import INTERFACE, ModelFamily, TeacherShape
from .causal_lm import CausalLM
from .masked_lm import MaskedLM

FAMILIES = Registry("model family")
FAMILIES.register(MaskedLM.name)(MaskedLM())
FAMILIES.register(CausalLM.name)(CausalLM())
DEFAULT = MaskedLM.name

__all__ = ["FAMILIES", "INTERFACE", "ModelFamily", "TeacherShape", "family", "family_of", "family_of_spec"]


def family(name: str = DEFAULT) -> ModelFamily:
    """The registered family ``name`` (RaykdError naming the allowed ones otherwise)."""
    return FAMILIES.get(name)


def family_of(model) -> ModelFamily:
    """The family an HF model (or a raykd Student, through its ``mlm``) belongs to."""
    model = getattr(model, "mlm", model)
    for name in FAMILIES.names():
        f = FAMILIES.get(name)
        if f.matches(model):
            return f
    raise ValueError(f"{type(model).__name__}: no registered model family matches it ({', '.join(FAMILIES.names())})")


def family_of_spec(spec: str) -> str:
    """The family of the model in a local HF directory, from its config.json's ``architectures``
    (a causal-LM head → ``causal_lm``); ``DEFAULT`` for a hub id or a config that names none."""
    import json
    import os

    path = os.path.join(os.path.expanduser(spec), "config.json")
    try:
        archs = json.loads(open(path, encoding="utf-8").read()).get("architectures") or []
    except (OSError, ValueError):
        return DEFAULT
    return "causal_lm" if family_of_architectures(archs) == "causal_lm" else DEFAULT
