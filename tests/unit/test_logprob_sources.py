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
* DistillKit compressed rows (``distillkit/compression/{config,bitpack,monotonic_logprobs,compressor}.py``):
  ``compressed_logprobs`` / ``bytepacked_indices`` [L−1][bytes] uint8 under a
  ``DistributionQuantizationConfig``; encoded here by ``_compress`` (written from that description).
* raykd's own cache rows (``raykd/ray_layer/cache/causal_lm.py``): ``topk_ids`` / ``topk_logp`` /
  ``topk_tail`` bytes over the response tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.data import distillkit_compressed as DK
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
    with pytest.raises(RaykdError, match="legacy compressed rows .* not read"):
        S.read_distillkit({"input_ids": [1], "packed_indices": [[1]], "exact_values": [[-1.0]], "coeffs": [[0.0]]})
    with pytest.raises(RaykdError, match="--compression FILE"):  # compressed rows without their config
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


# ------------------------------------------------------------------------------------------ DistillKit compressed
def test_unpack_bits_reads_values_packed_most_significant_bit_first():
    assert DK.unpack_bits(np.array([0xAC], np.uint8), 3, 2).tolist() == [5, 3]  # 101 011 00
    # 100000 = 1 1000 0110 1010 0000 (17 bits), then 1: 11000011 01010000 00000000 00000000 01000000
    assert DK.unpack_bits(np.array([0xC3, 0x50, 0x00, 0x00, 0x40], np.uint8), 17, 2).tolist() == [100000, 1]
    assert DK.unpack_bits(np.array([0b10110000], np.uint8), 1, 4).tolist() == [1, 0, 1, 1]
    assert DK.unpack_bits(np.array([[0xFF] * 8, [0] * 7 + [1]], np.uint8), 64, 1).tolist() == [[2 ** 64 - 1], [1]]
    with pytest.raises(RaykdError, match="need 18 bits, 16 given"):
        DK.unpack_bits(np.array([0, 0], np.uint8), 9, 2)


def _bits_msb_first(values, bits: int) -> list[int]:
    """``values`` packed at ``bits`` each, most significant bit first, through an explicit list of bits."""
    stream = [(int(v) >> (bits - 1 - i)) & 1 for v in values for i in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(b << (7 - j) for j, b in enumerate(stream[o:o + 8])) for o in range(0, len(stream), 8)]


def _rounded(x, dtype: str) -> tuple[np.ndarray, list[int]]:
    """(``x`` rounded to ``dtype`` as float64, its little-endian bytes); bfloat16 rounds to nearest even."""
    x = np.atleast_1d(np.asarray(x, np.float64))
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        hi = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        return (hi.astype(np.uint32) << 16).view(np.float32).astype(np.float64), list(hi.tobytes())
    v = x.astype({"float16": "<f2", "float32": "<f4", "float64": "<f8"}[dtype])
    return v.astype(np.float64), list(v.tobytes())


def _quantized(vals: np.ndarray, b: dict) -> tuple[list[int], np.ndarray]:
    """One bin, quantised naively as DistillKit's ``quantize_naive``: (scale bytes + packed values, each
    value's error bound: a step — one more where the top value is clamped —, two steps at 1 bit)."""
    bits = b["element_bits"]
    top, lo, hi = (1.0, 0, 1) if bits == 1 else (2.0 ** (bits - 1), -2 ** (bits - 1), 2 ** (bits - 1) - 1)
    m = np.abs(vals).max()
    scale, raw = _rounded(m / top if m else 1.0, b["scale_dtype"])
    q = np.clip(np.round(vals / scale[0]), lo, hi) - lo
    return raw + _bits_msb_first(q, bits), np.full(len(vals), (2.0 if bits == 1 else 1.0) * scale[0] * 1.01)


