"""Performance numbers of the classifier on a test split, in NumPy (scikit-learn is not a dependency).

Everything takes per-jet arrays (scores, labels, weights) and never modifies them (the reference
normalised the caller's weight arrays in place). Conventions, also in docs/analysis.md:

* **ROC** (:func:`roc_curve`): signal vs ONE background, a jet is selected when its signal score
  is ``>= threshold``; efficiencies are weighted, ``ε = Σw(selected) / Σw`` per sample, so the
  curve does not depend on how each class's weights are normalised (the reference mixed QCD and
  0.1 × BIB after a per-class normalisation that was broken in ``analyze``, bugs 10 and 12).
  AUC: trapezoidal area under TPR(FPR), from (0, 0) to (1, 1); 0.5 is a random classifier.
* **Rejection at a signal efficiency** (:func:`rejection_at`): the first point of the ROC (threshold
  lowered from the top) whose signal efficiency reaches the target: a real working point, no
  interpolation. Rejection = 1 / FPR (``inf`` when no background passes).
* **S/√B** (:func:`significance_scan`): expected counts ``S(t) = N_S·ε_S(t)``, ``B(t) = Σ_b N_b·ε_b(t)``
  with weighted efficiencies and fixed class totals ``N`` (:func:`sb_totals`: by default the number
  of test jets of each class, QCD normalised to the BIB count as the reference did). The same
  totals are used for every scan of a report (all, QCD only, BIB only, per mH), so the scans compare.
  The reference counted S unweighted but QCD weighted (bug 10). The scan stops where ``B <= b_min``.
* **Efficiency per mass point** (:func:`efficiency_per_point`): weighted fraction of the signal jets
  of each (mH, mS) that pass a selection, with a binomial error from the effective number of jets.
* **Uncertainties** (:func:`binomial_interval`): 68.3 % Clopper–Pearson intervals (hist's
  ``clopper_pearson_interval``) for every efficiency, in bins too (:func:`binned_efficiency`); for
  weighted samples on the Kish effective numbers of jets. A rejection's interval is the inverse of its
  background efficiency's (:func:`rejection_interval`).

Guards: an empty sample, or one whose total weight is not positive, raises :class:`EmptySample`
(callers skip that curve with a note) — never a NaN that silently overwrites a good number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..schema import Label
from ..stats import effective_n

DEFAULT_EFFICIENCIES: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
B_MIN = 10.0  # the reference's stop of the S/√B scan: below this many background jets the ratio is noise


class EmptySample(ValueError):
    """A sample a metric needs has no jets, or a total weight that is not positive."""


def _clean(x: ArrayLike, w: ArrayLike | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite values and their weights (float64 copies); raises :class:`EmptySample`."""
    x = np.asarray(x, dtype=np.float64).ravel()
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if w.shape != x.shape:
        raise ValueError(f"{what}: {x.size} scores but {w.size} weights")
    keep = np.isfinite(x) & np.isfinite(w)
    x, w = x[keep], w[keep]
    if x.size == 0:
        raise EmptySample(f"{what}: no jets")
    if not w.sum() > 0:
        raise EmptySample(f"{what}: total weight {w.sum():g} is not positive")
    return x, w


# ------------------------------------------------------------------------------------------------
# ROC
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    """Weighted ROC of signal against one background. Index 0 is the empty selection (threshold +inf)."""

    thresholds: np.ndarray  # descending; jets with score >= threshold are selected
    tpr: np.ndarray  # signal efficiency
    fpr: np.ndarray  # background efficiency (mistag rate)
    auc: float
    n_sig: int
    n_bkg: int
    sumw_sig: float
    sumw_bkg: float
    n_bkg_eff: float = 0.0  # Kish effective number of background jets (for uncertainties)

    def rejection(self) -> np.ndarray:
        """1 / FPR at every point (``inf`` where no background passes)."""
        safe = np.where(self.fpr > 0, self.fpr, 1.0)
        return np.where(self.fpr > 0, 1.0 / safe, np.inf)


