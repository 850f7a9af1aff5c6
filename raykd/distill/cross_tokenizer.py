"""Objectives that distil across tokenizers: teacher and student read the same text through their own
tokenizers, so nothing compares one vocabulary entry of the two models with another. Registered with
the other methods (``raykd.distill.methods`` imports this module).

A batch then carries the teacher's own tokenization beside the student's (``inputs["teacher_inputs"]``,
built by the family from the data's second tokenization); with one tokenizer on both sides (no
``teacher_inputs``) the teacher reads the student's inputs, and the objectives are the same functions of
two distributions over one vocabulary."""

from __future__ import annotations

import torch

from . import losses as L
from .chunked import chunked_uld
from .base import DistillMethod
from ..registry import METHODS


def aligned_positions(chosen_s: torch.Tensor, chosen_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ULD's sequence alignment (Boizard et al. 2024, §3: both responses cut to the shorter): for task
    positions ``chosen_s`` [b, t_s] and ``chosen_t`` [b, t_t] (bool), the indices into each side's
    row-major list of task positions (``logits[chosen]``) of the first min(n_s, n_t) positions of every
    row, in the same order — (student indices [m], teacher indices [m]), pair j = the same row and rank."""
    if chosen_s.shape[0] != chosen_t.shape[0]:
        raise ValueError(f"aligned_positions: {chosen_s.shape[0]} student rows, {chosen_t.shape[0]} teacher rows")
    m = torch.minimum(chosen_s.sum(1), chosen_t.sum(1).to(chosen_s.device))

    def pick(chosen: torch.Tensor) -> torch.Tensor:
        rank = chosen.long().cumsum(1) - 1
        return (rank < m.to(chosen.device)[:, None])[chosen].nonzero().squeeze(1)

    return pick(chosen_s), pick(chosen_t)


@METHODS.register("uld")
class ULD(DistillMethod):
    """Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs"): the student's cross-entropy on the true response
    tokens (``ce``) + ``uld_weight`` · ``losses.uld_distance`` (``uld``) between the student's and the
    teacher's next-token distributions, each over its own vocabulary, response position i of the
    student aligned with response position i of the teacher on each side's tokenization of the same
    pair (both cut to the shorter, as the paper). Departure: the paper distils on teacher-generated
    answers; here on the corpus's answers, as every other causal method. The distance is summed over
    aligned positions and divided like the cross-entropy (per counted student response token)."""

    uses_mlm = True
    chunkable = True

    def __init__(self, student, teacher_config, temperature: float = 1.0, uld_weight: float = 1.0, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, {"uld": uld_weight, **(weights or {})}, dynamic_weights)
        self.temperature = temperature
        self.teacher_vocab: int | None = None  # the teacher's tokenizer's real vocabulary (None: the student's)

    def teacher_layers(self):
        return []

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        t_in = inputs.get("teacher_inputs", inputs)
        chunked = self.use_chunked(inputs)
        out = self.family.run(teacher.base_model if chunked else teacher, t_in, hidden=False)
        s_idx, t_idx = aligned_positions(inputs["chosen"], t_in["chosen"])
        targets = {"student_index": s_idx}
        if chunked:
            head = teacher.get_output_embeddings()
            targets["final_hidden"] = out.last_hidden_state[t_in["chosen"]][t_idx]
            targets["head"] = (head.weight, head.bias)
        else:
            logits = out.logits[t_in["chosen"]][t_idx]
            v = self.teacher_vocab if "teacher_inputs" in inputs else self.vocab
            targets["logits"] = logits if v is None else logits[..., :v]
        return targets

    def losses(self, inputs, targets, out):
        n, idx = inputs.get("num_tokens"), targets["student_index"]
        if inputs.get("chunked"):
            head = self.student.mlm.get_output_embeddings()
            w_t, b_t = targets["head"]
            uld = chunked_uld(out.last_hidden_state[inputs["chosen"]][idx], head.weight, targets["final_hidden"], w_t,
                              b_s=head.bias, b_t=b_t, temperature=self.temperature, num_tokens=n or idx.numel(),
                              chunk_tokens=self.chunk_tokens, vocab_s=self.vocab,
                              vocab_t=self.teacher_vocab if "teacher_inputs" in inputs else self.vocab)
        else:
            uld = L.uld_distance(self.task_logits(out, inputs)[idx], targets["logits"], temperature=self.temperature,
                                 num_tokens=n or idx.numel())
        return {"ce": self.ce_term(out, inputs), "uld": uld}
