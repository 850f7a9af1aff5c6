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
from .chunked import chunked_gold, chunked_uld
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


class CrossTokenizerMethod(DistillMethod):
    """What ``uld`` and ``gold`` share: the teacher run on its own tokenization (``teacher_inputs``; the
    student's inputs with one tokenizer), its logits compared over its own tokenizer's vocabulary, no
    teacher layers read, chunkable."""

    uses_mlm = True
    chunkable = True

    def __init__(self, student, teacher_config, weights: dict, dynamic_weights: bool):
        super().__init__(student, teacher_config, weights, dynamic_weights)
        self.teacher_vocab: int | None = None  # the teacher's tokenizer's real vocabulary (None: the student's)

    def teacher_layers(self):
        return []

    def teacher_pass(self, teacher, inputs: dict):
        """(the teacher's inputs, whether this batch runs chunked, the teacher's output: its trunk's when
        chunked — the head is applied chunk by chunk — else the full model's)."""
        t_in = inputs.get("teacher_inputs", inputs)
        chunked = self.use_chunked(inputs)
        return t_in, chunked, self.family.run(teacher.base_model if chunked else teacher, t_in, hidden=False)

    def teacher_side_vocab(self, inputs: dict) -> int | None:
        """The vocabulary the teacher's logits are compared over in this batch."""
        return self.teacher_vocab if "teacher_inputs" in inputs else self.vocab


@METHODS.register("uld")
class ULD(CrossTokenizerMethod):
    """Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs"): the student's cross-entropy on the true response
    tokens (``ce``) + ``uld_weight`` · ``losses.uld_distance`` (``uld``) between the student's and the
    teacher's next-token distributions, each over its own vocabulary, response position i of the
    student aligned with response position i of the teacher on each side's tokenization of the same
    pair (both cut to the shorter, as the paper). Departure: the paper distils on teacher-generated
    answers; here on the corpus's answers, as every other causal method. The distance is summed over
    aligned positions and divided like the cross-entropy (per counted student response token)."""

    def __init__(self, student, teacher_config, temperature: float = 1.0, uld_weight: float = 1.0, weights=None,
                 dynamic_weights=False):
        super().__init__(student, teacher_config, {"uld": uld_weight, **(weights or {})}, dynamic_weights)
        self.temperature = temperature

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        t_in, chunked, out = self.teacher_pass(teacher, inputs)
        s_idx, t_idx = aligned_positions(inputs["chosen"], t_in["chosen"])
        targets = {"student_index": s_idx}
        if chunked:
            head = teacher.get_output_embeddings()
            targets["final_hidden"] = out.last_hidden_state[t_in["chosen"]][t_idx]
            targets["head"] = (head.weight, head.bias)
        else:
            logits = out.logits[t_in["chosen"]][t_idx]
            v = self.teacher_side_vocab(inputs)
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
                              vocab_t=self.teacher_side_vocab(inputs))
        else:
            uld = L.uld_distance(self.task_logits(out, inputs)[idx], targets["logits"], temperature=self.temperature,
                                 num_tokens=n or idx.numel())
        return {"ce": self.ce_term(out, inputs), "uld": uld}


