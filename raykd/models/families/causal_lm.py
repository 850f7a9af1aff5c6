"""The ``causal_lm`` family: decoder LMs with a language-model head (``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ``GPT2LMHeadModel`` and what ``AutoModelForCausalLM`` loads). Task: next-token
prediction on the response tokens of a prompt + response sequence (``data.template``)."""

from __future__ import annotations

import copy
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import RaykdError
from .base import ModelFamily, TeacherShape

ARCHS = ("llama", "qwen2", "gpt2")


def _blocks(model: nn.Module):
    """The transformer blocks of a causal LM (LLaMA / Qwen2: ``layers``; GPT-2: ``h``)."""
    base = model.base_model
    return base.layers if hasattr(base, "layers") else base.h


class CausalLM(ModelFamily):
    name = "causal_lm"
    layer_key = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
    export_classes = ("AutoModelForCausalLM",)

    def matches(self, model):
        return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))

    def build(self, shape: TeacherShape, vocab_size: int, pad_token_id: int = 0, bos_token_id=None,
              eos_token_id=None):
        arch = shape.arch or ARCHS[0]
        if shape.hidden % shape.heads:
            raise RaykdError(f"teacher: hidden {shape.hidden} is not divisible by heads {shape.heads}")
        ids = {"pad_token_id": pad_token_id, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
        if arch in ("llama", "qwen2"):
            from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

            cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
            cfg = cfg_cls(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                          num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                          intermediate_size=shape.intermediate, max_position_embeddings=shape.max_position,
                          tie_word_embeddings=False, **ids)
            return model_cls(cfg)
        if arch == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel

            cfg = GPT2Config(vocab_size=vocab_size, n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads,
                             n_inner=shape.intermediate, n_positions=shape.max_position, **ids)
            return GPT2LMHeadModel(cfg)
        raise RaykdError(f"teacher.arch {arch!r}: a causal_lm teacher is one of {', '.join(ARCHS)}")

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load(self, spec: str, trust_remote_code: bool = False, revision: str | None = None):
        return self.auto_class().from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision,
                                                    use_safetensors=True)

    def student_like(self, teacher, layers, hidden=None, heads=None, intermediate=None):
        cfg = copy.deepcopy(teacher.config)
        cfg.num_hidden_layers = layers  # GPT-2's config maps it to n_layer
        if hidden is not None and hidden != cfg.hidden_size:
            cfg.hidden_size = hidden
            cfg.num_attention_heads = heads or max(1, hidden // 64)
            if hasattr(cfg, "num_key_value_heads"):
                cfg.num_key_value_heads = cfg.num_attention_heads
            if getattr(cfg, "head_dim", None) is not None:
                cfg.head_dim = hidden // cfg.num_attention_heads
            if hasattr(cfg, "n_inner"):
                cfg.n_inner = intermediate or 4 * hidden
            else:
                cfg.intermediate_size = intermediate or 4 * hidden
        if hasattr(cfg, "layer_types") and getattr(cfg, "layer_types", None):  # Qwen2: one entry per layer
            cfg.layer_types = list(cfg.layer_types)[:layers]
        return type(teacher)(cfg)

    def blocks(self, model):
        return _blocks(model)

    def backbone(self, model):
        return model.base_model

    def attention_inputs(self, model, hidden_in, layer):
        block = _blocks(model)[layer - 1]
        if hasattr(block, "self_attn"):  # LLaMA / Qwen2: pre-norm, separate projections (k, v narrower under GQA)
            x = block.input_layernorm(hidden_in)
            a = block.self_attn
            return a.q_proj(x), a.k_proj(x), a.v_proj(x)
        x = block.ln_1(hidden_in)  # GPT-2: one fused projection
        return block.attn.c_attn(x).split(hidden_in.shape[-1], dim=2)

    def corrupt(self, ids, mask, special_ids, mask_id, vocab_size, prob, generator):
        """No corruption (a causal LM reads its input as it is); the task positions are those whose next
        token is a real token (plain language modelling of the whole sequence)."""
        return ids, _next_is(mask.bool())

    def task_loss(self, logits, ids, chosen, reduction="mean"):
        return F.cross_entropy(logits[chosen], self.labels_at(ids, chosen), reduction=reduction)

    def labels_at(self, ids, chosen):
        return torch.roll(ids, -1, dims=1)[chosen]

    def inputs(self, batch, tokens, generator, corrupt, mlm_prob, vocab_size):
        ids, mask, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        dept = batch.get("department")
        dept = torch.full((ids.shape[0],), -1, dtype=torch.long, device=ids.device) if dept is None else dept
        out = {"ids": ids, "mask": mask, "content": response.bool(), "department": dept, "input_ids": ids,
               "chosen": _next_is(response.bool()), "response": response}
        if "span" in batch:  # each response token's span across the two tokenizations (gold)
            out["span"] = batch["span"]
        if "teacher" in batch:  # the teacher's own tokenization of the same pairs (a cross-tokenizer study)
            out["teacher_inputs"] = self.inputs(batch["teacher"], tokens, generator, corrupt, mlm_prob, vocab_size)
        return out

    def adaptation_step(self, model, batch, tokens, settings, generator, device):
        """Continued causal-LM training: the next-token loss at every real token of prompt + response."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        _, chosen = self.corrupt(ids, mask, (), 0, 0, 0.0, None)
        ids, mask, chosen = ids.to(device), mask.to(device), chosen.to(device)
        lm = self.task_loss(model(input_ids=ids, attention_mask=mask).logits, ids, chosen)
        return lm, {"causal-lm": lm}

    def count_tokens(self, batch):
        return int(batch["response_mask"].sum())

    def save(self, model: nn.Module, out) -> None:
        model.save_pretrained(os.fspath(out), safe_serialization=True)


def _next_is(flags: torch.Tensor) -> torch.Tensor:
    """Positions p whose next position p + 1 is flagged (the last position never is)."""
    return F.pad(flags[:, 1:], (0, 1), value=False)
