"""Small statistics for reports: t confidence intervals, paired t-tests and Holm's correction.
Imports no other raykd module."""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided ``level`` Student-t interval with n − 1 degrees of freedom,
    n) of the finite ``values``; the half-width is NaN when n < 2 (mean NaN when n = 0)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(x[0]), float("nan"), 1
    sem = x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(stats.t.ppf(0.5 + level / 2, n - 1) * sem), n


def paired_t(a, b, level: float = 0.95) -> dict:
    """Paired comparison of equal-length samples ``a`` and ``b`` (a[i], b[i] share a seed):
    ``diff`` = mean(a − b), ``ci`` its t half-width, ``t``, two-sided ``p`` (NaN when the
    differences have no variance — up to float rounding, 1e-12 of their size — or n < 2), ``n``."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    mean, half, _ = mean_ci(d, level)
    if n < 2 or d.std(ddof=1) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # rounding noise is no variance
        return {"diff": mean, "ci": half, "t": float("nan"), "p": float("nan"), "n": n}
    t = mean / (d.std(ddof=1) / math.sqrt(n))
    p = 2 * stats.t.sf(abs(t), n - 1)
    return {"diff": mean, "ci": half, "t": float(t), "p": float(p), "n": n}


def holm(pvalues) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN entries stay NaN and are not
    counted among the tests)."""
    p = list(pvalues)
    idx = sorted((i for i, v in enumerate(p) if v == v), key=lambda i: p[i])
    m = len(idx)
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