def _compress(top: np.ndarray, cfg: dict) -> tuple[list[list[int]], np.ndarray]:
    """DistillKit's ``compress_monotonic_logprobs`` (naive quantisation) of sorted log-probs [L, k]: (per
    position the bytes, the bound on each decoded value's error, accumulated under delta encoding)."""
    v = top.astype(np.float32)
    if cfg.get("delta_encoding", True):
        v = np.concatenate([v[:, :1], v[:, 1:] - v[:, :-1]], 1)
    e, terms = cfg["exact_k"], cfg.get("polynomial_terms") or []
    rows, bounds = [], []
    for x in v.astype(np.float64):
        exact, out = _rounded(x[:e], cfg.get("exact_dtype", "float32"))
        rest, bound = x[e:], [np.abs(exact - x[:e])]
        if terms:
            t = np.arange(len(rest), dtype=np.float64)
            basis = np.stack([np.sqrt(t) if p == "sqrt" else t ** p for p in terms], 1)
            coeffs, raw = _rounded(np.linalg.lstsq(basis, rest, rcond=None)[0], cfg.get("term_dtype", "float32"))
            out, rest = out + raw, rest - basis @ coeffs
        col = 0
        for b in cfg["residual_bins"]:
            raw, err = _quantized(rest[col:col + b["num_elements"]], b)
            out, col = out + raw, col + b["num_elements"]
            bound.append(err)
        rows.append(out)
        bounds.append(np.concatenate(bound + [np.abs(rest[col:])]))
    bounds = np.array(bounds)
    return rows, np.cumsum(bounds, 1) if cfg.get("delta_encoding", True) else bounds


def _indices(ids: np.ndarray, d: int) -> list[list[int]]:
    bits = int(np.ceil(np.log2(d)))  # DistillKit's vocab_index_bits
    return [_bits_msb_first(r, bits) for r in ids]


K2 = 24
BINS = [{"scale_dtype": "bfloat16", "element_bits": 4, "num_elements": 8},
        {"scale_dtype": "bfloat16", "element_bits": 2, "num_elements": K2 - 2 - 8}]


def _dk_top(seq):
    _, lp = _teacher(seq, 1.0)
    idx = np.argsort(-lp[:-1], axis=1, kind="stable")[:, :K2]  # row t over token t + 1, descending
    return idx, np.take_along_axis(lp[:-1], idx, 1)


@pytest.mark.parametrize("delta, scale_dtype, exact_dtype", [(True, "bfloat16", "float32"),
                                                            (False, "float16", "float32"),
                                                            (True, "float16", "bfloat16")])
def test_compressed_distillkit_rows_decode_within_the_quantisation_bound(delta, scale_dtype, exact_dtype):
    seq, resp = _pair()
    idx, top = _dk_top(seq)
    cfg = {"d": V, "k": K2, "exact_k": 2, "exact_dtype": exact_dtype, "polynomial_terms": [0, 1, 2, "sqrt"],
           "residual_bins": [dict(b, scale_dtype=scale_dtype) for b in BINS], "delta_encoding": delta}
    rows, bound = _compress(top, cfg)
    config = DK.compression_config(cfg)
    ids, logp = DK.decompress_distillkit(rows, _indices(idx, V), config)
    assert (ids == idx).all() and ids.dtype == np.int64
    err = np.abs(logp - top)
    assert (err <= bound + 1e-5).all(), (err.max(), bound.max())
    assert err[:, 2:].max() > 0  # beyond exact_k: an approximation
    # as a source row (bytes per position work as well as lists): the same, aligned from token one
    row = S.read_distillkit({"input_ids": seq.tolist(), "compressed_logprobs": [bytes(r) for r in rows],
                             "bytepacked_indices": _indices(idx, V)}, config)
    assert S.check_row(row, V) is None and (row.ids == idx).all() and np.array_equal(row.logp, logp)
    S.check_alignment(S.alignment_rates([row]), "src")
    assert S.cache_row(row, resp, 1.0, False) is not None


def test_compressed_distillkit_rows_without_approximation_decode_exactly():
    seq, _ = _pair()
    idx, top = _dk_top(seq)
    cfg = {"d": V, "k": K2, "exact_k": K2, "residual_bins": [], "delta_encoding": False}
    rows, _ = _compress(top, cfg)
    ids, logp = DK.decompress_distillkit(rows, _indices(idx, V), DK.compression_config(cfg))
    assert (ids == idx).all() and np.array_equal(logp, top.astype(np.float32).astype(np.float64))


