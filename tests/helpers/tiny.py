"""A tiny masked-LM teacher and a tiny question/answer batch, for tests of methods and losses."""

from __future__ import annotations

import torch

from raykd.distill.methods import TokenIds
from raykd.models.teacher import TeacherShape, build_teacher

TOK = TokenIds(pad=0, cls=2, sep=3, mask=4, others=(1,))
VOCAB = 60


def tiny_teacher(layers: int = 4, hidden: int = 32):
    """A randomly initialised BERT masked LM (``layers`` × ``hidden``, vocabulary ``VOCAB``)."""
    return build_teacher(TeacherShape(layers=layers, hidden=hidden, heads=4, intermediate=64, max_position=64), VOCAB)


def tiny_batch(b: int = 4, t: int = 10, seed: int = 0, min_len: int = 5) -> dict:
    """A collated batch of ``b`` questions and answers (``[CLS] … [SEP]``, lengths ``min_len``…``t``,
    padded), with departments 0, 1, unknown, 2."""
    g = torch.Generator().manual_seed(seed)

    def side():
        ids = torch.randint(5, VOCAB, (b, t), generator=g)
        ids[:, 0] = TOK.cls
        lengths = torch.randint(min_len, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids[torch.arange(b), lengths - 1] = TOK.sep
        return ids * mask, mask
    q, qm = side()
    a, am = side()
    return {"q_input_ids": q, "q_attention_mask": qm, "a_input_ids": a, "a_attention_mask": am,
            "department": torch.tensor([0, 1, -1, 2])[:b]}
