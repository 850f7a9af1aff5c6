"""A tiny causal setting shared by the causal-family tests: vocabulary, template, token ids and a random batch."""

from __future__ import annotations

import numpy as np

from raykd.data.collate import CausalCollate
from raykd.data.template import CausalTemplate
from raykd.distill.methods import TokenIds

VOCAB, PAD, BOS, EOS = 50, 0, 1, 2
TEMPLATE = CausalTemplate(prefix=(BOS, 5), middle=(6, 7), suffix=(EOS,), strip=(PAD, BOS, EOS), eos=EOS, pad=PAD)
TOKENS = TokenIds(PAD, None, None, None, (BOS, EOS))


def causal_batch(rows=4, seed=0):
    """(a collated batch of ``rows`` random prompt/response pairs, the prompts, the responses)."""
    g = np.random.default_rng(seed)
    q = [list(g.integers(8, VOCAB, size=int(g.integers(2, 6)))) for _ in range(rows)]
    a = [list(g.integers(8, VOCAB, size=int(g.integers(1, 5)))) for _ in range(rows)]
    batch = CausalCollate(TEMPLATE, {"x": 0})({"q_input_ids": q, "a_input_ids": a,
                                               "department": np.array(["x"] * rows)})
    return batch, q, a
