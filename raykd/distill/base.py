"""The objectives' shared interface (``DistillMethod``) and what every objective reads: the special token
ids (``TokenIds``) and the inputs built from a collated batch (``make_inputs``), plus the attention
helpers the attention-relation objectives use. The registered objectives are in ``methods`` (and
``cross_tokenizer``); see ``methods``' docstring for a step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import losses as L
from .chunked import chunked_cross_entropy, chunked_divergence, chunked_topk_divergence
from .topk import sparse_divergence
from .weighting import FixedWeights, GradNormWeights
from ..models.families import ModelFamily, family_of
from ..models.families import family as get_family
from ..models.student import Student


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the prepared tokenizer: the four the objectives use by name, and
    ``others`` — every further id the tokenizer declares special ([UNK], …), read from the tokenizer
    (never assumed: bert-base-chinese's [UNK] is 100, not 1)."""

    pad: int
    cls: int
    sep: int
    mask: int
    others: tuple[int, ...] = ()

    @property
    def special(self) -> tuple[int, ...]:
        return tuple(sorted({self.pad, self.cls, self.sep, self.mask, *self.others} - {None}))

    @classmethod
    def from_manifest(cls, manifest: dict, special_ids: tuple[int, ...] = ()) -> "TokenIds":
        """From a prepared manifest and ``special_ids`` (``data.shards.special_token_ids``)."""
        t = manifest["tokenizer"]
        return cls(t["pad_token_id"], t["cls_token_id"], t["sep_token_id"], t["mask_token_id"], tuple(special_ids))


def make_inputs(batch: dict, tokens: TokenIds, generator: torch.Generator | None = None, corrupt: bool = False,
                mlm_prob: float = 0.15, vocab_size: int | None = None, family: ModelFamily | None = None) -> dict:
    """The objectives' inputs from a collated batch, by the model ``family`` (default ``masked_lm``):
    ``ids, mask`` [n, t], ``content`` (the tokens hidden-state terms count), ``department`` [n],
    ``input_ids`` (what the models read) and ``chosen`` (where task loss and logit terms are taken).

    ``masked_lm``: a batch's questions and answers stacked into 2b sequences; with ``corrupt`` BERT
    masking at ``mlm_prob`` gives ``input_ids`` and ``chosen`` (else ``input_ids`` = ids).
    ``causal_lm``: one prompt + response sequence per pair; ``chosen`` = the positions whose next
    token is a response token; ``content`` = the response tokens.
    """
    return (family or get_family()).inputs(batch, tokens, generator, corrupt, mlm_prob, vocab_size)


def _linear_or_identity(d_in: int, d_out: int) -> nn.Module:
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)


