"""The statistics a comparison needs to tell a real difference from seed noise: t-intervals, Welch, Holm.

`t_interval(values)` gives mean, 95 % half-width and n; `welch_p(a, b)` a two-sided p-value;
`holm(pvalues)` adjusts a family of p-values so that the chance of any false "winner" stays below alpha.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence of the intervals
VERDICT_ALPHA = 0.05  # family-wise error rate of the verdicts (Holm)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half-width, n) of the Student-t interval for the mean of `values` (NaNs dropped).

    half-width = t_{(1+level)/2, n-1} * s / sqrt(n), s the sample standard deviation (ddof 1);
    NaN when n < 2 (one value says nothing about its noise), and mean NaN when n = 0.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    hw = stats.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(hw), n


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) that a and b have the same mean.

    NaN when either sample has fewer than 2 values. Two samples without any spread are
    p = 0 when their means differ and p = 1 when they are equal (scipy would give NaN).
    """
    a = np.asarray([x for x in a if not math.isnan(x)], dtype=np.float64)
    b = np.asarray([x for x in b if not math.isnan(x)], dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    with warnings.catch_warnings():  # nearly equal values: scipy warns of lost precision, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given; NaNs stay NaN and are not counted.

    With the m p-values sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)):
    rejecting where the adjusted value is below alpha keeps the family-wise error rate at alpha.
    """
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
