"""The teacher: load an HF model of a family (directory or hub id; safetensors, no remote code) or build
one from a config. Its domain adaptation is a training stage: ``raykd.stages.adapt``."""

from __future__ import annotations

import os

import torch

from ..errors import RaykdError
from .families import DEFAULT, TeacherShape, arch_family, family_of_spec
from .families import family as get_family


def build_teacher(shape: TeacherShape, vocab_size: int, pad_token_id: int = 0, seed: int = 0,
                  family: str | None = None, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A randomly initialised teacher of ``shape`` in model ``family`` (default: ``causal_lm`` when
    ``shape.arch`` names (``causal_lm`` for llama, qwen2, gpt2), else the default ``masked_lm``: a
    ``BertForMaskedLM``), seeded."""
    torch.manual_seed(seed)
    family = family or (arch_family(shape.arch) if shape.arch else None) or DEFAULT
    return get_family(family).build(shape, vocab_size, pad_token_id, bos_token_id, eos_token_id)


def load_teacher(spec: str, trust_remote_code: bool = False, revision: str | None = None, family: str | None = None):
    """Load a teacher of model ``family`` (default: what a local directory's config.json names, else
    ``masked_lm``) from an HF directory or hub id with safetensors weights only and, unless the YAML
    asked for it together with a pinned ``revision``, ``trust_remote_code=False``; raises RaykdError
    with the reason when it cannot."""
    family = family or family_of_spec(spec)
    if trust_remote_code and not revision:
        raise RaykdError(f"teacher {spec}: trust_remote_code needs a pinned revision")
    if spec.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(spec)):
        raise RaykdError(f"teacher {spec}: no such directory")
    try:
        return get_family(family).load(spec, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as e:  # transformers raises OSError/ValueError/hub errors
        raise RaykdError(f"teacher {spec}: cannot load: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def teacher_skeleton(spec: str, trust_remote_code: bool = False, revision: str | None = None,
                     family: str | None = None):
    """The teacher of ``spec`` (as ``load_teacher`` would load it) on the meta device: built from its
    config.json alone, no weights read; what the ranks of a sharded teacher shard before rank 0's
    weights reach them (``parallel.shard_frozen_from_rank0``)."""
    family = family or family_of_spec(spec)
    try:
        return get_family(family).skeleton(spec, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as e:
        raise RaykdError(f"teacher {spec}: cannot read its config: {type(e).__name__}: {str(e).splitlines()[0]}") \
            from None
