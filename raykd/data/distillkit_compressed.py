"""DistillKit's compressed top-k log-prob rows (``compressed_logprobs`` / ``bytepacked_indices``, arcee-ai
DistillKit's ``distillkit/compression/``): its ``DistributionQuantizationConfig`` checked as DistillKit checks it
(``compression_config``, ``load_compression_config``), MSB-first bit unpacking (``unpack_bits``) and the decoder
(``decompress_distillkit``): the first ``exact_k`` values exact, the rest a polynomial fit over rank plus
quantised residuals (approximations), delta-encoded or not. Pure NumPy; read by
``raykd.data.logprob_sources.read_distillkit``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from raykd.errors import RaykdError

FLOAT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}  # DistillKit's TermDtype
SPECIAL_TERMS = ("sqrt", "exp")
LEGACY_KEYS = ("packed_indices", "exact_values", "coeffs")  # DistillKit's legacy compressed rows: not read
_BIN_KEYS = ("scale_dtype", "element_bits", "num_elements")
_CONFIG_KEYS = ("d", "k", "exact_k", "exact_dtype", "polynomial_terms", "term_dtype", "residual_bins",
                "delta_encoding", "error_diffusion", "normalize_t")


@dataclass(frozen=True)
class QuantBin:
    """One of DistillKit's residual bins: a scale in ``scale_dtype``, then ``num_elements`` values of
    ``element_bits`` bits each."""

    scale_dtype: str
    element_bits: int
    num_elements: int

    def packed_bytes(self) -> int:
        """Bytes of its packed values per position (padded to a whole byte)."""
        return (self.element_bits * self.num_elements + 7) // 8

    def nbytes(self) -> int:
        """The bin's bytes per position: its scale and its packed values."""
        return FLOAT_BYTES[self.scale_dtype] + self.packed_bytes()


@dataclass(frozen=True)
class CompressionConfig:
    """DistillKit's ``DistributionQuantizationConfig`` (``distillkit/compression/config.py``): vocabulary
    ``d``, ``k`` values per position, the first ``exact_k`` stored in ``exact_dtype``, the rest a fit over
    rank of ``polynomial_terms`` (powers, "sqrt", "exp"; coefficients in ``term_dtype``) plus residuals
    quantised in ``residual_bins``; ``delta_encoding``: the values are differences to the previous one.
    ``error_diffusion`` only changes how the residuals were encoded. Build it with ``compression_config``."""

    d: int
    k: int
    exact_k: int
    exact_dtype: str = "float32"
    polynomial_terms: tuple = ()
    term_dtype: str = "float32"
    residual_bins: tuple[QuantBin, ...] = ()
    delta_encoding: bool = True
    error_diffusion: bool = False
    normalize_t: bool = False

    def index_bits(self) -> int:
        """Bits per packed token id: ceil(log2(d)) (at least 1)."""
        return max(1, (self.d - 1).bit_length())

    def index_bytes(self) -> int:
        """``bytepacked_indices`` bytes per position."""
        return (self.k * self.index_bits() + 7) // 8

    def logprob_bytes(self) -> int:
        """``compressed_logprobs`` bytes per position."""
        return (self.exact_k * FLOAT_BYTES[self.exact_dtype] + len(self.polynomial_terms) * FLOAT_BYTES[self.term_dtype]
                + sum(b.nbytes() for b in self.residual_bins))


def _bad(where: str, key: str, msg: str) -> RaykdError:
    return RaykdError(f"{where}: {key}: {msg}")


def _int_at_least(raw: dict, key: str, lo: int, where: str, hi: int | None = None) -> int:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        span = f"{lo}..{hi}" if hi is not None else f"≥ {lo}"
        raise _bad(where, key, f"{v!r} is not an integer {span}")
    return v


def _dtype(raw: dict, key: str, where: str, default: str | None = None) -> str:
    v = raw.get(key, default)
    if v not in FLOAT_BYTES:
        raise _bad(where, key, f"{v!r} is not one of {', '.join(FLOAT_BYTES)}")
    return v


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    v = raw.get(key, default)
    if not isinstance(v, bool):
        raise _bad(where, key, f"{v!r} is not one of true, false")
    return v


