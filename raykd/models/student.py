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
                  intermediate: int | None = None, aggregation: bool = False, init_from_teacher: bool = True) -> Student:
    """A Student with ``layers`` layers from the teacher's config (optionally narrower).

    With the teacher's width, embeddings, task head and layer i ← teacher layer g(i) of the uniform
    map are copied; otherwise the student starts from random initialisation.
    """
    family = family_of(teacher)
    mlm = family.student_like(teacher, layers, hidden, heads, intermediate)
    cfg = mlm.config
    if init_from_teacher and cfg.hidden_size == teacher.config.hidden_size:
        source = {i - 1: g - 1 for i, g in layer_map(teacher.config.num_hidden_layers, layers)}
        t_sd = teacher.state_dict()
        s_sd = mlm.state_dict()
        for name in s_sd:
            m = family.layer_key.search(name)
            src = name if m is None else f"{name[:m.start(1)]}{source[int(m.group(1))]}{name[m.end(1):]}"
            if src in t_sd and t_sd[src].shape == s_sd[name].shape:
                s_sd[name] = t_sd[src]
        mlm.load_state_dict(s_sd)
    return Student(mlm, MultiGranularityAggregation(cfg.hidden_size) if aggregation else None)


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


def student_for(teacher: nn.Module, s_cfg, aggregation: bool = False, init_from_teacher: bool | None = None) -> Student:
    """The trial's student from its config section (``StudentConfig``): loaded from ``spec`` when
    set, else cut from the teacher (``build_student``; ``init_from_teacher`` overrides the config's)."""
    if s_cfg.spec:
        return load_student(s_cfg.spec, s_cfg.revision, aggregation)
    init = s_cfg.init_from_teacher if init_from_teacher is None else init_from_teacher
    return build_student(teacher, s_cfg.layers, s_cfg.hidden, getattr(s_cfg, "heads", None),
                         getattr(s_cfg, "intermediate", None), aggregation=aggregation, init_from_teacher=init)
