"""Collation of prepared rows into padded torch batches: plain numpy/torch, no Ray (the streaming
module wraps ``PairCollate`` as Ray Data's ``collate_fn``)."""

from __future__ import annotations

import numpy as np


def department_index(manifest: dict) -> dict[str, int]:
    """Department name → integer id, in the manifest's order (most frequent first)."""
    return {d: i for i, d in enumerate(manifest["departments"])}


def pad_ids(seqs, pad_id: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pad a batch of id sequences to its longest, on the right (``left``: on the left, as generation wants its
    prompts); returns (ids int64 [b, t], attention mask int64 [b, t]). raykd's one padding helper."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max()) if len(seqs) else 0
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        cols = slice(width - int(lengths[i]), width) if left else slice(0, int(lengths[i]))
        ids[i, cols] = s
        mask[i, cols] = 1
    return ids, mask


def _with_row_keys(out: dict, batch: dict, departments: dict[str, int]) -> dict:
    """``out`` with the batch's ``department`` (int64 [b]; unknown names → -1) and ``pair_id`` (list
    of str), where the batch has them."""
    import torch

    if "department" in batch:
        out["department"] = torch.tensor([departments.get(str(d), -1) for d in batch["department"]], dtype=torch.long)
    if "pair_id" in batch:
        out["pair_id"] = [str(p) for p in batch["pair_id"]]
    return out


class PairCollate:
    """Numpy batch of prepared rows → padded torch tensors.

    Returns ``q_input_ids, q_attention_mask, a_input_ids, a_attention_mask`` (int64 [b, t], each
    padded to the batch's own longest sequence), ``department`` (int64 [b]; unknown names → -1) and
    ``pair_id`` (a list of str, when the batch has it).
    """

    def __init__(self, pad_id: int, departments: dict[str, int] | None = None):
        self.pad_id = pad_id
        self.departments = departments or {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        out = {}
        for side in ("q", "a"):
            if f"{side}_input_ids" in batch:
                ids, mask = pad_ids(batch[f"{side}_input_ids"], self.pad_id)
                out[f"{side}_input_ids"] = torch.from_numpy(ids)
                out[f"{side}_attention_mask"] = torch.from_numpy(mask)
        return _with_row_keys(out, batch, self.departments)


class CausalCollate:
    """Numpy batch of prepared rows → one causal-LM sequence per QA pair, right-padded.

    Each row becomes ``template.prompt(question) + template.response(answer)``. Returns
    ``input_ids``, ``attention_mask`` and ``response_mask`` (1 on the response's tokens, eos
    included: the tokens every causal loss counts) as int64 [b, t], ``department`` (int64 [b]) and
    ``pair_id`` (list of str, when the batch has it). With a ``teacher_template`` (a teacher with a
    tokenizer of its own) also ``teacher``: the same three tensors of the rows' ``teacher_q_input_ids`` /
    ``teacher_a_input_ids`` through the teacher's template.
    """

    def __init__(self, template, departments: dict[str, int] | None = None, teacher_template=None):
        self.template = template
        self.departments = departments or {}
        # a teacher with its own tokenizer: rows carry teacher_q_input_ids / teacher_a_input_ids as well
        self.teacher = None if teacher_template is None else CausalCollate(teacher_template)

    def sequences(self, questions, answers) -> tuple[list[list[int]], list[int]]:
        """(prompt + response ids per pair, prompt lengths)."""
        prompts = [self.template.prompt(q) for q in questions]
        return [p + self.template.response(a) for p, a in zip(prompts, answers)], [len(p) for p in prompts]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        seqs, plen = self.sequences(batch["q_input_ids"], batch["a_input_ids"])
        ids, mask = pad_ids(seqs, self.template.pad)
        response = mask.copy()
        for i, n in enumerate(plen):
            response[i, :n] = 0
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
               "response_mask": torch.from_numpy(response)}
        if self.teacher is not None:
            out["teacher"] = self.teacher({"q_input_ids": batch["teacher_q_input_ids"],
                                           "a_input_ids": batch["teacher_a_input_ids"]})
            if "a_span" in batch and "teacher_a_span" in batch:
                out["span"], out["teacher"]["span"] = _span_tensors(
                    (self.template, self.teacher.template), (batch["a_input_ids"], batch["teacher_a_input_ids"]),
                    (batch["a_span"], batch["teacher_a_span"]), (out["response_mask"], out["teacher"]["response_mask"]))
        return _with_row_keys(out, batch, self.departments)


def _span_tensors(templates, answers, spans, responses):
    """(student span tensor, teacher span tensor) for ``CausalCollate``: each response token's span,
    aligned with the sequences' positions (the responses start where ``responses`` does)."""
    import torch

    outs = [np.full(tuple(r.shape), -1, dtype=np.int64) for r in responses]
    for row in range(len(answers[0])):
        kept = []
        for tpl, ans, sp in zip(templates, answers, spans):
            drop = set(tpl.strip)
            kept.append([int(s) for i, s in zip(ans[row], sp[row]) if int(i) not in drop])
        whole = all(k and min(k) >= 0 for k in kept)  # both answers covered to their last token
        # numbered past every span of either side (a span of stripped tokens only, e.g. a WordPiece [UNK],
        # is in the data but not in the sequence)
        suffix = 1 + max(max((int(s) for s in sp[row]), default=-1) for sp in spans) if whole else -1
        for side, (tpl, k) in enumerate(zip(templates, kept)):
            start = int(np.argmax(responses[side][row].numpy())) if int(responses[side][row].sum()) else 0
            values = k + [suffix] * len(tpl.suffix)
            outs[side][row, start:start + len(values)] = values
    return torch.from_numpy(outs[0]), torch.from_numpy(outs[1])