def _keys(raw, allowed: tuple, required: tuple, where: str, what: str) -> dict:
    """``raw`` as a mapping holding only ``allowed`` keys and every ``required`` one."""
    if not isinstance(raw, dict):
        raise RaykdError(f"{where}: {what} must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in allowed:
            raise _bad(where, str(key), f"unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in raw:
            raise _bad(where, key, "missing (required)")
    return raw


def _terms(raw: dict, where: str) -> tuple:
    v = raw.get("polynomial_terms") or []
    if not isinstance(v, list):
        raise _bad(where, "polynomial_terms", f"{v!r} is not a list")
    for t in v:
        if t not in SPECIAL_TERMS and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise _bad(where, "polynomial_terms", f"{t!r} is not a power ≥ 0 or one of {', '.join(SPECIAL_TERMS)}")
    return tuple(v)


def _bins(raw: dict, where: str) -> tuple[QuantBin, ...]:
    v = raw["residual_bins"]
    if not isinstance(v, list):
        raise _bad(where, "residual_bins", f"{v!r} is not a list")
    out = []
    for i, b in enumerate(v):
        at = f"{where}: residual_bins[{i}]"
        b = _keys(b, _BIN_KEYS, _BIN_KEYS, at, "a bin")
        out.append(QuantBin(_dtype(b, "scale_dtype", at), _int_at_least(b, "element_bits", 1, at, 64),
                            _int_at_least(b, "num_elements", 1, at)))
    return tuple(out)


def compression_config(raw, where: str = "compression config") -> CompressionConfig:
    """``raw`` (a mapping as DistillKit writes its ``DistributionQuantizationConfig``) checked as DistillKit
    checks it; RaykdError naming ``where``, the key and the allowed values."""
    raw = _keys(raw, _CONFIG_KEYS, ("d", "k", "exact_k", "residual_bins"), where, "DistillKit's compression config "
                "(its DistributionQuantizationConfig: a DistillKit config's teacher.logprob_compressor block)")
    c = CompressionConfig(
        _int_at_least(raw, "d", 1, where), _int_at_least(raw, "k", 1, where), _int_at_least(raw, "exact_k", 0, where),
        _dtype(raw, "exact_dtype", where, "float32"), _terms(raw, where), _dtype(raw, "term_dtype", where, "float32"),
        _bins(raw, where), _flag(raw, "delta_encoding", True, where), _flag(raw, "error_diffusion", False, where),
        _flag(raw, "normalize_t", False, where))
    approx = c.k - c.exact_k
    if approx < 0:
        raise _bad(where, "exact_k", f"{c.exact_k} is more than k = {c.k}")
    if approx and not c.polynomial_terms and not c.residual_bins:
        raise _bad(where, "polynomial_terms", f"exact_k {c.exact_k} < k {c.k}: polynomial_terms or residual_bins "
                   "needed")
    if sum(b.num_elements for b in c.residual_bins) > approx:
        raise _bad(where, "residual_bins", f"their num_elements add up to more than k − exact_k = {approx}")
    return c


def load_compression_config(path) -> CompressionConfig:
    """``compression_config`` of a JSON (``.json``) or YAML file; RaykdError naming the file otherwise."""
    import json
    from pathlib import Path

    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except OSError as e:
        raise RaykdError(f"{p}: cannot read: {e.strerror}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise RaykdError(f"{p}: not valid JSON / YAML: {str(e).splitlines()[0]}") from None
    return compression_config(raw, str(p))


def unpack_bits(data, bits: int, n: int) -> np.ndarray:
    """The first ``n`` unsigned integers of ``bits`` bits each (1..64), packed most significant bit first
    in the uint8 array ``data`` [..., M] (the last axis), as uint64 [..., n]."""
    data = np.asarray(data, dtype=np.uint8)
    if not 1 <= bits <= 64:
        raise RaykdError(f"unpack_bits: {bits} bits per value (1..64)")
    if n * bits > data.shape[-1] * 8:
        raise RaykdError(f"unpack_bits: {n} values of {bits} bits need {n * bits} bits, {data.shape[-1] * 8} given")
    flat = np.unpackbits(data, axis=-1)[..., :n * bits].reshape(*data.shape[:-1], n, bits)
    out = np.zeros(flat.shape[:-1], dtype=np.uint64)
    for i in range(bits):
        out = (out << np.uint64(1)) | flat[..., i].astype(np.uint64)
    return out


def _floats(data: np.ndarray, start: int, dtype: str, count: int) -> tuple[np.ndarray, int]:
    """(``count`` little-endian ``dtype`` values per row of ``data`` from byte ``start``, as float64, the
    byte after them). bfloat16: the upper half of a float32."""
    end = start + count * FLOAT_BYTES[dtype]
    raw = np.ascontiguousarray(data[:, start:end])
    if dtype == "bfloat16":
        vals = (raw.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        vals = raw.view({"float16": "<f2", "float32": "<f4", "float64": "<f8"}[dtype])
    return vals.astype(np.float64).reshape(len(data), count), end


def _basis(terms: tuple, n: int, normalize_t: bool) -> np.ndarray:
    """DistillKit's fit terms over ranks t = 0..n − 1 (or linspace(0, 1, n)), float64 [n, len(terms)]."""
    t = np.linspace(0.0, 1.0, n) if normalize_t else np.arange(n, dtype=np.float64)
    cols = [getattr(np, x)(t) if isinstance(x, str) else t ** x for x in terms]
    return np.stack(cols, axis=-1).reshape(n, len(terms))


def _residuals(data: np.ndarray, start: int, c: CompressionConfig) -> np.ndarray:
    """The dequantised residuals of every bin, zero-padded to k − exact_k per row, float64."""
    out = np.zeros((len(data), c.k - c.exact_k))
    col = 0
    for b in c.residual_bins:
        scale, start = _floats(data, start, b.scale_dtype, 1)
        q = unpack_bits(data[:, start:start + b.packed_bytes()], b.element_bits, b.num_elements).astype(np.float64)
        level = q * 2 - 1 if b.element_bits == 1 else q - 2.0 ** (b.element_bits - 1)
        out[:, col:col + b.num_elements] = level * scale
        start, col = start + b.packed_bytes(), col + b.num_elements
    return out


def _decode_logprobs(data: np.ndarray, c: CompressionConfig) -> np.ndarray:
    """Per row of ``data`` [L, logprob_bytes] the k log-probs, float64 [L, k] (beyond exact_k approximate)."""
    exact, start = _floats(data, 0, c.exact_dtype, c.exact_k)
    coeffs, start = _floats(data, start, c.term_dtype, len(c.polynomial_terms))
    approx = _residuals(data, start, c)
    if c.polynomial_terms:
        approx += coeffs @ _basis(c.polynomial_terms, c.k - c.exact_k, c.normalize_t).T
    values = np.concatenate([exact, approx], axis=1)
    return np.cumsum(values, axis=1) if c.delta_encoding else values


def _size_candidates(c: CompressionConfig):
    """(field, value, config with that one field changed) for each field that sets the bytes per position."""
    for dt in FLOAT_BYTES:
        yield "exact_dtype", dt, replace(c, exact_dtype=dt)
        yield "term_dtype", dt, replace(c, term_dtype=dt)
    for n in range(c.k + 1):
        yield "exact_k", n, replace(c, exact_k=n)
        yield "polynomial_terms", f"{n} terms", replace(c, polynomial_terms=(0,) * n)
    for i, b in enumerate(c.residual_bins):
        for bits in range(1, 65):
            yield f"residual_bins[{i}].element_bits", bits, replace(
                c, residual_bins=c.residual_bins[:i] + (replace(b, element_bits=bits),) + c.residual_bins[i + 1:])
        for dt in FLOAT_BYTES:
            yield f"residual_bins[{i}].scale_dtype", dt, replace(
                c, residual_bins=c.residual_bins[:i] + (replace(b, scale_dtype=dt),) + c.residual_bins[i + 1:])


def _size_hint(got: int, c: CompressionConfig) -> str:
    """Which config field probably differs when positions hold ``got`` compressed_logprobs bytes."""
    fits = {}
    for key, value, other in _size_candidates(c):
        if other.logprob_bytes() == got:
            fits.setdefault(key, value)
    if fits:
        (key, value), *more = list(fits.items())[:3]
        return f"{key} probably differs ({value} would fit)" + "".join(f"; or {k} ({v})" for k, v in more)
    return ("the sizes come from exact_k × exact_dtype, polynomial_terms × term_dtype and residual_bins "
            "(scale_dtype + element_bits × num_elements each): more than one of them differs")


def _byte_rows(rows, width: int, what: str, hint) -> np.ndarray:
    """Per-position byte lists (lists of ints 0..255 or ``bytes``) as uint8 [L, width]; RaykdError with
    ``hint(n)`` when a position holds n ≠ ``width`` bytes."""
    rows = list(rows)
    n = next((len(r) for r in rows if len(r) != width), None)
    if n is not None:
        raise RaykdError(f"distillkit: {what} positions hold {n} bytes, the compression config gives {width}: "
                         f"{hint(n)}")
    if rows and isinstance(rows[0], (bytes, bytearray)):
        return np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), width)
    a = np.asarray(rows).reshape(len(rows), width)
    if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 255):
        raise RaykdError(f"distillkit: {what} holds values that are not bytes (0..255)")
    return a.astype(np.uint8)


def decompress_distillkit(compressed_rows, index_rows, config: CompressionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [L, k], log-probs float64 [L, k], descending as stored) of one row's
    ``compressed_logprobs`` and ``bytepacked_indices`` (per position a list of uint8) under DistillKit's
    compression ``config``; values beyond ``exact_k`` are its approximation. RaykdError when the bytes do
    not fit the config (naming the field that probably differs) or an id is ≥ d."""
    c = config
    data = _byte_rows(compressed_rows, c.logprob_bytes(), "compressed_logprobs", lambda n: _size_hint(n, c))
    packed = _byte_rows(index_rows, c.index_bytes(), "bytepacked_indices",
                        lambda n: f"k = {c.k} ids of {c.index_bits()} bits (d = {c.d}): k or d differs")
    if len(data) != len(packed):
        raise RaykdError(f"distillkit: {len(data)} compressed_logprobs positions but {len(packed)} bytepacked_indices")
    ids = unpack_bits(packed, c.index_bits(), c.k)
    if ids.size and ids.max() >= c.d:
        raise RaykdError(f"distillkit: token id {int(ids.max())} ≥ d = {c.d} (the compression config's vocabulary)")
    return ids.astype(np.int64), _decode_logprobs(data, c)
