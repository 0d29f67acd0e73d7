"""Statistics shared by the reports and training: the weighted two-sample K-S test.

MC jets carry generator weights (some negative), so the unweighted ``scipy.stats.ks_2samp`` answers
the wrong question for data vs MC. ``ks_weighted`` compares the weighted empirical CDFs; with unit
weights it equals ``ks_2samp``'s statistic exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def _prepare(x: ArrayLike, w: ArrayLike | None, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted finite values and their weights, normalised to unit sum."""
    x = np.asarray(x, dtype=np.float64).ravel()
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if w.shape != x.shape:
        raise ValueError(f"sample {which}: {x.size} values but {w.size} weights")
    keep = np.isfinite(x) & np.isfinite(w)  # NaN would poison the sort and the sums
    x, w = x[keep], w[keep]
    if x.size == 0:
        raise ValueError(f"sample {which} is empty (no finite values)")
    total = w.sum()
    if not total > 0:
        raise ValueError(f"sample {which}: total weight {total} is not positive")
    order = np.argsort(x, kind="stable")
    return x[order], w[order] / total


def ks_weighted(a: ArrayLike, b: ArrayLike, wa: ArrayLike | None = None, wb: ArrayLike | None = None) -> float:
    """Two-sample Kolmogorov-Smirnov statistic with per-value weights.

    ``max |F_a(x) - F_b(x)|`` over the pooled values, with the right-continuous weighted empirical
    CDFs ``F(x) = sum(w[v <= x]) / sum(w)``. Weights default to 1; non-finite values are ignored.
    Negative weights are allowed (the CDFs are then not monotone, the statistic is still the
    largest difference), but each sample's total weight must be positive.
    Raises ``ValueError`` for an empty sample.
    """
    xa, pa = _prepare(a, wa, "a")
    xb, pb = _prepare(b, wb, "b")
    grid = np.concatenate([xa, xb])
    # CDF just after each pooled value: cumulative weight of everything <= it (ties all included).
    ca = np.concatenate([[0.0], np.cumsum(pa)])[np.searchsorted(xa, grid, side="right")]
    cb = np.concatenate([[0.0], np.cumsum(pb)])[np.searchsorted(xb, grid, side="right")]
    return float(np.max(np.abs(ca - cb)))


def effective_n(w: ArrayLike | None, n: int | None = None) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``; ``n`` when ``w`` is None (unit weights)."""
    if w is None:
        if n is None:
            raise ValueError("effective_n needs weights or a count")
        return float(n)
    w = np.asarray(w, dtype=np.float64).ravel()
    w = w[np.isfinite(w)]
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


_EXACT_MAX_N = 10_000


def ks_pvalue(d: float, n_a: float, n_b: float) -> float:
    """Asymptotic p-value of a two-sample K-S statistic ``d`` for (effective) sizes ``n_a``, ``n_b``.

    Uses ``scipy.stats.kstwo`` at the rounded effective size ``n_a n_b / (n_a + n_b)``, as
    ``ks_2samp(method="asymp")`` does (above 10,000 the Kolmogorov limit distribution, which it
    converges to); with weighted samples pass :func:`effective_n` of each.
    Only indicative for weighted samples (the weights' own fluctuations are not modelled).
    """
    from scipy.special import kolmogorov
    from scipy.stats import kstwo

    if n_a <= 0 or n_b <= 0 or not math.isfinite(d):
        return float("nan")
    en = n_a * n_b / (n_a + n_b)
    if en > _EXACT_MAX_N:  # kstwo's exact series costs ~0.1 s there; the limit law agrees within ~1%
        return float(min(1.0, max(0.0, kolmogorov(math.sqrt(en) * d))))
    return float(min(1.0, max(0.0, kstwo.sf(d, max(1, round(en))))))
