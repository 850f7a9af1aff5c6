"""The ``masked_lm`` family's evaluation: what a trial's rank 0 measures: the student alone on the validation pairs at every report and on the
test pairs at the end, against the fixed teacher (whose part is computed once per process), its
held-out masked-LM loss, and its size and latency beside the teacher's. Pure torch, no Ray."""

from __future__ import annotations

import torch

from raykd.metrics import representation as metrics
from raykd.data.collate import PairCollate, department_index
from raykd.data.shards import shard_paths
from raykd.distill.methods import TokenIds, make_inputs
from raykd.evaluation.protocol import EVAL_SEED, Evaluation, eval_order
from raykd.models.families import family_of


def _eval_batches(prepared: str, manifest: dict, split: str, pairs: int, batch_size: int = 64) -> list[dict]:
    """The split's evaluation pairs as collated batches: ``pairs`` of them chosen by a seeded hash of
    ``pair_id`` (``protocol.eval_order``) — a random subset, not the first rows in source order, and the same
    for every trial of every study on this data. Batched by length (the longer of question and answer: a
    quarter fewer padded tokens than batches in hash order); each batch's ``pair_index`` holds its pairs'
    places in the hash order, in which the metrics see them (``metrics.evaluate``)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(shard_paths(prepared, split, manifest), columns=["pair_id", "department", "q_input_ids",
                                                                       "a_input_ids"])
    t = t.take(eval_order(t.column("pair_id").to_pylist())[:pairs])
    longer = np.maximum(pc.list_value_length(t.column("q_input_ids")).to_numpy(),
                        pc.list_value_length(t.column("a_input_ids")).to_numpy())
    by_length = np.argsort(longer, kind="stable")
    t = t.take(by_length)
    collate = PairCollate(manifest["tokenizer"]["pad_token_id"], department_index(manifest))
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    return [{**collate({c: v[i: i + batch_size] for c, v in cols.items()}),
             "pair_index": torch.from_numpy(by_length[i: i + batch_size].astype(np.int64))}
            for i in range(0, t.num_rows, batch_size)]


class MaskedLMEvaluation(Evaluation):
    """The ``masked_lm`` family's part of the evaluation protocol: the validation pairs at every report, the
    test pairs at the end (and at step 0 of a reference trial), the student alone, against the fixed teacher,
    whose part is memoised per process (``protocol.TEACHER_MEMO``, keyed by ``teacher_key``)."""

    memo_tag = "retrieval"

    def __init__(self, prepared: str, manifest: dict, pairs: int, tokens: TokenIds, vocab_size: int,
                 teacher_key: str | None = None):
        super().__init__(prepared, manifest, pairs, teacher_key)
        self.tokens, self.vocab_size = tokens, vocab_size
        self._val = _eval_batches(prepared, manifest, "validation", pairs)
        self._test: list | None = None

    @classmethod
    def for_trial(cls, prepared: str, manifest: dict, pairs: int, *, tokens, vocab_size, template=None,
                  teacher_key=None) -> "MaskedLMEvaluation":
        """The evaluation of a trial (``protocol.evaluation_for``): it reads the token ids and vocabulary size."""
        return cls(prepared, manifest, pairs, tokens, vocab_size, teacher_key)

    @property
    def val(self) -> list[dict]:
        return self._val

    @property
    def test(self) -> list[dict]:
        if self._test is None:
            self._test = _eval_batches(self.prepared, self.manifest, "test", self.pairs)
        return self._test

    def _memo(self, teacher, what: str, compute):
        return self.memo(teacher, what, compute, self.tokens.special, keep=True)  # every entry is deterministic

    def _teacher_outputs(self, teacher, split: str) -> list:
        batches = self.val if split == "val" else self.test
        return self._memo(teacher, f"outputs/{split}", lambda: metrics.teacher_outputs(
            teacher, batches, next(teacher.parameters()).device, True, self.tokens.special))

    def split(self, student, teacher, split: str, bootstrap: int = 0, prefix: str = "") -> dict:
        """Metrics named ``<prefix><split>/<metric>`` (see ``metrics.evaluate``). Validation fits
        compactness on half of its pairs and scores the other half; test fits on the validation
        pairs. Test adds ``mlm_loss`` (held-out masked-LM loss of the model, nats per masked token,
        fixed masking) and the teacher's ``teacher_mlm_loss``."""
        if student is teacher:  # the teacher scored as its own student: the same numbers every time
            return dict(self._memo(teacher, f"self/{split}/{bootstrap}/{prefix}",
                                   lambda: self._split(student, teacher, split, bootstrap, prefix)))
        return self._split(student, teacher, split, bootstrap, prefix)

    def _split(self, student, teacher, split: str, bootstrap: int, prefix: str) -> dict:
        ev, fit = (self.val, None) if split == "val" else (self.test, self.val)
        cache = (self._teacher_outputs(teacher, split), None if fit is None else self._teacher_outputs(teacher, "val"))
        m = metrics.evaluate(student, teacher, ev, fit, seed=EVAL_SEED, special_ids=self.tokens.special,
                             bootstrap=bootstrap, teacher_cache=cache)
        if split == "test":
            m["mlm_loss"] = heldout_mlm_loss(_mlm_of(student), self.test, self.tokens, self.vocab_size)
            m["teacher_mlm_loss"] = self._memo(teacher, "mlm/test", lambda: heldout_mlm_loss(
                teacher, self.test, self.tokens, self.vocab_size))
        return {f"{prefix}{split}/{k}": float(v) for k, v in m.items()}

    def efficiency(self, student, teacher, batch_size: int, seq_len: int) -> dict:
        """Size and latency of the student beside the teacher (``efficiency_vs_teacher``)."""
        return efficiency_vs_teacher(student, teacher, batch_size, seq_len)


