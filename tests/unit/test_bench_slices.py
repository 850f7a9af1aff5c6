"""The time-sliced `overhead` comparison's arithmetic: only steps that began and ended inside a slice
count, and steps that also span other work are dropped."""

import pytest

from benchmarks import overhead as bench

pytestmark = pytest.mark.unit


def test_slice_rates_count_only_whole_steps_inside_each_slice():
    # steps of 1 s with 100 tokens, ending at t = 1, 2, …, 12; slice [2.5, 8.5] holds steps ending 4…8
    # whole (the step ending at 3 began at 2, before the slice; the one ending at 9 ended after it)
    steps = [(i, float(i), 100.0) for i in range(1, 13)]
    rates, pooled = bench._slice_rates(steps, [(2.5, 8.5)], lambda s: False)
    assert rates == [pytest.approx(100.0)] and pooled == [500.0, 5.0]
    # a stopped process: step 6 ends 10 s late (it straddled a switch), so the second slice holds steps 7…
    late = [(s, t + (10 if s >= 6 else 0), n) for s, t, n in steps]
    rates, pooled = bench._slice_rates(late, [(0.5, 5.2), (5.5, 30)], lambda s: False)
    assert rates == [pytest.approx(100.0), pytest.approx(100.0)] and pooled == [1000.0, 10.0]  # 2…5, 7…12


def test_slice_rates_skip_marked_steps_and_thin_slices():
    # step 5 also spans an evaluation (3 s): skipped, the rate stays the training rate
    steps, t = [], 0.0
    for s in range(1, 10):
        t += 4.0 if s == 5 else 1.0
        steps.append((s, t, 50.0))
    rates, _ = bench._slice_rates(steps, [(0.0, 100.0)], lambda s: s == 5)
    assert rates == [pytest.approx(50.0)]
    rates, pooled = bench._slice_rates(steps, [(0.0, 100.0)], lambda s: False)
    assert rates[0] == pytest.approx(8 * 50.0 / 11.0)  # 8 steps counted (step 1 has no start), 11 s
    # fewer than 3 whole steps in a slice: no rate, nothing pooled
    assert bench._slice_rates(steps, [(0.5, 2.5)], lambda s: False) == ([None], [0.0, 0.0])
