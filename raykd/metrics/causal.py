"""Metrics of a causal LM on prompt + response sequences, in the companion paper's claim form: response
perplexity, answer-selection accuracy (retained accuracy = student ÷ teacher), character ROUGE-L of
greedy generations, prefill latency and decode speed. Pure torch; imports no other raykd module.

Sequences are right-padded ``input_ids`` / ``attention_mask`` with a ``response_mask`` marking the
response tokens (the tokens scored); the logits at position p predict the token at p + 1."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch

from raykd.data.collate import pad_ids
from raykd.models.sharding import is_sharded


@torch.no_grad()
def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log p of each sequence's response tokens [b] in nats, response token count [b]) under
    ``model`` (an HF causal LM), on the model's device, in fp32."""
    device = next(model.parameters()).device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = response_mask.to(device)[:, 1:].bool()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * target).sum(1).cpu().double(), target.sum(1).cpu()


def perplexity(total_nll: float, tokens: int) -> float:
    """exp(Σ NLL / Σ tokens): the response perplexity (∞ when no token was scored)."""
    return math.exp(total_nll / tokens) if tokens > 0 else math.inf


def selection_credit(scores, true_index) -> np.ndarray:
    """Per question: 1 when its true candidate has the highest score, 1/k when it ties with k − 1
    others for the highest, else 0 (so a constant model earns exactly 1/candidates)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(true_index, dtype=np.int64)
    if s.ndim != 2 or len(s) != len(t):
        raise ValueError(f"selection_accuracy: scores {s.shape} and true_index {t.shape} do not match")
    if not len(t):
        return np.zeros(0)
    best = s.max(1, keepdims=True)
    top = np.isclose(s, best, rtol=1e-6, atol=1e-9)  # fp32 log-probabilities: equal up to rounding
    return top[np.arange(len(t)), t] / top.sum(1)


def selection_accuracy(scores, true_index) -> float:
    """Fraction of questions whose true candidate has the highest score (``selection_credit``'s mean;
    ties share the credit)."""
    credit = selection_credit(scores, true_index)
    return float(credit.mean()) if len(credit) else math.nan


def selection_chance(candidates_per_question) -> float:
    """The answer accuracy of a model that cannot tell the candidates apart (ties share the credit):
    the mean over questions of 1 / its number of candidates. From the data, never from a model's scores."""
    k = np.asarray(candidates_per_question, dtype=np.float64)
    return float(np.mean(1.0 / np.maximum(k, 1))) if len(k) else math.nan


def retained_above_chance(student: float, teacher: float, chance: float) -> float:
    """(student − chance) ÷ (teacher − chance): the share of the teacher's margin over chance the student
    keeps — 0 for a student at chance (an untrained one), 1 at the teacher; NaN when the teacher is not
    above chance. Unlike student ÷ teacher it has no floor: with 5 candidates an untrained student
    already "retains" 0.2 ÷ teacher of the plain ratio."""
    return (student - chance) / (teacher - chance) if teacher - chance > 1e-12 else math.nan


def bootstrap_ci(stat, n: int, draws: int, seed: int) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of ``stat(idx)`` over ``draws`` resamples of n items with
    replacement (non-finite values dropped)."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(draws)], dtype=float)
    vals = vals[np.isfinite(vals)]
    return tuple(float(v) for v in np.percentile(vals, [2.5, 97.5])) if len(vals) else (math.nan, math.nan)


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (dynamic programming, O(|a|·|b|))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (whitespace removed): 2·P·R/(P+R) with P = LCS/|prediction|,
    R = LCS/|reference|; 0 when either is empty."""
    p, r = "".join(prediction.split()), "".join(reference.split())
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded for generation: (ids [b, t], attention mask [b, t]), int64."""
    ids, mask = pad_ids(prompts, pad, left=True)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.no_grad()
def greedy_responses(model, prompts: list[list[int]], max_new_tokens: int, eos: int, pad: int,
                     batch_size: int = 16) -> list[list[int]]:
    """The greedy continuation of each prompt (KV cache), cut before its first eos. A model sharded
    over ranks (``parallel.is_sharded``; every rank calls this) keeps stepping until every rank's batch
    is done (HF's ``synced_gpus``), so no rank waits on a collective the others left."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[i: i + batch_size], pad)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                 use_cache=True, synced_gpus=is_sharded(model))[:, ids.shape[1]:].cpu()
            for row in gen.tolist():
                out.append(row[: row.index(eos)] if eos in row else row)
    finally:
        model.train(was)
    return out


@torch.no_grad()
def decode_tokens_per_s(model, prompt: list[int], new_tokens: int = 32, pad: int = 0, repeats: int = 3) -> float:
    """Greedy decoding speed at batch 1 with a KV cache: ``new_tokens`` generated after ``prompt``
    (eos never ends it early), tokens per second, median of ``repeats`` timed runs after a warm-up."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    was = model.training
    model.eval()
    times = []
    try:
        for r in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times.append(time.perf_counter() - t)
    finally:
        model.train(was)
    return new_tokens / statistics.median(times)


def param_count(model) -> int:
    """Parameters of a model (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def score_pairs(model, prompts: list[list[int]], responses: list[list[int]], pad: int,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(Σ log p of each response given its prompt, its token count) for parallel lists, batched, with the model
    in eval mode (no dropout: GPT-2's is 0.1; its mode is restored after)."""
    was = model.training
    model.eval()
    try:
        return _score_pairs(model, prompts, responses, pad, batch_size)
    finally:
        model.train(was)


def _score_pairs(model, prompts, responses, pad: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    sums, counts = [], []
    for i in range(0, len(prompts), batch_size):
        seqs = [p + r for p, r in zip(prompts[i: i + batch_size], responses[i: i + batch_size])]
        ids, mask = (torch.from_numpy(x) for x in pad_ids(seqs, pad))
        resp = torch.zeros_like(ids)
        for j, p in enumerate(prompts[i: i + batch_size]):
            resp[j, len(p): len(seqs[j])] = 1
        s, c = response_logprobs(model, ids, mask, resp)
        sums.append(s.numpy())
        counts.append(c.numpy())
    return np.concatenate(sums), np.concatenate(counts)


__all__ = ["response_logprobs", "perplexity", "selection_accuracy", "selection_credit", "bootstrap_ci", "lcs_length", "rouge_l", "greedy_responses",
           "decode_tokens_per_s", "param_count", "score_pairs", "left_pad"]
