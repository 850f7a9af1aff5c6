"""The model-family interface: everything raykd needs that depends on one architecture family (where
layers and attention live, the task loss and its input corruption, special tokens, how a student is
cut from a teacher, what latency times, the export format). Nothing outside a family module branches
on the family. Pure torch + transformers, no Ray."""

from __future__ import annotations

import re
import torch
import torch.nn as nn

from .spec import FamilySpec, TeacherShape, family_spec  # noqa: F401 (TeacherShape: part of the interface)


class ModelFamily:
    """One architecture family's torch side. Subclasses implement every method; ``families.family(name)`` holds
    one instance each. What the family declares without torch is its ``spec``."""

    name: str = ""
    layer_key: re.Pattern  # matches a state-dict key of transformer block i; group 1 is i (0-based)
    export_classes: tuple[str, ...] = ()  # the transformers Auto classes that load an exported student

    @property
    def spec(self) -> FamilySpec:
        """This family's declaration (``spec.FamilySpec``)."""
        return family_spec(self.name)

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` (an HF model) belongs to this family."""
        raise NotImplementedError

    def build(self, shape: TeacherShape, vocab_size: int, pad_token_id: int = 0, bos_token_id: int | None = None,
              eos_token_id: int | None = None) -> nn.Module:
        """A randomly initialised model of ``shape`` (the caller seeds torch)."""
        raise NotImplementedError

    def inputs(self, batch: dict, tokens, generator: torch.Generator | None, corrupt: bool, mlm_prob: float,
               vocab_size: int | None) -> dict:
        """A collated batch → the objectives' inputs: ``ids``, ``mask`` [n, t], ``content`` (the tokens
        hidden-state terms count), ``department`` [n], ``input_ids`` (what the models read),
        ``chosen`` (the positions the task loss and logit terms are taken at; None without ``corrupt``)
        and, where rows are of different kinds, ``group`` [n] (masked_lm: 0 question, 1 answer; absent:
        one kind — example×example relations are compared within a group only)."""
        raise NotImplementedError

    def run(self, model: nn.Module, inputs: dict, hidden: bool = True):
        """``model``'s output for the objectives' ``inputs`` (``inputs()``): ``logits`` [n, t, V] (the positions
        ``chosen`` indexes) and, with ``hidden``, ``hidden_states`` (the states hidden-state terms align, counted
        at ``content``). ``model`` is an HF model of this family, its trunk (``last_hidden_state``) or a raykd
        Student. The default reads ``input_ids`` (or input embeddings ``embeds`` [n, t, d] in their place) under
        ``mask``; a family whose models read more (an encoder-decoder's decoder inputs) overrides it."""
        if "embeds" in inputs:
            return model(inputs_embeds=inputs["embeds"], attention_mask=inputs["mask"], output_hidden_states=hidden)
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["mask"], output_hidden_states=hidden)

    def labels_at(self, ids: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The true token ids [k] the logits at the ``chosen`` positions predict."""
        raise NotImplementedError

    def count_tokens(self, batch: dict) -> int | None:
        """The tokens of a collated batch its token-level losses count (for ``num_tokens``
        normalisation over an optimizer step), or None when the family's losses are per-batch means."""
        raise NotImplementedError

    def load(self, spec: str, trust_remote_code: bool = False, revision: str | None = None) -> nn.Module:
        """The model in an HF directory or hub id (safetensors only); raises on failure."""
        raise NotImplementedError

    def skeleton(self, spec: str, trust_remote_code: bool = False, revision: str | None = None) -> nn.Module:
        """The model of an HF directory or hub id built from its config alone on the meta device: its
        architecture and parameter shapes, no weights read, no memory held."""
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision)
        with torch.device("meta"):
            return self.auto_class().from_config(cfg, trust_remote_code=trust_remote_code)

    def auto_class(self):
        """The transformers Auto class of this family's models."""
        raise NotImplementedError

    def student_like(self, teacher: nn.Module, layers: int, hidden: int | None = None, heads: int | None = None,
                     intermediate: int | None = None) -> nn.Module:
        """A fresh model of the teacher's class and config with ``layers`` blocks (and optionally a
        narrower width: ``heads`` default width/64, ``intermediate`` 4·width), randomly initialised."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks, in order (what FSDP shards one by one)."""
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module:
        """The trunk without the task head (``last_hidden_state``): what encodes, and what latency times."""
        raise NotImplementedError

    def attention_inputs(self, model: nn.Module, hidden_in: torch.Tensor, layer: int):
        """(query, key, value) [b, t, d] of block ``layer`` (1-based) for its input states."""
        raise NotImplementedError

    def corrupt(self, ids: torch.Tensor, mask: torch.Tensor, special_ids: tuple[int, ...], mask_id: int,
                vocab_size: int, prob: float, generator: torch.Generator):
        """The task's input corruption: (model input ids, positions the task loss is taken at [bool])."""
        raise NotImplementedError

    def task_loss(self, logits: torch.Tensor, ids: torch.Tensor, chosen: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
        """The task loss at the ``chosen`` positions (nats per token): logits [n, t, V], true ids [n, t]."""
        raise NotImplementedError

    def adaptation_step(self, model: nn.Module, batch: dict, tokens: dict, settings, generator: torch.Generator,
                        device) -> tuple[torch.Tensor, dict]:
        """One batch of teacher domain adaptation (``raykd.stages.adapt``): ``batch`` collated as the family's
        study collates its rows (token ids on the CPU), ``tokens`` the ids {pad, mask, special}, ``settings``
        the ``AdaptSettings``; random draws from ``generator`` on the CPU. Returns (the loss to minimise, {term
        name: value} for the log), both on ``device``."""
        raise NotImplementedError

    def card_intro(self, student, teacher, method: str) -> list[str] | None:
        """The opening lines (Markdown) of an exported student's model card: what it is and how to load and use
        it with plain transformers; None: the export's own (a generating family's claim numbers and generation
        recipe, else an encoder's loading and representation recipe)."""
        return None

    def save(self, model: nn.Module, out) -> None:
        """Write ``model`` as a plain HF directory (safetensors) that ``export_classes`` load."""
        raise NotImplementedError


INTERFACE = ("matches", "build", "auto_class", "load", "student_like", "blocks", "backbone", "attention_inputs", "corrupt", "task_loss",
             "save", "inputs", "labels_at", "count_tokens", "adaptation_step")