def span_ids(inputs: dict, t_in: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The span of each task position's predicted token (``chosen`` order) on the student's and the
    teacher's side, numbered across the batch (row r's span s → r·K + s, K the longer sequence length,
    a bound known from the shapes; -1: none), and rows·K (a bound on them): from the batch's
    ``span`` tensors (a cross-tokenizer batch, ``raykd.data.token_spans``), or — one tokenizer, or a
    batch without spans — position i of a row paired with position i of the other side (cut to the
    shorter, as ``aligned_positions``)."""
    if "span" in inputs and "span" in t_in:
        sides = [torch.roll(x["span"], -1, dims=1)[x["chosen"]] for x in (inputs, t_in)]
        rows = [x["chosen"].nonzero()[:, 0] for x in (inputs, t_in)]
    else:
        sides, rows = [], []
        m = torch.minimum(inputs["chosen"].sum(1), t_in["chosen"].sum(1).to(inputs["chosen"].device))
        for x in (inputs, t_in):
            rank = x["chosen"].long().cumsum(1) - 1
            rank = torch.where(rank < m.to(rank.device)[:, None], rank, torch.full_like(rank, -1))
            sides.append(rank[x["chosen"]])
            rows.append(x["chosen"].nonzero()[:, 0])
    k = max(inputs["chosen"].shape[1], t_in["chosen"].shape[1])
    s_span, t_span = (torch.where(s >= 0, r.to(s.device) * k + s, torch.full_like(s, -1)) for s, r in zip(sides, rows))
    return s_span, t_span, inputs["chosen"].shape[0] * k


@METHODS.register("gold")
class GOLD(CrossTokenizerMethod):
    """GOLD's cross-tokenizer objective (TRL's ``GOLDTrainer`` with ``use_uld_loss``: the byte-offset
    alignment, the "bayesian" span merge and the hybrid loss): the student's cross-entropy (``ce``) +
    ``gold_weight`` · ``losses.gold_distance`` (``gold``) over the spans where both tokenizations of the
    response line up — per span, the shared vocabulary entries by JSD_β and the rest by ULD's sorted L1
    (``hybrid``), weighted by the shared entries' fraction of the teacher's vocabulary. The template's
    suffix (eos) is one more span when both answers are covered. With one tokenizer every span is one
    token and the shared vocabulary is all of it: JSD_β on the tokens, GKD's off-policy objective.
    Departures from TRL: off-policy only (TRL's λ mixes student generations in), the teacher reads its
    own template (TRL feeds it the student's rendered text), the shared part is renormalised on the
    shared entries (TRL feeds the unnormalised slices to its JSD; renormalising cancels a span's
    earlier-token factor there, so the merge acts through the sorted-L1 part), and the distance is
    divided like the cross-entropy (per counted student response token). Shared entries are matched by
    their raw vocabulary strings, as TRL (a WordPiece and a byte-level BPE share few: 'Ġthe' ≠ 'the')."""

    def __init__(self, student, teacher_config, temperature: float = 1.0, gold_weight: float = 1.0, beta: float = 0.5,
                 hybrid: bool = True, matched_weight: float | None = None, weights=None, dynamic_weights=False):
        super().__init__(student, teacher_config, {"gold": gold_weight, **(weights or {})}, dynamic_weights)
        self.temperature, self.beta, self.hybrid, self.matched_weight = temperature, beta, hybrid, matched_weight
        # (student ids, teacher ids) both vocabularies hold under one string; None: one tokenizer (all of it)
        self.shared: tuple[list[int], list[int]] | None = None

    @torch.no_grad()
    def teacher_targets(self, teacher, inputs):
        t_in, chunked, out = self.teacher_pass(teacher, inputs)  # chunked: in chunks of whole spans
        s_span, t_span, bound = span_ids(inputs, t_in)
        targets = {"student_span": s_span, "teacher_span": t_span, "num_spans": bound,
                   "tokens": self.family.labels_at(t_in["ids"], t_in["chosen"])}
        if chunked:
            head = teacher.get_output_embeddings()
            targets["final_hidden"] = out.last_hidden_state[t_in["chosen"]]
            targets["head"] = (head.weight, head.bias)
        else:
            v = self.teacher_side_vocab(inputs)
            logits = out.logits[t_in["chosen"]]
            targets["logits"] = logits if v is None else logits[..., :v]
        return targets

    def _shared(self, v_s: int, v_t: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.hybrid:
            return None
        key = (str(device), v_s, v_t)
        if getattr(self, "_shared_cache", (None,))[0] != key:  # built once per device, not every step
            if self.shared is None:  # one tokenizer: every entry is shared
                ids = torch.arange(min(v_s, v_t), device=device)
                pair = (ids, ids)
            else:
                pair = tuple(torch.tensor(i, dtype=torch.long, device=device) for i in self.shared)
            self._shared_cache = (key, pair)
        return self._shared_cache[1]

    def losses(self, inputs, targets, out):
        n = inputs.get("num_tokens") or targets["student_span"].numel()
        kw = dict(temperature=self.temperature, beta=self.beta, matched_weight=self.matched_weight,
                  num_spans=targets["num_spans"], num_tokens=n)
        if inputs.get("chunked"):
            head = self.student.mlm.get_output_embeddings()
            w_t, b_t = targets["head"]
            v_s = self.vocab or head.weight.shape[0]
            v_t = self.teacher_side_vocab(inputs) or w_t.shape[0]
            gold = chunked_gold(out.last_hidden_state[inputs["chosen"]], head.weight, targets["final_hidden"], w_t,
                                self.task_labels(inputs), targets["tokens"], targets["student_span"],
                                targets["teacher_span"], shared=self._shared(v_s, v_t, head.weight.device),
                                chunk_tokens=self.chunk_tokens, b_s=head.bias, b_t=b_t, vocab_s=v_s, vocab_t=v_t, **kw)
        else:
            logits = self.task_logits(out, inputs)
            gold = L.gold_distance(logits, targets["logits"], self.task_labels(inputs), targets["tokens"],
                                   targets["student_span"], targets["teacher_span"],
                                   shared=self._shared(logits.shape[-1], targets["logits"].shape[-1], logits.device),
                                   **kw)
        return {"ce": self.ce_term(out, inputs), "gold": gold}
