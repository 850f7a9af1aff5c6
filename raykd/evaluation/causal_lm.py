"""What a causal trial's rank 0 measures, in the companion paper's claim form: the student alone on the
validation pairs at every report and on the test pairs at the end, the fixed teacher beside it (its
part computed once per process). Pure torch, no Ray.

Per split (``val/…`` at each evaluation, ``test/…`` once):

- ``perplexity`` = exp(Σ NLL / Σ response tokens) of the true doctor answers given the patient's
  turn (template of ``data.template``), and ``teacher_perplexity``;
- ``answer_accuracy``: each question's true answer among ``DISTRACTORS`` answers of *other*
  dialogues of the same department (seeded; other departments only when one has too few), chosen
  by the length-normalised log-likelihood of the answer given the prompt (ties count 1/k: a
  constant model scores chance, 1/5); ``teacher_answer_accuracy``; ``answer_chance`` (what a model
  that cannot tell the candidates apart scores: the mean of 1 / candidates); ``retained_accuracy`` =
  student ÷ teacher (a fraction, with a floor: an untrained student "retains" chance ÷ teacher) and
  the claim-form number, ``retained_accuracy_above_chance`` = (student − chance) ÷ (teacher − chance)
  (≈ 0 for an untrained student, 1 at the teacher);
- ``param_reduction`` = 1 − student ÷ teacher parameters.

Test adds ``rouge_l`` (character ROUGE-L F1 of greedy generations on ``ROUGE_PROMPTS`` seeded test
prompts, ``teacher_rouge_l`` beside it) and, from ``efficiency``, ``speedup_b1``, ``speedup_b32``
(teacher ÷ student prefill latency per sequence at batch 1 and 32), ``decode_tokens_per_s`` (student,
batch 1, KV cache) and the teacher's. A teacher sharded over the worker group (``teacher.shard``) has
no single-device latency: its sharded one is reported as ``teacher_latency_ms_b*_sharded`` and
``teacher_decode_tokens_per_s_sharded`` (mostly the all-gathers of its weights, measured ~4–7× its
unsharded latency on CPU), and no speedup is claimed against it."""

from __future__ import annotations

import hashlib

import numpy as np

from raykd.metrics import causal as CM
from raykd.metrics import representation as metrics
from raykd.models.sharding import is_sharded
from raykd.data.collate import CausalCollate, department_index
from raykd.data.shards import shard_paths
from raykd.evaluation.protocol import EVAL_SEED, Evaluation, eval_order

DISTRACTORS = 4
ROUGE_PROMPTS = 32
DECODE_TOKENS = 32
LATENCY_BATCHES = (1, 32)


def _lm(model):
    """The HF causal LM inside a method / Student / HF model."""
    model = getattr(model, "student", model)
    return getattr(model, "mlm", model)


def in_dtype_of(model, reference):
    """``model``, or a copy of it in ``reference``'s weight dtype when they differ: latencies are
    compared in one dtype (a bf16 teacher against a bf16 copy of an fp32-trained student)."""
    dtype = next(reference.parameters()).dtype
    if next(model.parameters()).dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(dtype)