def attention_inputs(model, hidden_in: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value vectors [b, t, d] of block ``layer`` (1-based) for its input states (the
    model's family knows where they are)."""
    return family_of(model).attention_inputs(model, hidden_in, layer)


def _heads(model) -> int:
    return model.config.num_attention_heads


def attention_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-softmax attention scores [b, heads, t, t] = q_h k_hᵀ / √d_h."""
    b, t, d = q.shape
    qh = q.view(b, t, heads, d // heads).transpose(1, 2)
    kh = k.view(b, t, heads, d // heads).transpose(1, 2)
    return qh @ kh.transpose(-1, -2) / math.sqrt(d // heads)


class DistillMethod(nn.Module):
    """Base: a student, its trainable extras, a weighting of loss terms. Subclasses define
    ``teacher_layers`` (teacher hidden states needed), ``uses_mlm`` (MLM logits on corrupted inputs)
    and ``losses``. The docstring of each subclass names its source paper."""

    uses_mlm = False
    needs_qkv = False
    chunkable = False  # computes its logit terms through ce_term / divergence_term (chunked when large)

    def __init__(self, student: Student, teacher_config, weights: dict | None = None, dynamic_weights: bool = False):
        super().__init__()
        self.student = student
        self.t_layers = teacher_config.num_hidden_layers
        self.t_hidden = teacher_config.hidden_size
        self.t_heads = teacher_config.num_attention_heads
        self.s_layers = student.config.num_hidden_layers
        self.s_hidden = student.config.hidden_size
        self.weighting = GradNormWeights(weights) if dynamic_weights else FixedWeights(weights)
        self.progress = 0.0
        self.family = student.family  # the task loss and corruption of the student's model family
        # the tokenizer's real vocabulary: logits are compared over it when an embedding matrix is padded
        # beyond it (e.g. 151,936 vs 152,064 rows over one tokenizer); None: the logits as they are
        self.vocab: int | None = None
        # a causal batch with more task positions than this computes its logit terms chunk by chunk, this
        # many tokens at a time, never holding [tokens × vocabulary] logits (train.chunked_loss_tokens; 0: never)
        self.chunk_tokens: int = 0

    # -- teacher side ------------------------------------------------------------------------------------
    def teacher_layers(self) -> list[int]:
        """Indices into the teacher's ``hidden_states`` this method needs (0 = embeddings)."""
        return [self.t_layers]

    def use_chunked(self, inputs: dict) -> bool:
        """Whether this batch's logit terms run chunked (decided once per batch, kept in ``inputs``)."""
        if "chunked" not in inputs:
            inputs["chunked"] = bool(self.chunkable and self.chunk_tokens > 0 and self.family.spec.chunked_loss
                                     and int(inputs["chosen"].sum()) > self.chunk_tokens)
        return inputs["chunked"]

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs: dict) -> dict:
        """What the objective needs from the teacher for these inputs (no gradients). Chunked: the
        final hidden states at the task positions and the LM head instead of the logits."""
        chunked = self.uses_mlm and self.use_chunked(inputs)
        out = self.family.run(teacher.base_model if chunked else teacher, inputs)
        hs = out.hidden_states
        targets = {"hidden": {i: hs[i] for i in sorted(set(self.teacher_layers()) | {self.t_layers})}}
        if chunked:
            head = teacher.get_output_embeddings()
            targets["final_hidden"] = out.last_hidden_state[inputs["chosen"]]
            targets["head"] = (head.weight, head.bias)
        elif self.uses_mlm:
            targets["logits"] = self._vocab_slice(out.logits[inputs["chosen"]])
        if self.needs_qkv:
            targets["qkv"] = {i: attention_inputs(teacher, hs[i - 1], i) for i in self.qkv_layers()}
        return targets

    def qkv_layers(self) -> list[int]:
        return []

    def _vocab_slice(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.vocab is None or logits.shape[-1] <= self.vocab else logits[..., :self.vocab]

    def task_logits(self, out, inputs: dict) -> torch.Tensor:
        """The student's logits [k, V] at the task positions (``chosen``), over the tokenizer's vocabulary."""
        return self._vocab_slice(out.logits[inputs["chosen"]])

    def task_labels(self, inputs: dict) -> torch.Tensor:
        """The true token ids [k] at the task positions (the family's: masked token / next token)."""
        return self.family.labels_at(inputs["ids"], inputs["chosen"])

    def ce_term(self, out, inputs: dict) -> torch.Tensor:
        """Cross-entropy of the student's task head against the true tokens at the task positions
        (÷ ``num_tokens`` when the trial passes it); chunked when the batch is (``use_chunked``)."""
        n = inputs.get("num_tokens")
        if inputs.get("chunked"):
            head = self.student.mlm.get_output_embeddings()
            return chunked_cross_entropy(out.last_hidden_state[inputs["chosen"]], head.weight, self.task_labels(inputs),
                                         b=head.bias, num_tokens=n, chunk_tokens=self.chunk_tokens, vocab=self.vocab)
        return L.token_cross_entropy(self.task_logits(out, inputs), self.task_labels(inputs), num_tokens=n)

    def divergence_term(self, out, inputs: dict, targets: dict, name: str, temperature: float = 1.0,
                        beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
        """``losses.divergence(name, …)`` between student and teacher at the task positions (÷
        ``num_tokens`` when passed); chunked from hidden states and heads when the batch is."""
        n = inputs.get("num_tokens")
        if "topk_ids" in targets:  # a cached top-k teacher (raykd.distill.topk): k tokens + the tail bucket
            return self._topk_term(out, inputs, targets, name, temperature, beta, alpha)
        if inputs.get("chunked"):
            head = self.student.mlm.get_output_embeddings()
            w_t, b_t = targets["head"]
            return chunked_divergence(out.last_hidden_state[inputs["chosen"]], head.weight, targets["final_hidden"], w_t,
                                      b_s=head.bias, b_t=b_t, divergence=name, temperature=temperature, beta=beta,
                                      alpha=alpha, num_tokens=n, chunk_tokens=self.chunk_tokens, vocab=self.vocab)
        return L.divergence(name, self.task_logits(out, inputs), targets["logits"], temperature=temperature, beta=beta,
                            alpha=alpha, num_tokens=n)

    def _topk_term(self, out, inputs: dict, targets: dict, name: str, temperature: float, beta: float,
                   alpha: float) -> torch.Tensor:
        """``divergence_term`` against a cached top-k teacher (``targets["topk_ids"]``, ``["topk_lp"]``
        at ``temperature``), chunked when the batch is."""
        n, ids, lp = inputs.get("num_tokens"), targets["topk_ids"], targets["topk_lp"]
        if targets.get("topk_temperature", temperature) != temperature:
            raise ValueError(f"cached top-k teacher at T = {targets['topk_temperature']}, the objective uses T = "
                             f"{temperature}")
        if inputs.get("chunked"):
            head = self.student.mlm.get_output_embeddings()
            return chunked_topk_divergence(out.last_hidden_state[inputs["chosen"]], head.weight, ids, lp,
                                           b_s=head.bias, divergence=name, temperature=temperature, beta=beta,
                                           alpha=alpha, num_tokens=n, chunk_tokens=self.chunk_tokens, vocab=self.vocab)
        return sparse_divergence(name, self.task_logits(out, inputs), ids, lp, temperature=temperature, beta=beta,
                                 alpha=alpha, num_tokens=n)

    # -- student side ------------------------------------------------------------------------------------
    def student_forward(self, inputs: dict, targets: dict):
        if self.uses_mlm and self.use_chunked(inputs):  # the trunk only: the head runs chunk by chunk in the loss
            return self.family.run(self.student.mlm.base_model, inputs)
        return self.family.run(self.student, inputs)

    def losses(self, inputs: dict, targets: dict, out) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every loss term depends on (for gradient-aware weights): the word embeddings."""
        return [self.student.mlm.get_input_embeddings().weight]

    def forward(self, inputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        """{"loss": weighted total, each term: its value} for one batch."""
        out = self.student_forward(inputs, targets)
        terms = self.losses(inputs, targets, out)
        total = self.weighting.combine(terms, self.shared_parameters())
        return {"loss": total, **terms}

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] (annealing schedules use it)."""
        self.progress = float(fraction)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The student alone: (last hidden [b, t, d], output representation [b, d])."""
        return self.student.encode(input_ids, attention_mask)

    def _teacher_sentence(self, targets: dict, inputs: dict) -> torch.Tensor:
        return L.masked_mean(targets["hidden"][self.t_layers], inputs["mask"])