def test_compressed_rows_that_do_not_fit_the_config_are_refused():
    seq, _ = _pair()
    idx, top = _dk_top(seq)
    cfg = {"d": V, "k": K2, "exact_k": 2, "polynomial_terms": [0, 1, 2, "sqrt"], "residual_bins": BINS}
    rows, packed = _compress(top, cfg)[0], _indices(idx, V)
    with pytest.raises(RaykdError, match=r"exact_dtype probably differs \(float32 would fit\)"):
        DK.decompress_distillkit(rows, packed, DK.compression_config(dict(cfg, exact_dtype="float16")))
    with pytest.raises(RaykdError, match=r"hold 36 bytes, .* gives 32: exact_k probably differs \(3 would fit\); "
                                         r"or polynomial_terms \(4 terms\)"):  # one of them
        DK.decompress_distillkit(rows, packed, DK.compression_config(dict(cfg, polynomial_terms=[0, 1, 2])))
    with pytest.raises(RaykdError, match=r"residual_bins\[0\]\.element_bits probably differs "
                                         r"\(2 would fit\); or residual_bins\[1\]\.element_bits \(2\)"):
        DK.decompress_distillkit(rows, packed, DK.compression_config(
            dict(cfg, residual_bins=[BINS[0], dict(BINS[1], element_bits=3)])))
    with pytest.raises(RaykdError, match="bytepacked_indices .* k or d differs"):
        DK.decompress_distillkit(rows, packed, DK.compression_config(dict(cfg, d=2 * V)))  # 7 bits an id, not 6
    with pytest.raises(RaykdError, match=r"token id \d+ ≥ d = 40"):
        DK.decompress_distillkit(rows, packed, DK.compression_config(dict(cfg, d=40)))  # 6 bits too
    with pytest.raises(RaykdError, match="positions but"):
        DK.decompress_distillkit(rows, packed[:-1], DK.compression_config(cfg))
    with pytest.raises(RaykdError, match=r"not bytes \(0\.\.255\)"):
        DK.decompress_distillkit([r[:-1] + [256] for r in rows], packed, DK.compression_config(cfg))


@pytest.mark.parametrize("change, match", [
    ({"exact_dtpe": "float16"}, r"cfg\.yaml: exact_dtpe: unknown key \(allowed: d, k, exact_k"),
    ({"exact_dtype": "float8"}, r"exact_dtype: 'float8' is not one of float16, bfloat16, float32, float64"),
    ({"residual_bins": [dict(BINS[0], element_bits=0)]},
     r"residual_bins\[0\]: element_bits: 0 is not an integer 1\.\.64"),
    ({"residual_bins": [dict(BINS[0], bits=3)]}, r"residual_bins\[0\]: bits: unknown key"),
    ({"exact_k": 30}, "exact_k: 30 is more than k = 24"),
    ({"residual_bins": BINS + [BINS[0]]}, "residual_bins: their num_elements add up to more than k − exact_k = 22"),
    ({"polynomial_terms": None, "residual_bins": []}, "polynomial_terms or residual_bins needed"),
    ({"polynomial_terms": [1, "log"]}, "polynomial_terms: 'log' is not a power ≥ 0 or one of sqrt, exp"),
    ({"delta_encoding": "yes"}, "delta_encoding: 'yes' is not one of true, false"),
    ({"d": None}, "d: None is not an integer ≥ 1"),
], ids=["unknown-key", "dtype", "bits", "bin-key", "exact_k", "bins", "no-fit", "term", "flag", "d"])
def test_a_bad_compression_config_file_is_named_with_its_key(tmp_path, change, match):
    import yaml

    cfg = {"d": V, "k": K2, "exact_k": 2, "polynomial_terms": [0, 1, 2, "sqrt"], "residual_bins": BINS, **change}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RaykdError, match=match):
        DK.load_compression_config(tmp_path / "cfg.yaml")


def test_a_compression_config_reads_from_json_and_yaml(tmp_path):
    import json

    cfg = {"d": V, "k": K2, "exact_k": 2, "polynomial_terms": [0, 1, 2, "sqrt"], "residual_bins": BINS,
           "error_diffusion": True}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "c.yml").write_text("d: 50\nk: 24\nexact_k: 2\npolynomial_terms: [0, 1, 2, sqrt]\n"
                                    "error_diffusion: true\nresidual_bins:\n"
                                    "- {scale_dtype: bfloat16, element_bits: 4, num_elements: 8}\n"
                                    "- {scale_dtype: bfloat16, element_bits: 2, num_elements: 14}\n")
    a, b = DK.load_compression_config(tmp_path / "c.json"), DK.load_compression_config(tmp_path / "c.yml")
    assert a == b and a.logprob_bytes() == 2 * 4 + 4 * 4 + (2 + 4) + (2 + 4) and a.index_bytes() == 18
    with pytest.raises(RaykdError, match="missing"):
        DK.compression_config({"d": V, "k": K2, "exact_k": 2}, "x")
    with pytest.raises(RaykdError, match="no such|cannot read"):
        DK.load_compression_config(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RaykdError, match="bad.json: not valid JSON"):
        DK.load_compression_config(tmp_path / "bad.json")