class CausalSplit:
    """One split's evaluation pairs: prompts, true responses, the answer-selection candidates, the
    ROUGE prompts with their reference texts."""

    def __init__(self, prepared: str, manifest: dict, split: str, pairs: int, template, tokenizer,
                 same_as: "CausalSplit | None" = None):
        import pyarrow.parquet as pq

        t = pq.read_table(shard_paths(prepared, split, manifest),
                          columns=["pair_id", "dialogue_id", "department", "q_input_ids", "a_input_ids"])
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        chosen = eval_order(cols["pair_id"])[:pairs]
        if same_as is not None and [cols["pair_id"][i] for i in chosen] != same_as.pair_ids:
            raise ValueError(f"{prepared}: the teacher's tokenization holds other {split} pairs than the student's")
        self.template = template
        self.pair_ids = [cols["pair_id"][i] for i in chosen]
        self.prompts = [template.prompt(cols["q_input_ids"][i]) for i in chosen]
        self.responses = [template.response(cols["a_input_ids"][i]) for i in chosen]
        self.departments = [cols["department"][i] for i in chosen]
        # the candidates' rows: drawn here, or — for a teacher with its own tokenization (``same_as``: the
        # student's split over the same rows) — the student's, so both answer the very same questions
        self.candidate_rows = self._candidate_rows(cols, chosen) if same_as is None else same_as.candidate_rows
        self.candidates = [[template.response(cols["a_input_ids"][j]) for j in row] for row in self.candidate_rows]
        self.true_index = [0] * len(self.candidates)
        rouge = chosen[:ROUGE_PROMPTS]
        self.rouge_prompts = [template.prompt(cols["q_input_ids"][i]) for i in rouge]
        strip = set(template.strip)
        # the reference texts: the student's (one reference for both sides when the teacher reads its own tokens)
        self.rouge_refs = [tokenizer.decode([x for x in cols["a_input_ids"][i] if x not in strip]) for i in rouge] \
            if same_as is None else same_as.rouge_refs
        self.max_new = max(len(r) for r in self.responses) if self.responses else 1
        collate = CausalCollate(template, department_index(manifest))
        self.batches = [collate({"q_input_ids": [cols["q_input_ids"][i] for i in chosen[k: k + 64]],
                                 "a_input_ids": [cols["a_input_ids"][i] for i in chosen[k: k + 64]],
                                 "department": np.array([cols["department"][i] for i in chosen[k: k + 64]])})
                        for k in range(0, len(chosen), 64)]

    def _candidate_rows(self, cols: dict, chosen: list[int]) -> list[list[int]]:
        """Per question: the rows of [its true answer, DISTRACTORS answers of other dialogues] (the true
        one first: ties are shared, so its place cannot favour it), drawn by a generator seeded with
        the pair id."""
        by_dept: dict[str, list[int]] = {}
        for i, d in enumerate(cols["department"]):
            by_dept.setdefault(d, []).append(i)
        everyone = list(range(len(cols["pair_id"])))
        out = []
        for i in chosen:
            rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(
                f"{EVAL_SEED}|distract|{cols['pair_id'][i]}".encode(), digest_size=8).digest(), "little"))
            picks: list[int] = []
            for pool in (by_dept[cols["department"][i]], everyone):
                need = DISTRACTORS - len(picks)
                if need <= 0:
                    break
                others = [j for j in pool if cols["dialogue_id"][j] != cols["dialogue_id"][i] and j not in picks
                          and cols["a_input_ids"][j] != cols["a_input_ids"][i]]
                if others:
                    picks += [others[k] for k in rng.choice(len(others), size=min(need, len(others)), replace=False)]
            out.append([i] + picks)
        return out