def _mlm_of(model):
    """The HF model (with its task head) inside a method / Student / HF model."""
    model = getattr(model, "student", model)
    return getattr(model, "mlm", model)


@torch.no_grad()
def heldout_mlm_loss(mlm, batches: list[dict], tokens: TokenIds, vocab_size: int, seed: int = EVAL_SEED) -> float:
    """The family's task loss (masked-LM: cross-entropy in nats per masked token) of ``mlm`` on these
    pairs (questions and answers), corrupted with a fixed seed: the same positions for every model."""
    fam = family_of(mlm)
    gen = torch.Generator().manual_seed(seed)
    device = next(mlm.parameters()).device
    was = mlm.training
    mlm.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            inputs = make_inputs({k: v for k, v in batch.items() if torch.is_tensor(v)}, tokens, gen, corrupt=True,
                                 vocab_size=vocab_size, family=fam)
            chosen = inputs["chosen"]
            if not chosen.any():
                continue
            logits = mlm(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["mask"].to(device)).logits
            total += float(fam.task_loss(logits.float(), inputs["ids"].to(device), chosen.to(device), reduction="sum"))
            count += int(chosen.sum())
    finally:
        mlm.train(was)
    return total / max(count, 1)


def efficiency_vs_teacher(student, teacher, batch_size: int, seq_len: int) -> dict:
    """``test/params``, ``test/teacher_params``, ``test/latency_ms_b{1,B}`` (ms per sample, student
    encoder alone) and ``test/speedup_b{1,B}`` (teacher ÷ student latency) on this worker's device."""
    sizes = (1, batch_size)
    s = metrics.efficiency(student.family.backbone(student.mlm), sizes, seq_len)
    tt = metrics.efficiency(family_of(teacher).backbone(teacher), sizes, seq_len)
    out = {"test/params": float(s["params"]), "test/teacher_params": float(tt["params"])}
    for b in sizes:
        out[f"test/latency_ms_b{b}"] = s[f"latency_ms_b{b}"]
        out[f"test/speedup_b{b}"] = tt[f"latency_ms_b{b}"] / max(s[f"latency_ms_b{b}"], 1e-9)
    return out
