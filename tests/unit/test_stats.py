"""Report statistics against values computed by hand / from tables."""

from __future__ import annotations

import math

import pytest

from raykd.results.stats import holm, mean_ci, paired_t

pytestmark = pytest.mark.unit


def test_mean_ci_uses_student_t_with_n_minus_1_df():
    # n = 3, mean 2, sd 1: half-width = t(0.975, 2) · 1/√3 = 4.302653 / 1.7320508 = 2.484138
    mean, half, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(2.484138, abs=1e-5)
    # n = 2: t(0.975, 1) = 12.7062047; values 10, 12 → sd √2, sem 1 → 12.7062
    assert mean_ci([10.0, 12.0])[1] == pytest.approx(12.7062047, abs=1e-5)


def test_mean_ci_degenerate_cases():
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    m, h, n = mean_ci([None, float("nan")])
    assert n == 0 and math.isnan(m) and math.isnan(h)


def test_paired_t_matches_hand_computation():
    a, b = [10.0, 12.0, 14.0, 11.0], [9.0, 10.0, 13.0, 11.5]
    d = [1.0, 2.0, 1.0, -0.5]  # mean 0.875, sd 1.030776
    r = paired_t(a, b)
    assert r["diff"] == pytest.approx(0.875)
    sd = math.sqrt(sum((x - 0.875) ** 2 for x in d) / 3)
    assert r["t"] == pytest.approx(0.875 / (sd / 2))
    assert r["p"] == pytest.approx(0.18812, abs=5e-5)  # two-sided, 3 df, t = 1.69775 (t-table: between 0.2 and 0.1)
    assert r["n"] == 4


def test_paired_t_without_variance_has_no_p():
    r = paired_t([1.0, 2.0], [0.0, 1.0])
    assert r["diff"] == 1.0 and math.isnan(r["p"])


def test_holm_step_down():
    # p sorted 0.01, 0.02, 0.04 (m = 3): 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)