class CausalEvaluation(Evaluation):
    """The ``causal_lm`` family's part of the evaluation protocol (see the module docstring). The teacher's
    part is memoised per process (``protocol.TEACHER_MEMO`` keyed by ``teacher_key``), or computed by every
    rank together for a sharded teacher (``teacher_part``)."""

    memo_tag = "selection"

    def __init__(self, prepared: str, manifest: dict, pairs: int, template, teacher_key: str | None = None,
                 teacher_side: "CausalEvaluation | None" = None):
        from transformers import AutoTokenizer

        super().__init__(prepared, manifest, pairs, teacher_key)
        self.template = template
        self.tokenizer = AutoTokenizer.from_pretrained(f"{prepared}/{manifest['tokenizer']['path']}")
        self._pinned: dict[str, object] = {}  # what teacher_part computed (a sharded teacher's part)
        self._splits: dict[str, CausalSplit] = {}
        # a teacher with a tokenizer of its own is scored on its own tokenization of the same pairs (the teacher
        # view: same rows, same order) with the student's candidates and ROUGE references; else on ours
        self.teacher_side = teacher_side or self
        self.paired_with: CausalEvaluation | None = None  # on a teacher side: the student's evaluation
        if teacher_side is not None:
            teacher_side.paired_with = self

    @classmethod
    def for_trial(cls, prepared: str, manifest: dict, pairs: int, *, template, tokens=None, vocab_size=None,
                  teacher_key=None, teacher_view: dict | None = None) -> "CausalEvaluation":
        """The evaluation of a trial (``protocol.evaluation_for``): it reads the template (a dict) and, for a
        teacher with its own tokenizer, the teacher view (``StudyPlan.teacher_view``)."""
        from raykd.data.shards import load_manifest
        from raykd.data.template import CausalTemplate

        side = None
        if teacher_view:
            side = cls(teacher_view["prepared"], load_manifest(teacher_view["prepared"]), pairs,
                       CausalTemplate.from_dict(teacher_view["template"]), teacher_key)
        return cls(prepared, manifest, pairs, CausalTemplate.from_dict(template), teacher_key, side)

    def data(self, split: str) -> CausalSplit:
        name = "validation" if split == "val" else split
        if name not in self._splits:
            same_as = self.paired_with.data(split) if self.paired_with is not None else None
            self._splits[name] = CausalSplit(self.prepared, self.manifest, name, self.pairs, self.template,
                                             self.tokenizer, same_as)
        return self._splits[name]

    @property
    def val(self) -> list[dict]:
        return self.data("val").batches

    def teacher_part(self, teacher, seq_len: int) -> None:
        """Compute and keep everything this evaluation reads of ``teacher``: its scores on validation
        and test, its test generations (ROUGE-L) and its efficiency at ``seq_len`` tokens. For a teacher
        sharded over the worker group (``parallel.shard_frozen``) every rank calls this together: each
        forward pass is a collective (generation runs in step on every rank: ``synced_gpus``); rank 0's
        reports then read what is kept here and never run the teacher alone."""
        t_lm, side = _lm(teacher), self.teacher_side
        for split in ("val", "test"):
            self._pinned[f"scores/{split}"] = side._scores(t_lm, split)
        self._pinned["rouge/test"] = side._rouge(t_lm, "test")
        self._pinned[f"efficiency/{seq_len}"] = side._teacher_efficiency(t_lm, seq_len)

    def _memo(self, teacher, what: str, compute):
        if what in self._pinned:
            return self._pinned[what]
        if is_sharded(_lm(teacher)):  # alone on rank 0 its collectives would wait for ever
            raise RuntimeError(f"the sharded teacher's {what} was not computed by every rank together: call "
                               "teacher_part on every rank first")
        # keyed by the data the teacher read too: its own tokenization, or ours
        return self.memo(teacher, what, compute, self.teacher_side.manifest["key"],
                         keep=not what.startswith("efficiency/"))  # timings are measured beside the student's

    def _scores(self, model, split: str) -> dict:
        """Perplexity and answer accuracy of ``model`` on ``split`` (raw: no prefix)."""
        d = self.data(split)
        nll, count = CM.score_pairs(model, d.prompts, d.responses, self.template.pad)
        flat_p = [p for p, c in zip(d.prompts, d.candidates) for _ in c]
        flat_r = [r for c in d.candidates for r in c]
        s, n = CM.score_pairs(model, flat_p, flat_r, self.template.pad)
        per = (s / np.maximum(n, 1)).tolist()
        rows, k = [], 0
        for c in d.candidates:
            rows.append(per[k: k + len(c)] + [-np.inf] * (DISTRACTORS + 1 - len(c)))
            k += len(c)
        credit = CM.selection_credit(rows, d.true_index)
        return {"perplexity": CM.perplexity(-float(nll.sum()), int(count.sum())),
                "answer_accuracy": float(credit.mean()), "answer_chance": CM.selection_chance([len(c) for c in d.candidates]),
                "_credit": credit, "_nll": -nll, "_count": count}

    def _rouge(self, model, split: str) -> float:
        d = self.data(split)
        gen = CM.greedy_responses(model, d.rouge_prompts, min(d.max_new, 96), self.template.eos, self.template.pad)
        strip = set(self.template.strip)
        texts = [self.tokenizer.decode([x for x in g if x not in strip]) for g in gen]
        return float(np.mean([CM.rouge_l(p, r) for p, r in zip(texts, d.rouge_refs)]))

    def split(self, student, teacher, split: str, bootstrap: int = 0, prefix: str = "") -> dict:
        """Metrics named ``<prefix><split>/<metric>`` (see the module docstring)."""
        lm, t_lm = _lm(student), _lm(teacher)
        theirs = self._memo(teacher, f"scores/{split}", lambda: self.teacher_side._scores(t_lm, split))
        mine = theirs if lm is t_lm else self._scores(lm, split)
        m = {**mine, "teacher_perplexity": theirs["perplexity"], "teacher_answer_accuracy": theirs["answer_accuracy"],
             "retained_accuracy": mine["answer_accuracy"] / theirs["answer_accuracy"]
             if theirs["answer_accuracy"] > 0 else float("nan"),
             "retained_accuracy_above_chance": CM.retained_above_chance(mine["answer_accuracy"],
                                                                        theirs["answer_accuracy"], mine["answer_chance"]),
             "param_reduction": 1.0 - CM.param_count(lm) / CM.param_count(t_lm)}
        if bootstrap > 0:
            m.update(self._intervals(mine, theirs, bootstrap))
        m = {k: v for k, v in m.items() if not k.startswith("_")}
        if split == "test":
            m["teacher_rouge_l"] = self._memo(teacher, f"rouge/{split}", lambda: self.teacher_side._rouge(t_lm, split))
            m["rouge_l"] = m["teacher_rouge_l"] if lm is t_lm else self._rouge(lm, split)
        return {f"{prefix}{split}/{k}": float(v) for k, v in m.items()}

    @staticmethod
    def _intervals(mine: dict, theirs: dict, draws: int) -> dict:
        """Bootstrap 95 % intervals over the evaluation pairs (one resample for student and teacher, so
        the retained ratio is paired): ``<metric>_ci_low`` / ``_ci_high``."""
        out, n = {}, len(mine["_credit"])
        stats = {"answer_accuracy": lambda i: mine["_credit"][i].mean(),
                 "retained_accuracy": lambda i: mine["_credit"][i].mean() / theirs["_credit"][i].mean(),
                 "retained_accuracy_above_chance": lambda i: CM.retained_above_chance(
                     mine["_credit"][i].mean(), theirs["_credit"][i].mean(), mine["answer_chance"]),
                 "perplexity": lambda i: float(np.exp(mine["_nll"][i].sum() / max(mine["_count"][i].sum(), 1)))}
        for name, stat in stats.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = CM.bootstrap_ci(stat, n, draws, EVAL_SEED + 1)
        return out

    def efficiency(self, student, teacher, batch_size: int, seq_len: int) -> dict:
        """``test/params``, ``test/teacher_params``, ``test/latency_ms_b{1,32}`` (prefill ms per
        sequence, student, timed in the teacher's weight dtype: ``in_dtype_of``), ``test/speedup_b{1,32}`` (teacher ÷ student), ``test/decode_tokens_per_s``
        and ``test/teacher_decode_tokens_per_s`` (batch 1, KV cache), ``test/decode_speedup``."""
        lm, t_lm = in_dtype_of(_lm(student), _lm(teacher)), _lm(teacher)
        s = metrics.efficiency(lm, LATENCY_BATCHES, seq_len)
        t = self._memo(teacher, f"efficiency/{seq_len}", lambda: self.teacher_side._teacher_efficiency(t_lm, seq_len))
        dec = CM.decode_tokens_per_s(lm, self.data("test").prompts[0], DECODE_TOKENS, self.template.pad)
        out = {"test/params": float(s["params"]), "test/teacher_params": float(t["params"]),
               "test/decode_tokens_per_s": dec}
        for b in LATENCY_BATCHES:
            out[f"test/latency_ms_b{b}"] = s[f"latency_ms_b{b}"]
        if is_sharded(t_lm):  # its latency is mostly all-gathers of its weights: no inference speedup
            out["test/teacher_decode_tokens_per_s_sharded"] = t["decode"]
            out.update({f"test/teacher_latency_ms_b{b}_sharded": t[f"latency_ms_b{b}"] for b in LATENCY_BATCHES})
            return out
        out.update({"test/teacher_decode_tokens_per_s": t["decode"], "test/decode_speedup": dec / max(t["decode"], 1e-9)})
        for b in LATENCY_BATCHES:
            out[f"test/speedup_b{b}"] = t[f"latency_ms_b{b}"] / max(s[f"latency_ms_b{b}"], 1e-9)
        return out

    def _teacher_efficiency(self, t_lm, seq_len: int) -> dict:
        """The teacher's ``params``, ``latency_ms_b{1,32}`` and ``decode`` (tokens/s): the same fixed
        number of forward passes on every rank (a sharded teacher times its collectives too)."""
        return {**metrics.efficiency(t_lm, LATENCY_BATCHES, seq_len),
                "decode": CM.decode_tokens_per_s(t_lm, self.data("test").prompts[0], DECODE_TOKENS, self.template.pad)}


__all__ = ["CausalEvaluation", "CausalSplit", "DISTRACTORS", "ROUGE_PROMPTS"]
