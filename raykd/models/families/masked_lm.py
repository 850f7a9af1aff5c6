"""The ``masked_lm`` family: BERT-style encoders with a masked-LM head (``BertForMaskedLM`` and what
``AutoModelForMaskedLM`` loads). Task: masked-LM on BERT's 80/10/10 corruption."""

from __future__ import annotations

import copy
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import RaykdError
from .base import ModelFamily, TeacherShape


def mask_tokens(ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, vocab_size: int, prob: float,
                generator: torch.Generator, special_ids: tuple[int, ...] = (0, 1, 2, 3, 4)):
    """BERT MLM corruption: choose ``prob`` of the real, non-special tokens; 80 % → [MASK], 10 % →
    a random non-special token of the vocabulary, 10 % kept. Returns (corrupted ids, chosen-position
    mask)."""
    eligible = attention_mask.bool()
    for s in special_ids:
        eligible &= ids != s
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & eligible
    roll = torch.rand(ids.shape, generator=generator)
    out = ids.clone()
    out[chosen & (roll < 0.8)] = mask_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    allowed = _non_special(vocab_size, tuple(special_ids))
    out[rand] = allowed[torch.randint(len(allowed), (int(rand.sum()),), generator=generator)]
    return out, chosen


_NON_SPECIAL: dict = {}


def _non_special(vocab_size: int, special_ids: tuple[int, ...]) -> torch.Tensor:
    """The token ids of a vocabulary that are not special (cached per vocabulary and specials)."""
    key = (vocab_size, special_ids)
    if key not in _NON_SPECIAL:
        keep = torch.ones(vocab_size, dtype=torch.bool)
        keep[[i for i in special_ids if 0 <= i < vocab_size]] = False
        _NON_SPECIAL[key] = keep.nonzero().squeeze(1)
    return _NON_SPECIAL[key]


class MaskedLM(ModelFamily):
    name = "masked_lm"
    layer_key = re.compile(r"encoder\.layer\.(\d+)\.")
    export_classes = ("AutoModel", "AutoModelForMaskedLM")

    def matches(self, model):
        # an encoder with a token head: not a decoder, nor an encoder-decoder (which has an encoder and a head too)
        return hasattr(getattr(model, "base_model", None), "encoder") and not model.config.is_decoder \
            and not getattr(model.config, "is_encoder_decoder", False) \
            and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None

    def build(self, shape: TeacherShape, vocab_size: int, pad_token_id: int = 0, bos_token_id=None, eos_token_id=None):
        from transformers import BertConfig, BertForMaskedLM

        if shape.hidden % shape.heads:
            raise RaykdError(f"teacher: hidden {shape.hidden} is not divisible by heads {shape.heads}")
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                         max_position_embeddings=shape.max_position, pad_token_id=pad_token_id)
        return BertForMaskedLM(cfg)

    def auto_class(self):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def load(self, spec: str, trust_remote_code: bool = False, revision: str | None = None):
        return self.auto_class().from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision,
                                                    use_safetensors=True)

    def student_like(self, teacher, layers, hidden=None, heads=None, intermediate=None):
        cfg = copy.deepcopy(teacher.config)
        cfg.num_hidden_layers = layers
        if hidden is not None and hidden != cfg.hidden_size:
            cfg.hidden_size = hidden
            cfg.num_attention_heads = heads or max(1, hidden // 64)
            cfg.intermediate_size = intermediate or 4 * hidden
        return type(teacher)(cfg)

    def blocks(self, model):
        return model.base_model.encoder.layer

    def backbone(self, model):
        return model.base_model

    def attention_inputs(self, model, hidden_in, layer):
        attn = model.base_model.encoder.layer[layer - 1].attention.self
        return attn.query(hidden_in), attn.key(hidden_in), attn.value(hidden_in)

    def corrupt(self, ids, mask, special_ids, mask_id, vocab_size, prob, generator):
        return mask_tokens(ids, mask, mask_id, vocab_size, prob, generator, special_ids)

    def task_loss(self, logits, ids, chosen, reduction="mean"):
        return F.cross_entropy(logits[chosen], ids[chosen], reduction=reduction)

    def inputs(self, batch, tokens, generator, corrupt, mlm_prob, vocab_size):
        q = batch["q_input_ids"]
        ids, mask = _stacked(batch, tokens.pad)
        dept = batch.get("department")
        dept = torch.full((q.shape[0],), -1, dtype=torch.long) if dept is None else dept
        content = mask.bool()
        for s in tokens.special:
            content &= ids != s
        side = torch.cat([torch.zeros(q.shape[0], dtype=torch.long), torch.ones(q.shape[0], dtype=torch.long)])
        out = {"ids": ids, "mask": mask, "content": content, "department": torch.cat([dept, dept]).to(ids.device),
               "input_ids": ids, "chosen": None, "group": side.to(ids.device)}
        if corrupt:
            if vocab_size is None:
                raise ValueError("make_inputs: corrupt=True needs vocab_size")
            gen = generator or torch.Generator().manual_seed(0)
            corrupted, chosen = self.corrupt(ids.cpu(), mask.cpu(), tokens.special, tokens.mask, vocab_size, mlm_prob,
                                             gen)
            out["input_ids"], out["chosen"] = corrupted.to(ids.device), chosen.to(ids.device)
        return out

    def labels_at(self, ids, chosen):
        return ids[chosen]

    def adaptation_step(self, model, batch, tokens, settings, generator, device):
        """MLM on both sides + in-batch InfoNCE between the masked-mean representations of each question and
        its answer (temperature ``settings.temperature``, weight ``settings.contrastive_weight``)."""
        ids, mask = _stacked(batch, tokens["pad"])
        corrupted, chosen = self.corrupt(ids, mask, tokens["special"], tokens["mask"], model.config.vocab_size,
                                         settings.mlm_prob, generator)
        ids, mask, corrupted, chosen = ids.to(device), mask.to(device), corrupted.to(device), chosen.to(device)
        out = model(input_ids=corrupted, attention_mask=mask, output_hidden_states=True)
        mlm = self.task_loss(out.logits, ids, chosen) if chosen.any() else out.logits.sum() * 0
        clean = self.backbone(model)(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.to(clean.dtype).unsqueeze(-1)
        y = F.normalize((clean * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
        b = batch["q_input_ids"].shape[0]
        sim = y[:b] @ y[b:].T / settings.temperature
        target = torch.arange(b, device=device)
        con = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
        return mlm + settings.contrastive_weight * con, {"mlm": mlm, "qa-contrastive": con}

    def count_tokens(self, batch):
        return None  # masked-LM terms are per-batch means (the masked count is random)

    def save(self, model: nn.Module, out) -> None:
        model.save_pretrained(os.fspath(out), safe_serialization=True)


def _stacked(batch: dict, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair batch's questions and answers stacked into 2b rows, padded to one width: (ids, mask) [2b, t]."""
    q, a = batch["q_input_ids"], batch["a_input_ids"]
    width = max(q.shape[1], a.shape[1])
    ids = torch.cat([F.pad(q, (0, width - q.shape[1]), value=pad), F.pad(a, (0, width - a.shape[1]), value=pad)])
    mask = torch.cat([F.pad(batch["q_attention_mask"], (0, width - q.shape[1])),
                      F.pad(batch["a_attention_mask"], (0, width - a.shape[1]))])
    return ids, mask
