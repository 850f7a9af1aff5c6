"""The student: a model of the teacher's family and class with L_S layers built from the teacher's
config (a BERT masked-LM for ``masked_lm``), initialised from the teacher's mapped layers when the
widths match, plus (for the structural method) the multi-granularity aggregation that gives its
output representation Y."""

from __future__ import annotations

import torch
import torch.nn as nn

from .families import family as get_family
from .families import family_of, family_of_spec
from .mapping import layer_map
from .modules import MultiGranularityAggregation


class Student(nn.Module):
    """A model of one family (``mlm``: its HF model with the task head) and its output representation.

    ``encode`` is the student alone (what every metric measures): (last hidden [b, t, d], Y [b, d]);
    Y is the aggregation when present, else the masked mean of the last layer.
    """

    def __init__(self, mlm: nn.Module, aggregation: MultiGranularityAggregation | None = None):
        super().__init__()
        self.mlm = mlm
        self.aggregation = aggregation
        self.family = family_of(mlm)

    @property
    def config(self):
        return self.mlm.config

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=True):
        """The HF model's output (``logits``, ``hidden_states``) for ids or input embeddings."""
        return self.mlm(input_ids=None if inputs_embeds is not None else input_ids, attention_mask=attention_mask,
                        inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input word embeddings E [b, t, d] (position and type embeddings are added inside)."""
        return self.mlm.get_input_embeddings()(input_ids)

    def represent(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Y [b, d] from the last hidden layer."""
        if self.aggregation is not None:
            return self.aggregation(last_hidden, attention_mask)
        m = attention_mask.to(last_hidden.dtype).unsqueeze(-1)
        return (last_hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden layer [b, t, d], output representation Y [b, d]) of the student alone."""
        h = self.family.backbone(self.mlm)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return h, self.represent(h, attention_mask)


def build_student(teacher: nn.Module, layers: int, hidden: int | None = None, heads: int | None = None,
                  intermediate: int | None = None, aggregation: bool = False, init_from_teacher: bool = True,
                  tokens: dict | None = None) -> Student:
    """A Student with ``layers`` layers from the teacher's config (optionally narrower).

    With the teacher's width, embeddings, task head and layer i ← teacher layer g(i) of the uniform
    map are copied; otherwise the student starts from random initialisation. ``tokens`` — the student's
    own tokenizer (``vocab_size``, ``pad_token_id``, ``bos_token_id``, ``eos_token_id``) when it is not
    the teacher's: then its embeddings and head are fresh (normal, σ = the config's initializer_range)
    and never copied, whatever their sizes (a row of the teacher's means another token)."""
    family = family_of(teacher)
    mlm = family.student_like(teacher, layers, hidden, heads, intermediate)
    cfg = mlm.config
    fresh: set[str] = set()
    if tokens is not None:
        fresh = _own_vocabulary(mlm, tokens)
    if init_from_teacher and cfg.hidden_size == teacher.config.hidden_size:
        source = {i - 1: g - 1 for i, g in layer_map(teacher.config.num_hidden_layers, layers)}
        t_sd = teacher.state_dict()
        s_sd = mlm.state_dict()
        for name in s_sd:
            m = family.layer_key.search(name)
            src = name if m is None else f"{name[:m.start(1)]}{source[int(m.group(1))]}{name[m.end(1):]}"
            if name not in fresh and src in t_sd and t_sd[src].shape == s_sd[name].shape:
                s_sd[name] = t_sd[src]
        mlm.load_state_dict(s_sd)
    return Student(mlm, MultiGranularityAggregation(cfg.hidden_size) if aggregation else None)


def _own_vocabulary(mlm: nn.Module, tokens: dict) -> set[str]:
    """Give ``mlm`` the student's own vocabulary: embeddings and head resized to ``tokens["vocab_size"]``
    and drawn afresh, the special ids set in its config. Returns the state-dict names of those weights."""
    mlm.resize_token_embeddings(int(tokens["vocab_size"]))
    std = float(getattr(mlm.config, "initializer_range", 0.02))
    layers = [m for m in (mlm.get_input_embeddings(), mlm.get_output_embeddings()) if m is not None]
    for m in layers:
        nn.init.normal_(m.weight, std=std)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if key in tokens:
            setattr(mlm.config, key, tokens[key])
            if getattr(mlm, "generation_config", None) is not None:
                setattr(mlm.generation_config, key, tokens[key])
    owned = {id(m.weight) for m in layers} | {id(m.bias) for m in layers if getattr(m, "bias", None) is not None}
    return {n for n, p in mlm.named_parameters(remove_duplicate=False) if id(p) in owned}


def enable_checkpointing(model: nn.Module) -> None:
    """HF activation (gradient) checkpointing of ``model``'s blocks, non-reentrant: transformers 5's
    ``activation_checkpointing_enable``, else 4.x's ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def load_student(spec: str, revision: str | None = None, aggregation: bool = False) -> Student:
    """A Student from its own HF directory or hub id (``student.spec``, e.g. TinyLlama for a LLaMA-2
    teacher; safetensors only, no remote code); its family is what its config.json names."""
    from ..errors import RaykdError

    fam = get_family(family_of_spec(spec))
    try:
        mlm = fam.load(spec, trust_remote_code=False, revision=revision)
    except Exception as e:  # transformers raises OSError/ValueError/hub errors
        raise RaykdError(f"student {spec}: cannot load: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return Student(mlm, MultiGranularityAggregation(mlm.config.hidden_size) if aggregation else None)


def manifest_tokens(manifest: dict) -> dict:
    """The vocabulary size and special ids of a prepared directory's tokenizer (its manifest), as
    ``build_student``'s ``tokens`` (a student with a tokenizer other than its teacher's)."""
    t = manifest["tokenizer"]
    return {"vocab_size": int(t["vocab_size"]), **{k: t.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}}


def student_for(teacher: nn.Module, s_cfg, aggregation: bool = False, init_from_teacher: bool | None = None,
                tokens: dict | None = None) -> Student:
    """The trial's student from its config section (``StudentConfig``): loaded from ``spec`` when
    set, else cut from the teacher (``build_student``; ``init_from_teacher`` overrides the config's;
    ``tokens``: the student's own tokenizer when it is not the teacher's)."""
    if s_cfg.spec:
        return load_student(s_cfg.spec, s_cfg.revision, aggregation)
    init = s_cfg.init_from_teacher if init_from_teacher is None else init_from_teacher
    return build_student(teacher, s_cfg.layers, s_cfg.hidden, getattr(s_cfg, "heads", None),
                         getattr(s_cfg, "intermediate", None), aggregation=aggregation, init_from_teacher=init,
                         tokens=tokens)
