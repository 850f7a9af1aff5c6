"""What a trial's rank 0 measures: the student alone on the validation pairs at every report and on the
test pairs at the end, against the fixed teacher (whose part is computed once per process), its
held-out masked-LM loss, and its size and latency beside the teacher's. Pure torch, no Ray."""

from __future__ import annotations

from collections import OrderedDict

import torch

from raykd.metrics import representation as metrics
from raykd.data.collate import PairCollate, department_index
from raykd.data.shards import shard_paths
from raykd.distill.methods import TokenIds, make_inputs
from raykd.models.families import family_of

BOOTSTRAP = 200  # resamples of the evaluation pairs behind each final metric's 95 % CI
EVAL_SEED = 0  # which pairs are evaluation pairs, and the candidates of QA retrieval: the same for every trial


def _eval_batches(prepared: str, manifest: dict, split: str, pairs: int, batch_size: int = 64) -> list[dict]:
    """The split's evaluation pairs as collated batches: ``pairs`` of them chosen by a seeded hash of
    ``pair_id`` (``EVAL_SEED``), in that hash order — a random subset, not the first rows in source
    order, and the same for every trial of every study on this data."""
    import hashlib

    import pyarrow.parquet as pq

    t = pq.read_table(shard_paths(prepared, split, manifest), columns=["pair_id", "department", "q_input_ids",
                                                                       "a_input_ids"])
    ids = t.column("pair_id").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: hashlib.blake2b(f"{EVAL_SEED}|eval|{ids[i]}".encode(),
                                                                   digest_size=8).digest())[:pairs]
    t = t.take(order)
    collate = PairCollate(manifest["tokenizer"]["pad_token_id"], department_index(manifest))
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    return [collate({c: v[i: i + batch_size] for c, v in cols.items()}) for i in range(0, t.num_rows, batch_size)]


class _TeacherMemo:
    """Process-wide memo of what evaluation computes of the fixed teacher (its outputs on a split's
    pairs, its MLM loss, its scores as its own student), keyed by teacher, data, split and pair
    count: a reused Tune actor (Train local mode) evaluates the same teacher on the same pairs trial
    after trial, and the teacher is most of an evaluation's cost. Keeps the ``keep`` latest."""

    def __init__(self, keep: int = 12):
        self.keep, self.items = keep, OrderedDict()

    def get(self, key: tuple, compute):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute()
        while len(self.items) > self.keep:
            self.items.popitem(last=False)
        return value


TEACHER_MEMO = _TeacherMemo()


class Evaluation:
    """What rank 0 evaluates: the validation pairs at every report, the test pairs at the end (and
    at step 0 of a reference trial), the student alone, against the fixed teacher. The teacher's
    part is computed once per process (``TEACHER_MEMO``, keyed by ``teacher_key``) and reused."""

    def __init__(self, prepared: str, manifest: dict, pairs: int, tokens: TokenIds, vocab_size: int,
                 teacher_key: str | None = None):
        self.prepared, self.manifest, self.pairs = prepared, manifest, pairs
        self.tokens, self.vocab_size = tokens, vocab_size
        self.teacher_key = teacher_key
        self._local = _TeacherMemo(keep=8)
        self.val = _eval_batches(prepared, manifest, "validation", pairs)
        self._test: list | None = None

    @property
    def test(self) -> list[dict]:
        if self._test is None:
            self._test = _eval_batches(self.prepared, self.manifest, "test", self.pairs)
        return self._test

    def _memo(self, teacher, what: str, compute):
        """``compute()`` once per (teacher, data, pairs, what): per process when the teacher has a
        ``teacher_key`` (content-addressed), else for this Evaluation's lifetime only (an object id
        may be reused by another teacher once this one is gone)."""
        if self.teacher_key is None:
            return self._local.get((id(teacher), what), compute)
        return TEACHER_MEMO.get((self.teacher_key, self.manifest["key"], self.pairs, self.tokens.special, what),
                                compute)

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