def roc_curve(
    sig: ArrayLike, bkg: ArrayLike, w_sig: ArrayLike | None = None, w_bkg: ArrayLike | None = None
) -> RocCurve:
    """ROC of the score ``sig`` (signal jets) against ``bkg`` (background jets), weighted.

    One point per distinct score value (tied jets enter together, as in scikit-learn's
    ``roc_curve(drop_intermediate=False)``). Negative weights are allowed; each sample's total
    weight must be positive (else :class:`EmptySample`).
    """
    xs, ws = _clean(sig, w_sig, "signal")
    xb, wb = _clean(bkg, w_bkg, "background")
    x = np.concatenate([xs, xb])
    order = np.argsort(-x, kind="stable")
    x = x[order]
    ws_all = np.concatenate([ws, np.zeros_like(wb)])[order]
    wb_all = np.concatenate([np.zeros_like(ws), wb])[order]
    last = np.r_[np.flatnonzero(np.diff(x)), x.size - 1]  # last jet of each run of equal scores
    tp = np.cumsum(ws_all)[last]
    fp = np.cumsum(wb_all)[last]
    tpr = np.r_[0.0, tp / ws.sum()]
    fpr = np.r_[0.0, fp / wb.sum()]
    thresholds = np.r_[np.inf, x[last]]
    auc = float(np.trapezoid(tpr, fpr))
    return RocCurve(thresholds, tpr, fpr, auc, int(xs.size), int(xb.size), float(ws.sum()), float(wb.sum()),
                    effective_n(wb))  # fmt: skip


@dataclass(frozen=True)
class WorkingPoint:
    target: float  # requested signal efficiency
    efficiency: float  # reached signal efficiency (≥ target unless the curve never gets there)
    threshold: float
    fpr: float
    rejection: float  # 1 / fpr, inf when no background passes


def rejection_at(roc: RocCurve, efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES) -> list[WorkingPoint]:
    """Background rejection at the first ROC point reaching each signal efficiency."""
    out = []
    for eff in efficiencies:
        reached = np.flatnonzero(roc.tpr >= eff - 1e-12)
        i = int(reached[0]) if reached.size else len(roc.tpr) - 1
        fpr = float(roc.fpr[i])
        rej = 1.0 / fpr if fpr > 0 else math.inf
        out.append(WorkingPoint(float(eff), float(roc.tpr[i]), float(roc.thresholds[i]), fpr, rej))
    return out


