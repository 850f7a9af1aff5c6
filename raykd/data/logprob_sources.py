"""Teacher top-k log-probs made elsewhere, as rows raykd's causal top-k cache can hold (#35 §1; the
formats are documented in docs/offline-logprob-formats.md). Pure numpy, no Ray, no torch: the import
command streams a source through these functions with Ray Data.

Each source row is first read into a ``SourceRow`` — the token sequence the teacher scored and, per
stored position, k token ids and their log-probabilities at the source's temperature, with the index
of the token the first stored row is a distribution over (``first``): the formats disagree by one
position (axolotl's current rows and DistillKit: row j is over token j + 1; axolotl ≤ 0.18 and vLLM's
``prompt_logprobs``: over token j), which ``alignment_rates`` checks on the data itself. ``cache_row``
then turns a source row into the three byte columns of raykd's cache (``topk_ids``, ``topk_logp``,
``topk_tail``) for one prepared pair's response tokens.

Exactness: raykd's cache stores log-probabilities "at T = 1" and a tail log(1 − Σ p_T) per temperature
T; from a source made at temperature T_s it stores T_s · log p_{T_s} (log p_1 shifted by a constant
per position, which ``raykd.distill.topk.teacher_log_probs`` cancels) and the tail at T_s, so the
teacher's distribution is exact at T_s and only there. A renormalised source (axolotl's prepared rows:
Σ_top-k p = 1) has lost its tail: the bucket is stored empty (``LOG_FLOOR``), an approximation.
DistillKit's compressed rows (``decompress_distillkit``, under its ``CompressionConfig``) hold their
first ``exact_k`` values exactly and the rest as a fit plus quantised residuals: approximations, and so
is the tail computed from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raykd.data.distillkit_compressed import LEGACY_KEYS, CompressionConfig, decompress_distillkit
from raykd.errors import RaykdError

LOG_FLOOR = -50.0  # = raykd.distill.topk.LOG_FLOOR (kept torch-free here; a test checks they agree)
MASS_TOLERANCE = 1e-3  # Σ p over the top-k may exceed 1 by fp16 rounding, no more
PAD_LOGPROB = -1e8  # at or below this a stored log-probability is padding (axolotl pads with −1e9)
ALIGNMENTS = ("next", "current")  # row j over token j + 1 | row j over token j


@dataclass
class SourceRow:
    """One source sequence: ``input_ids`` [L] the tokens the teacher scored; ``ids`` / ``logp`` [R, k]
    the stored top-k ids and log-probabilities (nats, at the source's temperature); ``valid`` [R]
    whether a stored row holds a distribution (not padding); row r is the distribution over token
    ``first + r``."""

    input_ids: np.ndarray
    ids: np.ndarray
    logp: np.ndarray
    valid: np.ndarray
    first: int


def _matrix(rows, dtype, what: str) -> np.ndarray:
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise RaykdError(f"{what}: rows hold {sorted(lengths)} entries: k differs between positions (one k per source)")
    return np.asarray([list(r) for r in rows], dtype=dtype).reshape(len(rows), lengths.pop() if lengths else 0)


def read_axolotl(record: dict, alignment: str = "next") -> SourceRow:
    """An axolotl KD row: prepared (``input_ids``, ``target_token_ids`` [L][k], ``target_logprobs``
    [L][k], ``target_mask`` [L][k]; axolotl > 0.18: row j over token j + 1 = ``alignment`` "next",
    ≤ 0.18: over token j, "current") or raw v2 (``input_ids``, ``target_token_ids``, ``logprobs``:
    rows aligned with the end of ``input_ids``, the last over the last token, as vLLM's
    ``prompt_logprobs`` without its first entry; ``alignment`` does not apply)."""
    if alignment not in ALIGNMENTS:
        raise RaykdError(f"axolotl: alignment {alignment!r} is not one of {', '.join(ALIGNMENTS)}")
    seq = np.asarray(record["input_ids"], dtype=np.int64)
    values = record.get("target_logprobs", record.get("logprobs"))
    if values is None or record.get("target_token_ids") is None:
        raise RaykdError("axolotl: a row needs target_token_ids and target_logprobs (prepared) or logprobs (raw v2); "
                         f"it has {sorted(record)}")
    ids = _matrix(record["target_token_ids"], np.int64, "axolotl target_token_ids")
    logp = _matrix(values, np.float64, "axolotl target_logprobs")
    valid = (logp > PAD_LOGPROB).any(1) if logp.size else np.zeros(len(logp), bool)
    if record.get("target_mask") is not None:
        valid &= _matrix(record["target_mask"], np.int64, "axolotl target_mask").any(1)
    if "target_logprobs" in record:  # prepared: one row per input position
        first = 1 if alignment == "next" else 0
    else:  # raw v2: the rows align with the end of the sequence (the last row over the last token)
        first = len(seq) - len(ids)
    return SourceRow(seq, ids, logp, valid, first)


def read_distillkit(record: dict, compression: CompressionConfig | None = None) -> SourceRow:
    """A DistillKit row as a ``SourceRow``: raw (``input_ids``, ``token_ids`` [L'][k], ``top_values``
    [L'][k]) or compressed (``input_ids``, ``compressed_logprobs`` / ``bytepacked_indices``: per position
    a list of uint8, decoded by ``decompress_distillkit`` under ``compression``, DistillKit's
    ``DistributionQuantizationConfig``: values beyond its ``exact_k`` are approximations). Raw
    log-probs, row t over token t + 1 — vLLM's ``prompt_logprobs`` with entry 0 dropped. The legacy
    compressed rows (``packed_indices`` / ``exact_values`` / ``coeffs``) are refused."""
    if any(key in record for key in LEGACY_KEYS):
        raise RaykdError("distillkit: legacy compressed rows (packed_indices / exact_values / coeffs) are not read; "
                         "decompress them with DistillKit's LogprobCompressor(legacy_config=...).decompress_to_sparse "
                         "and write token_ids / top_values")
    if "compressed_logprobs" in record:
        if compression is None:
            raise RaykdError("distillkit: compressed rows (compressed_logprobs / bytepacked_indices) need DistillKit's "
                             "compression config: pass --compression FILE (its DistributionQuantizationConfig)")
        ids, logp = decompress_distillkit(record["compressed_logprobs"], record["bytepacked_indices"], compression)
    elif record.get("token_ids") is None or record.get("top_values") is None:
        raise RaykdError(f"distillkit: a row needs input_ids and token_ids / top_values (raw) or compressed_logprobs / "
                         f"bytepacked_indices (compressed); it has {sorted(record)}")
    else:
        ids = _matrix(record["token_ids"], np.int64, "distillkit token_ids")
        logp = _matrix(record["top_values"], np.float64, "distillkit top_values")
    return SourceRow(np.asarray(record["input_ids"], dtype=np.int64), ids, logp, (logp > PAD_LOGPROB).any(1), 1)


def read_raykd(record: dict, sequence: np.ndarray, prompt_length: int, k: int, temperatures: list[float],
               temperature: float) -> SourceRow:
    """A row of raykd's own causal cache (``topk_ids`` / ``topk_logp`` / ``topk_tail`` bytes over the
    response tokens of ``sequence``, whose prompt has ``prompt_length`` tokens), as a ``SourceRow`` at
    ``temperature`` (one of the cache's ``temperatures``: its stored tail makes it exact there)."""
    if temperature not in temperatures:
        raise RaykdError(f"raykd cache: temperature {temperature} is not cached (it has {temperatures})")
    ids = np.frombuffer(record["topk_ids"], dtype=np.int32).reshape(-1, k).astype(np.int64)
    logp1 = np.frombuffer(record["topk_logp"], dtype=np.float16).reshape(-1, k).astype(np.float64)
    tail = np.frombuffer(record["topk_tail"], dtype=np.float16).reshape(-1, len(temperatures)).astype(np.float64)
    # log p_T of the top-k from log p_1 and the tail at T (as raykd.distill.topk.teacher_log_probs)
    a = logp1 / temperature
    t = tail[:, temperatures.index(temperature)]
    log_z = _logsumexp(a) - _log1mexp(t)
    return SourceRow(np.asarray(sequence, dtype=np.int64), ids, a - log_z[:, None], np.ones(len(ids), bool),
                     prompt_length)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(-1)
    return m + np.log(np.exp(a - m[..., None]).sum(-1))


def _log1mexp(x: np.ndarray) -> np.ndarray:
    x = np.minimum(x, -1e-30)
    return np.maximum(np.where(x > -0.6931, np.log(-np.expm1(x)), np.log1p(-np.exp(x))), LOG_FLOOR)


def check_row(row: SourceRow, vocab: int) -> str | None:
    """Why ``row`` cannot be imported — a position holding fewer than k entries (k differs), ids outside
    the student's vocabulary ``vocab``, NaN / +inf log-probabilities, top-k mass above 1 +
    ``MASS_TOLERANCE`` — or None."""
    if not row.valid.any():
        return None
    ids, logp = row.ids[row.valid], row.logp[row.valid]
    if np.isnan(logp).any() or np.isposinf(logp).any():
        return "NaN or +inf log-probabilities"
    if not (logp > PAD_LOGPROB).all():
        return f"positions holding fewer than k = {logp.shape[1]} entries (padded slots): k differs between positions"
    if ids.min() < 0 or ids.max() >= vocab:
        return f"token ids outside the student's vocabulary 0..{vocab - 1} (seen {int(ids.min())}..{int(ids.max())})"
    srt = np.sort(ids, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        return "a position lists one token id twice (its probability would count twice)"
    mass = np.exp(logp).sum(1)
    if mass.max() > 1 + MASS_TOLERANCE:
        return f"top-k probabilities summing to {mass.max():.6f} > 1 + {MASS_TOLERANCE:g} (not log-probabilities?)"
    return None


class SourceCheck:
    """What ``check_alignment`` and the renormalisation warning look at, accumulated row by row (no row
    is kept): per shift s ∈ {−1, 0, +1}, how often the token a stored row is declared to be over shifted
    by s is among that row's top-k ids (the right alignment scores far higher: a teacher ranks the token
    that follows high, vLLM even adds it to its top-k), and how many stored positions hold mass 1."""

    shifts = (-1, 0, 1)

    def __init__(self):
        self.hits = {s: [0, 0] for s in self.shifts}
        self.mass_one = [0, 0]
        self.rows = 0

    def add(self, row: SourceRow) -> None:
        self.rows += 1
        for s in self.shifts:
            tok = row.first + s + np.arange(len(row.ids))
            inside = row.valid & (tok >= 0) & (tok < len(row.input_ids))
            if inside.any():
                self.hits[s][0] += int((row.ids[inside] == row.input_ids[tok[inside]][:, None]).any(1).sum())
                self.hits[s][1] += int(inside.sum())
        if row.valid.any():
            m = np.exp(row.logp[row.valid]).sum(1)
            self.mass_one[0] += int((np.abs(m - 1) <= MASS_TOLERANCE).sum())
            self.mass_one[1] += len(m)

    def rates(self) -> dict[int, float]:
        return {s: (h / n if n else 0.0) for s, (h, n) in self.hits.items()}

    def renormalized_share(self) -> float:
        """The share of valid stored positions whose top-k mass is 1 within ``MASS_TOLERANCE`` (a
        renormalised source: all of them; a raw top-k of a real teacher: almost none)."""
        return self.mass_one[0] / self.mass_one[1] if self.mass_one[1] else 0.0


def _checked(rows: list[SourceRow]) -> SourceCheck:
    c = SourceCheck()
    for r in rows:
        c.add(r)
    return c


def alignment_rates(rows: list[SourceRow]) -> dict[int, float]:
    """``SourceCheck.rates`` over ``rows``."""
    return _checked(rows).rates()


def renormalized_share(rows: list[SourceRow]) -> float:
    """``SourceCheck.renormalized_share`` over ``rows``."""
    return _checked(rows).renormalized_share()


def check_alignment(rates: dict[int, float], what: str) -> None:
    """RaykdError when a neighbouring alignment fits the data better than the declared one (a source
    shifted by one position: the next-token off-by-one), naming the rates."""
    best = max(rates, key=rates.get)
    if best != 0 and rates[best] > rates.get(0, 0.0) + 0.05:
        side = "later" if best > 0 else "earlier"
        raise RaykdError(f"{what}: the rows look shifted by one position: the declared token is in the top-k of "
                         f"{rates.get(0, 0.0):.1%} of rows, the {side} token of {rates[best]:.1%} (a next-token / "
                         "current-token convention mix-up; declare the other alignment if the source uses it)")


def cache_row(row: SourceRow, response: tuple[int, int], temperature: float, renormalized: bool
              ) -> tuple[bytes, bytes, bytes] | None:
    """raykd's cache columns (``topk_ids`` int32, ``topk_logp`` fp16 = T_s · log p_{T_s}, descending,
    ``topk_tail`` fp16 log(1 − Σ p_{T_s}) — one temperature, the source's) for the response tokens
    ``response`` = [start, end) of ``row.input_ids``; None when a response token has no valid stored row.
    ``renormalized``: the source's top-k was renormalised to mass 1, the tail is stored empty."""
    r = np.arange(*response) - row.first
    if len(r) == 0 or r.min() < 0 or r.max() >= len(row.ids) or not row.valid[r].all():
        return None
    ids, logp = row.ids[r], row.logp[r]
    order = np.argsort(-logp, axis=1, kind="stable")
    ids, logp = np.take_along_axis(ids, order, 1), np.take_along_axis(logp, order, 1)
    if renormalized:
        tail = np.full(len(r), LOG_FLOOR)
    else:
        tail = _log1mexp(np.minimum(_logsumexp(logp), 0.0))
    return (ids.astype(np.int32).tobytes(), (temperature * logp).astype(np.float16).tobytes(),
            tail[:, None].astype(np.float16).tobytes())


def sequence_key(ids) -> bytes:
    """The content key a source row and a prepared pair are matched by: their token sequence."""
    return np.asarray(ids, dtype=np.int64).tobytes()


def prepared_sequence(template, q_ids, a_ids) -> tuple[list[int], tuple[int, int]]:
    """(prompt + response ids of a prepared pair under ``template`` — a ``CausalTemplate`` —, the
    response's [start, end) in them): what a source row must equal, and the tokens the cache covers."""
    prompt, response = template.prompt(q_ids), template.response(a_ids)
    return prompt + response, (len(prompt), len(prompt) + len(response))

