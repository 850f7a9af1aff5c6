"""raykd's one optimizer loop (``raykd.train.engine``) against a loop written out here with torch alone:
bit-identical weights, accumulation equal to the whole batch, the schedules' factors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from raykd.train.engine import Engine, linear_warmup_decay, warmup_times_decay

pytestmark = pytest.mark.unit


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    m[0].bias.requires_grad_(False)  # a frozen parameter: neither optimised nor a problem for clipping
    return m


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def test_the_engine_equals_a_hand_written_adamw_loop_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 6, generator=g) * 5, torch.randint(0, 3, (4,), generator=g)) for _ in range(7)]
    ours, ref = _model(), _model()
    engine = Engine(ours, lr=3e-2, weight_decay=0.05, schedule=lambda s: 1.0 / (s + 1), clip=0.5)
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=3e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    lrs = []
    for x, y in data:
        assert engine.backward(_loss(ours, x, y))
        lrs.append(engine.step())
        opt.zero_grad(set_to_none=True)
        _loss(ref, x, y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([3e-2 / (s + 1) for s in range(len(data))], rel=1e-12)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(ours[0].bias, _model()[0].bias)  # the frozen one never moved


def test_accumulation_over_two_halves_is_one_step_on_the_whole_batch():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    halves, whole = _model(), _model()
    e2, e1 = Engine(halves, lr=1e-2, grad_accum=2, clip=None), Engine(whole, lr=1e-2, clip=None)
    assert not e2.backward(_loss(halves, x[:4], y[:4]))
    assert e2.backward(_loss(halves, x[4:], y[4:]))
    e2.step()
    assert e1.backward(_loss(whole, x, y))
    e1.step()
    for a, b in zip(halves.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in halves.parameters())  # zeroed after the step


def test_the_schedules_factors():
    f = linear_warmup_decay(2, 10)
    assert [f(s) for s in (0, 1, 2, 6, 10, 12)] == [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    h = warmup_times_decay(4, 8)
    assert [h(s) for s in (0, 3, 4, 8)] == [0.25 * 1.0, 1.0 * (1 - 3 / 8), 1.0 * 0.5, 0.0]
