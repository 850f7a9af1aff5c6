"""A third model family as a plugin, in one file: ``seq2seq_lm``, encoder-decoder LMs (BART at tiny size) reading
the patient's turn and writing the doctor's reply — the task MedDialog was built for. Nothing under ``raykd/``
knows it: this module declares the family (``register_family``), implements its torch side (``Seq2SeqLM``, a
``ModelFamily``) and its part of the evaluation protocol (``Seq2SeqEvaluation``), and is loaded like a method
plugin::

    plugins: [examples.seq2seq_family]
    teacher: {family: seq2seq_lm, arch: bart, shape: {layers: 4, hidden: 64, heads: 2, intermediate: 128}}
    method: {name: feature_align}          # KD on the decoder's logits + alignment of the encoders' states

(``search_spaces/seq2seq_smoke.yaml`` is such a study.) What the family offers decides what runs on it: a token
head (``kd``, ``sft``, ``minillm``, off-policy ``gkd``, ``feature_align``; ``structural`` needs nothing a
family offers and runs on the encoder's states too), no BERT masking, no q/k/v of one
attention and no on-policy generation (the causal family's sampling loop), so ``tinybert``, ``minilm``, ``ddk``,
``mixkd``, ``distillseq`` and ``gkd`` with λ > 0 are refused at load time.

The objectives' inputs (``Seq2SeqLM.inputs``): ``input_ids`` / ``mask`` are the encoder's (the patient's turn:
what hidden-state terms align, at ``content``); ``ids`` / ``decoder_mask`` are the doctor's reply, which the
decoder reads from its own first token ([CLS] of a WordPiece tokenizer, the model's ``decoder_start_token_id``);
the logits at reply position p predict the token at p + 1 (``chosen``: every position whose next token is real).
Teacher adaptation is the same teacher-forced loss on the train split. Evaluation (``Seq2SeqEvaluation``), per
split: ``perplexity`` of the true reply given the patient's turn, ``answer_accuracy`` (the true reply among
``DISTRACTORS`` replies of other dialogues, by length-normalised log-likelihood; ties share the credit, so a
constant model scores chance), ``answer_chance``, ``retained_accuracy_above_chance`` = (student − chance) ÷
(teacher − chance), ``param_reduction``; at the end the prefill ``speedup_b1`` / ``_b32``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from raykd.data.collate import pad_ids
from raykd.data.shards import shard_paths
from raykd.evaluation.protocol import EVAL_SEED, Evaluation, eval_order
from raykd.metrics import causal as CM
from raykd.metrics import representation as RM
from raykd.models.families import FamilySpec, register_family
from raykd.models.families.base import ModelFamily

ARCHS = ("bart",)
DISTRACTORS = 4
LATENCY_BATCHES = (1, 32)

SEQ2SEQ = register_family(FamilySpec(
    name="seq2seq_lm", implementation="examples.seq2seq_family:Seq2SeqLM", archs=ARCHS,
    evaluation="examples.seq2seq_family:Seq2SeqEvaluation",
    hf_suffixes=("ForConditionalGeneration",), hf_trunks=("BartModel",),
    capabilities=frozenset({"token_head"}),
    metric_keys=("perplexity", "answer_accuracy", "answer_chance", "retained_accuracy_above_chance", "param_reduction",
                 "speedup_b1", "speedup_b32"),
    view_metrics=("test/answer_accuracy", "test/retained_accuracy_above_chance", "test/perplexity"),
    default_metric="val/answer_accuracy", reference_method="sft", samplers=("uniform",),
    task_token_share=0.5, max_position_factor=1,
    table_columns=(("retained_accuracy_above_chance", "Retained above chance", 3),
                   ("answer_accuracy", "Answer accuracy", 3), ("answer_chance", "Chance", 3),
                   ("perplexity", "Reply perplexity", 2), ("param_reduction", "Param. reduction", 3),
                   ("speedup_b1", "Speedup (b=1)", 2)),
    figure_metrics=("answer_accuracy", "perplexity")))


class _Output:
    """What the objectives read of an encoder-decoder's output: the decoder's ``logits`` and the encoder's
    ``hidden_states`` (embeddings, then each layer)."""

    def __init__(self, logits, hidden_states):
        self.logits, self.hidden_states = logits, hidden_states


def _hf(model: nn.Module) -> nn.Module:
    """The HF model inside a raykd Student (its ``mlm``), or the model itself."""
    return getattr(model, "mlm", model)


def _next_is(flags: torch.Tensor) -> torch.Tensor:
    """Positions p whose next position p + 1 is flagged."""
    return F.pad(flags[:, 1:], (0, 1), value=False)


class Seq2SeqLM(ModelFamily):
    """The torch side of ``seq2seq_lm`` (BART: ``BartForConditionalGeneration`` and what
    ``AutoModelForSeq2SeqLM`` loads)."""

    name = "seq2seq_lm"
    layer_key = re.compile(r"(?:encoder|decoder)\.layers\.(\d+)\.")  # a student's encoder and decoder layer i
    export_classes = ("AutoModelForSeq2SeqLM",)

    def matches(self, model):
        return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) \
            and type(model).__name__.endswith("ForConditionalGeneration")

    def build(self, shape, vocab_size, pad_token_id=0, bos_token_id=None, eos_token_id=None):
        from transformers import BartConfig, BartForConditionalGeneration

        if (shape.arch or ARCHS[0]) not in ARCHS:
            raise ValueError(f"teacher.arch {shape.arch!r}: a seq2seq_lm teacher is one of {', '.join(ARCHS)}")
        start = bos_token_id if bos_token_id is not None else pad_token_id
        cfg = BartConfig(vocab_size=vocab_size, d_model=shape.hidden, encoder_layers=shape.layers,
                         decoder_layers=shape.layers, encoder_attention_heads=shape.heads,
                         decoder_attention_heads=shape.heads, encoder_ffn_dim=shape.intermediate,
                         decoder_ffn_dim=shape.intermediate, max_position_embeddings=shape.max_position,
                         pad_token_id=pad_token_id, bos_token_id=start, eos_token_id=eos_token_id,
                         decoder_start_token_id=start, forced_eos_token_id=None, forced_bos_token_id=None)
        return BartForConditionalGeneration(cfg)

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def load(self, spec, trust_remote_code=False, revision=None):
        return self.auto_class().from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision,
                                                    use_safetensors=True)

    def student_like(self, teacher, layers, hidden=None, heads=None, intermediate=None):
        cfg = copy.deepcopy(teacher.config)
        cfg.encoder_layers = cfg.decoder_layers = cfg.num_hidden_layers = layers
        if hidden is not None and hidden != cfg.d_model:
            cfg.d_model = hidden
            cfg.encoder_attention_heads = cfg.decoder_attention_heads = heads or max(1, hidden // 64)
            cfg.encoder_ffn_dim = cfg.decoder_ffn_dim = intermediate or 4 * hidden
        return type(teacher)(cfg)

    def blocks(self, model):
        base = model.get_encoder(), model.get_decoder()
        return nn.ModuleList([*base[0].layers, *base[1].layers])

    def backbone(self, model):
        return model.get_encoder()

    def attention_inputs(self, model, hidden_in, layer):
        raise NotImplementedError("seq2seq_lm does not offer attention_qkv")

    def corrupt(self, ids, mask, special_ids, mask_id, vocab_size, prob, generator):
        """No corruption: the task positions are the reply positions whose next token is real."""
        return ids, _next_is(mask.bool())

    def task_loss(self, logits, ids, chosen, reduction="mean"):
        return F.cross_entropy(logits[chosen], self.labels_at(ids, chosen), reduction=reduction)

    def labels_at(self, ids, chosen):
        return torch.roll(ids, -1, dims=1)[chosen]

    def inputs(self, batch, tokens, generator, corrupt, mlm_prob, vocab_size):
        out = _pair_inputs(batch)
        q, dept = out["input_ids"], batch.get("department")
        out["department"] = torch.full((q.shape[0],), -1, dtype=torch.long, device=q.device) if dept is None else dept
        out["content"] = out["mask"].bool()
        for s in tokens.special:
            out["content"] &= q != s
        return out

    def run(self, model, inputs, hidden=True):
        out = _hf(model)(input_ids=None if "embeds" in inputs else inputs["input_ids"],
                         inputs_embeds=inputs.get("embeds"), attention_mask=inputs["mask"],
                         decoder_input_ids=inputs["ids"], decoder_attention_mask=inputs["decoder_mask"],
                         output_hidden_states=hidden)
        return _Output(out.logits, out.encoder_hidden_states if hidden else None)

    def count_tokens(self, batch):
        a_mask = batch["a_attention_mask"]
        return int(a_mask.sum()) - int((a_mask.sum(1) > 0).sum())  # every reply token but each reply's first

    def adaptation_step(self, model, batch, tokens, settings, generator, device):
        """The teacher-forced reply loss given the patient's turn (no corruption, no contrastive term)."""
        inputs = {k: v.to(device) for k, v in _pair_inputs(batch).items()}
        lm = self.task_loss(self.run(model, inputs, hidden=False).logits, inputs["ids"], inputs["chosen"])
        return lm, {"seq2seq-lm": lm}

    def card_intro(self, student, teacher, method):
        c = student.config
        return [f"A {c.encoder_layers}+{c.decoder_layers}-layer, {c.d_model}-wide encoder-decoder "
                f"(`{type(student.mlm).__name__}`) distilled by raykd (`{method}`) from a "
                f"{teacher.config.encoder_layers}+{teacher.config.decoder_layers}-layer teacher: it reads a patient's "
                "turn and writes the doctor's reply. Plain transformers, no remote code:", "", "```python",
                "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModelForSeq2SeqLM.from_pretrained(DIR)",
                "reply = model.generate(**tok(question, return_tensors='pt'), max_new_tokens=64)",
                "print(tok.decode(reply[0], skip_special_tokens=True))", "```", ""]

    def save(self, model, out):
        g = model.generation_config
        g.decoder_start_token_id, g.eos_token_id = model.config.decoder_start_token_id, model.config.eos_token_id
        g.pad_token_id, g.forced_eos_token_id, g.forced_bos_token_id = model.config.pad_token_id, None, None
        model.save_pretrained(os.fspath(out), safe_serialization=True)


