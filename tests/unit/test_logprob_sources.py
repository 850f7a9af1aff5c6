"""Reading teacher top-k log-probs made elsewhere (``raykd.data.logprob_sources``), without Ray: small
rows in each source's documented schema, built here from a toy teacher's logits, turned into raykd's
cache columns and compared with the distribution computed independently from those logits; the
off-by-one detection; the refusals.

Schemas (docs/offline-logprob-formats.md has the sources):
* axolotl prepared rows (``src/axolotl/integrations/kd/collator.py``, ``chat_template.py``):
  ``input_ids`` [L], ``target_token_ids`` [L][k] int, ``target_logprobs`` [L][k] float, ``target_mask``
  [L][k] 0/1; axolotl > 0.18 row j is over ``input_ids[j + 1]`` (the last row padding: logprob −1e9,
  id 0, mask 0), ≤ 0.18 over ``input_ids[j]``. Raw v2: ``input_ids``, ``target_token_ids``,
  ``logprobs``, the rows aligned with the end of ``input_ids`` (vLLM ``prompt_logprobs`` minus entry 0).
* DistillKit raw rows (``sample_logits_vllm.py``): ``input_ids``, ``token_ids`` [L−1][k], ``top_values``
  [L−1][k], row t over token t + 1, sorted descending.
* raykd's own cache rows (``raykd/ray_layer/cache/causal_lm.py``): ``topk_ids`` / ``topk_logp`` /
  ``topk_tail`` bytes over the response tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.data import logprob_sources as S
from raykd.distill.topk import LOG_FLOOR, teacher_log_probs, teacher_topk
from raykd.errors import RaykdError
from tests.helpers.tiny_causal import TEMPLATE

pytestmark = pytest.mark.unit
V, K = 50, 6


def _teacher(seq, temperature, seed=0):
    """Logits z [L, V] of a toy teacher that ranks the true next token high (position j predicts seq[j+1]),
    and log softmax(z / T) computed here."""
    g = np.random.default_rng(seed)
    z = g.normal(size=(len(seq), V)) * 1.5
    for j in range(len(seq) - 1):
        z[j, seq[j + 1]] += 4.0
    lz = z / temperature
    lp = lz - (lz.max(1, keepdims=True) + np.log(np.exp(lz - lz.max(1, keepdims=True)).sum(1, keepdims=True)))
    return z, lp


def _topk(lp):
    idx = np.argsort(-lp, axis=1, kind="stable")[:, :K]
    return idx, np.take_along_axis(lp, idx, 1)


def _pair():
    seq, resp = S.prepared_sequence(TEMPLATE, [20, 21, 22], [30, 31, 32, 33, 34])
    return np.array(seq), resp


def _axolotl(seq, lp, legacy=False):
    idx, top = _topk(lp)  # row j: position j, the distribution over token j + 1
    idx, top, mask = idx.tolist(), top.tolist(), [[1] * K for _ in seq]
    pad = ([0] * K, [-1e9] * K, [0] * K)
    if legacy:  # row j over token j: everything one row later, the first row padding
        rows = [pad] + list(zip(idx, top, mask))[:-1]
    else:
        rows = list(zip(idx, top, mask))[:-1] + [pad]
    return {"input_ids": seq.tolist(), "target_token_ids": [r[0] for r in rows],
            "target_logprobs": [r[1] for r in rows], "target_mask": [r[2] for r in rows]}


def _want(lp, resp, temperature):
    """What the cache must hold for the response tokens: the top-k of the positions before them."""
    idx, top = _topk(lp[resp[0] - 1: resp[1] - 1])
    tail = np.log1p(-np.exp(top).sum(1))
    return idx, top, tail


def _columns(cols, n):
    ids, logp, tail = cols
    return (np.frombuffer(ids, np.int32).reshape(n, K), np.frombuffer(logp, np.float16).reshape(n, K).astype(float),
            np.frombuffer(tail, np.float16).reshape(n, 1).astype(float))


def test_log_floor_agrees_with_the_cache():
    assert S.LOG_FLOOR == LOG_FLOOR


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_an_axolotl_row_becomes_the_cache_row_of_the_same_distribution(temperature):
    seq, resp = _pair()
    _, lp = _teacher(seq, temperature)
    row = S.read_axolotl(_axolotl(seq, lp))
    assert S.check_row(row, V) is None
    assert S.check_alignment(S.alignment_rates([row]), "src") is None
    ids, logp, tail = _columns(S.cache_row(row, resp, temperature, renormalized=False), resp[1] - resp[0])
    w_ids, w_top, w_tail = _want(lp, resp, temperature)
    assert (ids == w_ids).all()
    assert np.allclose(logp, temperature * w_top, atol=2e-2) and np.allclose(tail[:, 0], w_tail, atol=2e-2)
    # what a trial reads at the source's temperature is the teacher's top-k there, exactly up to fp16
    got = teacher_log_probs(torch.tensor(logp), torch.tensor(tail[:, 0]), temperature).numpy()
    assert np.allclose(got[:, :K], w_top, atol=1e-2)
    assert np.allclose(np.exp(got).sum(1), 1.0, atol=1e-2)


def test_the_next_token_off_by_one_is_detected_and_the_declared_convention_accepted():
    seq, resp = _pair()
    _, lp = _teacher(seq, 1.0)
    legacy = _axolotl(seq, lp, legacy=True)
    rates = S.alignment_rates([S.read_axolotl(legacy)])  # read as current axolotl: one row off
    assert rates[-1] > 0.9 and rates[0] < 0.5  # each row is over the token before the declared one
    with pytest.raises(RaykdError, match="shifted by one position"):
        S.check_alignment(rates, "src")
    row = S.read_axolotl(legacy, alignment="current")  # declared as what it is: reads like the current rows
    S.check_alignment(S.alignment_rates([row]), "src")
    assert S.cache_row(row, resp, 1.0, False) == S.cache_row(S.read_axolotl(_axolotl(seq, lp)), resp, 1.0, False)


def test_raw_axolotl_and_distillkit_rows_align_with_the_end_and_from_token_one():
    seq, resp = _pair()
    _, lp = _teacher(seq, 1.0)
    idx, top = _topk(lp[:-1])  # prompt_logprobs without entry 0: one row per token 1..L-1
    raw = S.read_axolotl({"input_ids": seq.tolist(), "target_token_ids": idx.tolist(), "logprobs": top.tolist()})
    dk = S.read_distillkit({"input_ids": seq.tolist(), "token_ids": idx.tolist(), "top_values": top.tolist()})
    want = S.cache_row(S.read_axolotl(_axolotl(seq, lp)), resp, 1.0, False)
    for row in (raw, dk):
        S.check_alignment(S.alignment_rates([row]), "src")
        assert S.cache_row(row, resp, 1.0, False) == want
    with pytest.raises(RaykdError, match="decompress"):
        S.read_distillkit({"input_ids": [1], "compressed_logprobs": [[1]], "bytepacked_indices": [[1]]})


def test_a_raykd_cache_row_reads_back_at_any_cached_temperature():
    seq, resp = _pair()
    z, _ = _teacher(seq, 1.0)
    n = resp[1] - resp[0]
    h = torch.tensor(z[resp[0] - 1: resp[1] - 1])  # the head as identity: logits = h
    ids, logp1, tails = teacher_topk(h, torch.eye(V, dtype=h.dtype), None, K, [1.0, 2.0])
    rec = {"topk_ids": ids.numpy().tobytes(), "topk_logp": logp1.half().numpy().tobytes(),
           "topk_tail": tails.half().numpy().tobytes()}
    _, lp2 = _teacher(seq, 2.0)
    row = S.read_raykd(rec, seq, resp[0], K, [1.0, 2.0], 2.0)
    got_ids, logp, tail = _columns(S.cache_row(row, resp, 2.0, False), n)
    w_ids, w_top, w_tail = _want(lp2, resp, 2.0)
    assert (got_ids == w_ids).all() and np.allclose(logp, 2.0 * w_top, atol=3e-2)
    assert np.allclose(tail[:, 0], w_tail, atol=3e-2)
    with pytest.raises(RaykdError, match="not cached"):
        S.read_raykd(rec, seq, resp[0], K, [1.0, 2.0], 4.0)


def test_renormalised_rows_are_recognised_and_get_an_empty_tail():
    seq, resp = _pair()
    _, lp = _teacher(seq, 1.0)
    raw = S.read_axolotl(_axolotl(seq, lp))
    renorm = S.read_axolotl(_axolotl(seq, lp))
    v = renorm.valid
    renorm.logp[v] = renorm.logp[v] - np.log(np.exp(renorm.logp[v]).sum(1, keepdims=True))
    assert S.renormalized_share([raw]) < 0.2 and S.renormalized_share([renorm]) == 1.0
    _, _, tail = _columns(S.cache_row(renorm, resp, 1.0, renormalized=True), resp[1] - resp[0])
    assert (tail == LOG_FLOOR).all()


def test_bad_rows_are_named():
    seq, resp = _pair()
    _, lp = _teacher(seq, 1.0)
    good = _axolotl(seq, lp)

    def bad(**change):
        row = S.read_axolotl(good)
        for k, f in change.items():
            setattr(row, k, f(getattr(row, k).copy()))
        return S.check_row(row, V)

    def at(value, j=2):
        def f(a):
            a[j, 0] = value
            return a
        return f

    assert "vocabulary" in bad(ids=at(V))
    assert "vocabulary" in bad(ids=at(-1))
    assert "NaN" in bad(logp=at(np.nan)) and "+inf" in bad(logp=at(np.inf))
    assert "summing" in bad(logp=lambda a: a + 1.0)
    assert "fewer than k" in bad(logp=at(-1e9))
    assert "twice" in bad(ids=lambda a: (a.__setitem__((2, 1), a[2, 0]), a)[1])
    ragged = dict(good, target_token_ids=[r[:-1] if j == 3 else r for j, r in enumerate(good["target_token_ids"])])
    with pytest.raises(RaykdError, match="k differs"):
        S.read_axolotl(ragged)
    # a response token without a stored row (a source cut shorter than the pair): no cache row
    short = S.read_axolotl(good)
    short.valid[resp[1] - 3] = False
    assert S.cache_row(short, resp, 1.0, False) is None


def test_rows_are_matched_by_their_token_sequence():
    seq, _ = _pair()
    assert S.sequence_key(seq.tolist()) == S.sequence_key(np.array(seq, dtype=np.int32))
    assert S.sequence_key(seq.tolist()) != S.sequence_key(seq[:-1].tolist())