def threshold_for_efficiency(scores: ArrayLike, weights: ArrayLike | None, efficiency: float) -> float:
    """The signal-score cut keeping (at least) ``efficiency`` of the weighted sample: a working point."""
    x, w = _clean(scores, weights, "signal")
    order = np.argsort(-x, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    i = int(np.searchsorted(cum, efficiency - 1e-12, side="left"))
    return float(x[order][min(i, x.size - 1)])


# ------------------------------------------------------------------------------------------------
# Normalisation (the reference's normalize_to_one, fixed)
# ------------------------------------------------------------------------------------------------


def normalise_per_class(labels: ArrayLike, weights: ArrayLike, totals: Mapping[int, float] | None = None) -> np.ndarray:
    """A copy of ``weights`` scaled so that each class sums to ``totals[class]`` (default: its jet count).

    The reference's ``normalize_to_one`` tested ``Σw != 0 or n != 0`` (so an empty class divided by
    zero) and was called with the first label instead of the label array in ``analyze`` (bug 12).
    Here a class is scaled only when it has jets AND a positive total weight; a class whose total is
    not positive gets weight 0 (it cannot be normalised; callers report it).
    """
    labels = np.asarray(labels).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel().copy()
    if labels.shape != w.shape:
        raise ValueError(f"{labels.size} labels but {w.size} weights")
    for c in np.unique(labels):
        sel = labels == c
        total = w[sel].sum()
        target = float(sel.sum()) if totals is None or int(c) not in totals else float(totals[int(c)])
        w[sel] = w[sel] * (target / total) if sel.any() and total > 0 else 0.0
    return w


# ------------------------------------------------------------------------------------------------
# S/√B
# ------------------------------------------------------------------------------------------------


def reference_thresholds() -> np.ndarray:
    """The reference's scan points: 100 log in [1e-5, 0.1], 20 linear in [0.11, 0.89], 600 log in [0.9, 1]."""
    return np.unique(
        np.concatenate([np.logspace(-5, -1, 100), np.linspace(0.11, 0.89, 20), np.logspace(-0.04575, 0, 600)])
    )


def sb_totals(counts: Mapping[int, int], qcd_to_bib: bool = True) -> dict[int, float]:
    """Class totals N of the S/√B scans from the test jet counts per label.

    ``qcd_to_bib`` (the reference's choice): QCD is normalised to the number of BIB jets — the two
    backgrounds then weigh equally, whatever the MC statistics; without BIB jets QCD keeps its count.
    """
    n = {int(k): float(v) for k, v in counts.items()}
    out = {c: n.get(c, 0.0) for c in (int(Label.QCD), int(Label.SIGNAL), int(Label.BIB))}
    if qcd_to_bib and out[int(Label.BIB)] > 0 and out[int(Label.QCD)] > 0:
        out[int(Label.QCD)] = out[int(Label.BIB)]
    return out


def efficiency_curve(scores: ArrayLike, weights: ArrayLike | None, thresholds: ArrayLike) -> np.ndarray:
    """Weighted fraction of the sample with score ``>= t`` for each threshold ``t``."""
    x, w = _clean(scores, weights, "sample")
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    above = np.r_[np.cumsum(w[::-1])[::-1], 0.0]  # above[i] = Σ w[i:]
    idx = np.searchsorted(x, np.asarray(thresholds, dtype=np.float64), side="left")
    return above[idx] / w.sum()


@dataclass(frozen=True)
class SignificanceScan:
    label: str
    thresholds: np.ndarray
    s: np.ndarray
    b: np.ndarray
    sob: np.ndarray  # S/√B; NaN from the first threshold where B <= b_min on
    max_sob: float
    threshold_at_max: float
    aus: float  # area under S/√B vs threshold (trapezoid over the valid part), the reference's "AuS"


def significance_scan(
    sig: tuple[ArrayLike, ArrayLike | None, float],
    backgrounds: Mapping[str, tuple[ArrayLike, ArrayLike | None, float]],
    *,
    label: str = "",
    thresholds: ArrayLike | None = None,
    b_min: float = B_MIN,
) -> SignificanceScan:
    """S/√B of a cut on the signal score. ``sig`` and each background: ``(scores, weights, total N)``.

    Raises :class:`EmptySample` when the signal is empty or no background has jets.
    """
    t = reference_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    s = sig[2] * efficiency_curve(sig[0], sig[1], t)
    b = np.zeros_like(t)
    used = 0
    for x, w, total in backgrounds.values():
        try:
            b += total * efficiency_curve(x, w, t)
            used += 1
        except EmptySample:
            continue  # e.g. no BIB in this test set: that background contributes nothing
    if not used:
        raise EmptySample(f"S/√B {label!r}: no background jets")
    sob = np.full_like(t, np.nan)
    low = np.flatnonzero(b <= b_min)
    stop = int(low[0]) if low.size else t.size
    with np.errstate(divide="ignore", invalid="ignore"):
        sob[:stop] = s[:stop] / np.sqrt(b[:stop])
    valid = np.isfinite(sob)
    if not valid.any():
        return SignificanceScan(label, t, s, b, sob, math.nan, math.nan, math.nan)
    i = int(np.nanargmax(sob))
    aus = float(np.trapezoid(sob[valid], t[valid])) if valid.sum() > 1 else 0.0
    return SignificanceScan(label, t, s, b, sob, float(sob[i]), float(t[i]), aus)


# ------------------------------------------------------------------------------------------------
# Efficiency per (mH, mS)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointEfficiency:
    mH: float
    mS: float
    n: int
    efficiency: float
    error: float  # binomial, from the effective number of jets


def mass_points(mH: ArrayLike, mS: ArrayLike) -> list[tuple[float, float]]:
    """Distinct (mH, mS) pairs, sorted; the caller passes SIGNAL jets only (backgrounds carry (0, 0))."""
    pts = np.unique(np.stack([np.asarray(mH, np.float64).ravel(), np.asarray(mS, np.float64).ravel()], axis=1), axis=0)
    return [(float(a), float(b)) for a, b in pts]


def efficiency_per_point(
    mH: ArrayLike, mS: ArrayLike, passed: ArrayLike, weights: ArrayLike | None = None
) -> list[PointEfficiency]:
    """Weighted fraction of ``passed`` jets for each (mH, mS) of the given (signal) jets.

    A point whose total weight is not positive gets efficiency NaN (reported, not dropped).
    """
    mh, ms = np.asarray(mH, np.float64).ravel(), np.asarray(mS, np.float64).ravel()
    ok = np.asarray(passed, bool).ravel()
    w = np.ones_like(mh) if weights is None else np.asarray(weights, np.float64).ravel()
    out = []
    for a, b in mass_points(mh, ms):
        sel = (mh == a) & (ms == b)
        ws = w[sel]
        total = ws.sum()
        if not total > 0:
            out.append(PointEfficiency(a, b, int(sel.sum()), math.nan, math.nan))
            continue
        eff = float(ws[ok[sel]].sum() / total)
        n_eff = effective_n(ws)
        err = math.sqrt(max(eff * (1 - eff), 0.0) / n_eff) if n_eff > 0 else math.nan
        out.append(PointEfficiency(a, b, int(sel.sum()), eff, err))
    return out


# ------------------------------------------------------------------------------------------------
# Binomial uncertainties (Clopper–Pearson, from hist) and binned efficiencies
# ------------------------------------------------------------------------------------------------

COVERAGE = 0.682689492137  # ±1σ


def binomial_interval(
    passed: ArrayLike, total: ArrayLike, passed_w2: ArrayLike | None = None, total_w2: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(efficiency, low, high): ``passed / total`` with a 68.3 % Clopper–Pearson interval.

    Unweighted: ``passed``, ``total`` are counts. Weighted: sums of weights, with the sums of squared
    weights ``passed_w2``, ``total_w2``; the interval is then computed for the Kish effective number
    of jets ``n = total² / total_w2`` and ``k = ε·n`` passing (the usual approximation for weighted
    efficiencies). Where ``total`` is not positive every value is NaN.
    """
    from hist.intervals import clopper_pearson_interval

    p = np.atleast_1d(np.asarray(passed, np.float64))
    t = np.atleast_1d(np.asarray(total, np.float64))
    ok = t > 0
    eff = np.full(t.shape, np.nan)
    eff[ok] = np.clip(p[ok] / t[ok], 0.0, 1.0)
    if total_w2 is None:
        n = t
    else:
        t2 = np.atleast_1d(np.asarray(total_w2, np.float64))
        n = np.where(t2 > 0, t * t / np.where(t2 > 0, t2, 1.0), 0.0)
    ok &= n > 0
    lo = np.full(t.shape, np.nan)
    hi = np.full(t.shape, np.nan)
    if ok.any():
        k = eff[ok] * n[ok]
        with np.errstate(invalid="ignore"):
            iv = clopper_pearson_interval(np.minimum(k, n[ok]), n[ok], coverage=COVERAGE)
        lo[ok], hi[ok] = iv[0], iv[1]
    return eff, lo, hi


def efficiency_interval(passed: ArrayLike, weights: ArrayLike | None = None) -> tuple[float, float, float]:
    """(ε, low, high) of a boolean selection of a (weighted) sample."""
    ok = np.asarray(passed, bool).ravel()
    w = np.ones(ok.size) if weights is None else np.asarray(weights, np.float64).ravel()
    e, lo, hi = binomial_interval(w[ok].sum(), w.sum(), (w[ok] ** 2).sum(), (w**2).sum())
    return float(e[0]), float(lo[0]), float(hi[0])


def rejection_interval(eff: float, low: float, high: float) -> tuple[float, float, float]:
    """A background efficiency's interval as a rejection 1/ε: (1/ε, 1/high, 1/low), ∞ where ε is 0."""

    def inv(x: float) -> float:
        return math.nan if not math.isfinite(x) else (math.inf if x <= 0 else 1.0 / x)

    return inv(eff), inv(high), inv(low)


@dataclass(frozen=True)
class BinnedEfficiency:
    edges: np.ndarray
    eff: np.ndarray
    low: np.ndarray
    high: np.ndarray
    jets: np.ndarray  # jets per bin (unweighted)


def binned_efficiency(
    values: ArrayLike, passed: ArrayLike, edges: ArrayLike, weights: ArrayLike | None = None
) -> BinnedEfficiency:
    """Efficiency of ``passed`` in bins of ``values`` (half-open bins, the last one closed; values
    outside the edges are not counted), each with its Clopper–Pearson interval."""
    x = np.asarray(values, np.float64).ravel()
    ok = np.asarray(passed, bool).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64).ravel()
    e = np.asarray(edges, np.float64)
    keep = np.isfinite(x) & np.isfinite(w)
    x, ok, w = x[keep], ok[keep], w[keep]
    tot, _ = np.histogram(x, e, weights=w)
    tot2, _ = np.histogram(x, e, weights=w * w)
    pas, _ = np.histogram(x[ok], e, weights=w[ok])
    pas2, _ = np.histogram(x[ok], e, weights=w[ok] ** 2)
    n, _ = np.histogram(x, e)
    eff, lo, hi = binomial_interval(pas, tot, pas2, tot2)
    return BinnedEfficiency(e, eff, lo, hi, n.astype(np.int64))


def roc_on_grid(roc: RocCurve, grid: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indices, rejection, low, high) at the first ROC point reaching each signal efficiency of ``grid``:
    the points a figure draws, with the Clopper–Pearson interval of each background efficiency."""
    g = np.asarray(grid, np.float64)
    idx = np.searchsorted(roc.tpr, g - 1e-12, side="left")
    idx = np.minimum(idx, len(roc.tpr) - 1)
    fpr = roc.fpr[idx]
    n_eff = roc.n_bkg_eff if roc.n_bkg_eff > 0 else float(roc.n_bkg)
    _, lo, hi = binomial_interval(fpr * n_eff, np.full(fpr.shape, n_eff))
    with np.errstate(divide="ignore"):
        rej = np.where(fpr > 0, 1.0 / np.where(fpr > 0, fpr, 1.0), np.inf)
        rlo = np.where(hi > 0, 1.0 / np.where(hi > 0, hi, 1.0), np.inf)
        rhi = np.where(lo > 0, 1.0 / np.where(lo > 0, lo, 1.0), np.inf)
    return idx, rej, rlo, rhi