def _pair_inputs(batch: dict) -> dict:
    """A collated pair batch (``PairCollate``) as the models read it: the question into the encoder, the reply
    into the decoder, the task positions those whose next reply token is real."""
    a_mask = batch["a_attention_mask"]
    return {"input_ids": batch["q_input_ids"], "mask": batch["q_attention_mask"], "ids": batch["a_input_ids"],
            "decoder_mask": a_mask, "chosen": _next_is(a_mask.bool())}


FAMILY = Seq2SeqLM()


# ------------------------------------------------------------------------------------------ evaluation
class Seq2SeqSplit:
    """One split's evaluation pairs: questions, true replies, and per question the candidates (true reply first,
    then ``DISTRACTORS`` replies of other dialogues of its department, others when it has too few; drawn by a
    generator seeded with the pair id, the same for every trial)."""

    def __init__(self, prepared: str, manifest: dict, split: str, pairs: int):
        import pyarrow.parquet as pq

        t = pq.read_table(shard_paths(prepared, split, manifest),
                          columns=["pair_id", "dialogue_id", "department", "q_input_ids", "a_input_ids"])
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        chosen = eval_order(cols["pair_id"])[:pairs]
        self.questions = [cols["q_input_ids"][i] for i in chosen]
        self.replies = [cols["a_input_ids"][i] for i in chosen]
        by_dept: dict[str, list[int]] = {}
        for i, d in enumerate(cols["department"]):
            by_dept.setdefault(d, []).append(i)
        self.candidates = []
        for i in chosen:
            rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(
                f"{EVAL_SEED}|distract|{cols['pair_id'][i]}".encode(), digest_size=8).digest(), "little"))
            picks: list[int] = []
            for pool in (by_dept[cols["department"][i]], range(len(cols["pair_id"]))):
                others = [j for j in pool if cols["dialogue_id"][j] != cols["dialogue_id"][i] and j not in picks
                          and cols["a_input_ids"][j] != cols["a_input_ids"][i]]
                need = DISTRACTORS - len(picks)
                if need > 0 and others:
                    picks += [others[k] for k in rng.choice(len(others), size=min(need, len(others)), replace=False)]
            self.candidates.append([cols["a_input_ids"][i]] + [cols["a_input_ids"][j] for j in picks])


@torch.no_grad()
def reply_logprobs(model, questions: list, replies: list, pad: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(Σ log p of each reply's tokens after its first, given its question [n] in nats, tokens scored [n]) under
    an HF encoder-decoder in eval mode (no dropout; its mode is restored after), teacher-forced, in fp32."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    try:
        return _reply_logprobs(model, questions, replies, pad, batch, device)
    finally:
        model.train(was_training)


def _reply_logprobs(model, questions: list, replies: list, pad: int, batch: int, device) -> tuple:
    nll, count = [], []
    for k in range(0, len(questions), batch):
        q, qm = (torch.from_numpy(x).to(device) for x in pad_ids(questions[k: k + batch], pad))
        a, am = (torch.from_numpy(x).to(device) for x in pad_ids(replies[k: k + batch], pad))
        inputs = _pair_inputs({"q_input_ids": q, "q_attention_mask": qm, "a_input_ids": a, "a_attention_mask": am})
        logits = FAMILY.run(model, inputs, hidden=False).logits
        lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.roll(a, -1, 1)[..., None]).squeeze(-1)
        nll.append((lp * inputs["chosen"]).sum(1).double().cpu().numpy())
        count.append(inputs["chosen"].sum(1).cpu().numpy())
    return np.concatenate(nll), np.concatenate(count)


class Seq2SeqEvaluation(Evaluation):
    """The ``seq2seq_lm`` family's part of the evaluation protocol (see the module docstring); the teacher's part
    is memoised (``Evaluation.memo``)."""

    memo_tag = "seq2seq"

    def __init__(self, prepared, manifest, pairs, pad: int, teacher_key=None):
        super().__init__(prepared, manifest, pairs, teacher_key)
        self.pad, self._splits = pad, {}

    @classmethod
    def for_trial(cls, prepared, manifest, pairs, *, tokens=None, vocab_size=None, template=None, teacher_key=None):
        return cls(prepared, manifest, pairs, manifest["tokenizer"]["pad_token_id"], teacher_key)

    def data(self, split: str) -> Seq2SeqSplit:
        name = "validation" if split == "val" else split
        if name not in self._splits:
            self._splits[name] = Seq2SeqSplit(self.prepared, self.manifest, name, self.pairs)
        return self._splits[name]

    @property
    def val(self) -> list[dict]:
        from raykd.data.collate import PairCollate

        d = self.data("val")
        return [PairCollate(self.pad)({"q_input_ids": d.questions[k: k + 64], "a_input_ids": d.replies[k: k + 64]})
                for k in range(0, len(d.questions), 64)]

    def _scores(self, model, split: str) -> dict:
        d = self.data(split)
        nll, count = reply_logprobs(model, d.questions, d.replies, self.pad)
        flat_q = [q for q, c in zip(d.questions, d.candidates) for _ in c]
        s, n = reply_logprobs(model, flat_q, [r for c in d.candidates for r in c], self.pad)
        per, rows, k = s / np.maximum(n, 1), [], 0
        for c in d.candidates:
            rows.append(list(per[k: k + len(c)]) + [-np.inf] * (DISTRACTORS + 1 - len(c)))
            k += len(c)
        credit = CM.selection_credit(rows, [0] * len(rows))
        return {"perplexity": CM.perplexity(-float(nll.sum()), int(count.sum())), "answer_accuracy": float(credit.mean()),
                "answer_chance": CM.selection_chance([len(c) for c in d.candidates]), "_credit": credit,
                "_nll": -nll, "_count": count}

    def split(self, student, teacher, split, bootstrap=0, prefix=""):
        lm, t_lm = _hf(getattr(student, "student", student)), _hf(teacher)
        theirs = self.memo(teacher, f"scores/{split}", lambda: self._scores(t_lm, split))
        mine = theirs if lm is t_lm else self._scores(lm, split)
        m = {**mine, "teacher_perplexity": theirs["perplexity"], "teacher_answer_accuracy": theirs["answer_accuracy"],
             "retained_accuracy_above_chance": CM.retained_above_chance(mine["answer_accuracy"],
                                                                        theirs["answer_accuracy"], mine["answer_chance"]),
             "param_reduction": 1.0 - CM.param_count(lm) / CM.param_count(t_lm)}
        if bootstrap > 0:
            n = len(mine["_credit"])
            stats = {"answer_accuracy": lambda i: mine["_credit"][i].mean(),
                     "perplexity": lambda i: float(np.exp(mine["_nll"][i].sum() / max(mine["_count"][i].sum(), 1)))}
            for name, stat in stats.items():
                m[f"{name}_ci_low"], m[f"{name}_ci_high"] = CM.bootstrap_ci(stat, n, bootstrap, EVAL_SEED + 1)
        return {f"{prefix}{split}/{k}": float(v) for k, v in m.items() if not k.startswith("_")}

    def efficiency(self, student, teacher, batch_size, seq_len):
        lm, t_lm = _hf(student), _hf(teacher)
        s = RM.efficiency(lm, LATENCY_BATCHES, seq_len)
        t = self.memo(teacher, f"efficiency/{seq_len}", lambda: RM.efficiency(t_lm, LATENCY_BATCHES, seq_len))
        out = {"test/params": float(s["params"]), "test/teacher_params": float(t["params"])}
        for b in LATENCY_BATCHES:
            out[f"test/latency_ms_b{b}"] = s[f"latency_ms_b{b}"]
            out[f"test/speedup_b{b}"] = t[f"latency_ms_b{b}"] / max(s[f"latency_ms_b{b}"], 1e-9)
        return out
