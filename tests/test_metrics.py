"""crbatch.evaluate.metrics: ROC, AUC, rejection, S/√B, efficiencies — against independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crbatch.evaluate import metrics as M


def _auc_pairs(s, b, ws, wb) -> float:
    """Weighted Mann-Whitney: P(score_sig > score_bkg) + ½ P(equal) — the ROC area, independently."""
    gt = (s[:, None] > b[None, :]).astype(float) + 0.5 * (s[:, None] == b[None, :])
    return float(ws @ gt @ wb / (ws.sum() * wb.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_weighted_pair_probability(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding: many ties
    b = np.round(rng.normal(0.0, 1.0, 400), 1)
    ws, wb = rng.uniform(0.1, 2, 300), rng.uniform(0.1, 2, 400)
    roc = M.roc_curve(s, b, ws, wb)
    assert roc.auc == pytest.approx(_auc_pairs(s, b, ws, wb), abs=1e-12)
    assert roc.tpr[0] == 0 and roc.fpr[0] == 0 and roc.tpr[-1] == pytest.approx(1) and roc.fpr[-1] == pytest.approx(1)
    assert np.all(np.diff(roc.thresholds) < 0)
    # Scaling one class's weights (the per-class normalisation) does not change a pairwise ROC.
    roc2 = M.roc_curve(s, b, ws * 7.0, wb / 3.0)
    np.testing.assert_allclose(roc2.tpr, roc.tpr)
    np.testing.assert_allclose(roc2.fpr, roc.fpr)


def test_roc_perfect_random_and_unweighted():
    assert M.roc_curve([0.9, 0.8], [0.1, 0.2]).auc == pytest.approx(1.0)
    assert M.roc_curve([0.1, 0.2], [0.9, 0.8]).auc == pytest.approx(0.0)
    assert M.roc_curve([0.5, 0.5], [0.5, 0.5]).auc == pytest.approx(0.5)
    roc = M.roc_curve([0.9, 0.6, 0.3], [0.8, 0.2])
    # thresholds 0.9, 0.8, 0.6, 0.3, 0.2: signal 1/3, bkg 1/2 after 0.8 ...
    np.testing.assert_allclose(roc.tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 0.5, 0.5, 1])
    assert roc.n_sig == 3 and roc.n_bkg == 2


def test_roc_guards():
    with pytest.raises(M.EmptySample, match="signal: no jets"):
        M.roc_curve([], [0.1])
    with pytest.raises(M.EmptySample, match="background"):
        M.roc_curve([0.1], [0.2], None, [0.0])
    with pytest.raises(M.EmptySample):
        M.roc_curve([np.nan], [0.2])  # non-finite scores are dropped
    with pytest.raises(ValueError, match="weights"):
        M.roc_curve([0.1, 0.2], [0.2], [1.0], None)


def test_rejection_at_fixed_efficiency():
    s = np.linspace(0.01, 1.0, 100)  # signal efficiency of cut t: fraction of s >= t
    b = np.linspace(0.0, 0.5, 1000)
    roc = M.roc_curve(s, b)
    wps = M.rejection_at(roc, (0.3, 0.5, 0.9))
    for wp in wps:
        assert wp.efficiency >= wp.target and wp.efficiency - wp.target < 0.011
        passed_b = np.mean(b >= wp.threshold)
        assert wp.fpr == pytest.approx(passed_b)
        assert wp.rejection == (math.inf if passed_b == 0 else pytest.approx(1 / passed_b))
    assert wps[0].rejection == math.inf  # 30 % of the signal lies above every background jet
    assert wps[2].rejection == pytest.approx(1 / np.mean(b >= wps[2].threshold))
    rej = roc.rejection()
    assert np.isinf(rej[0]) and np.all(np.isfinite(rej[roc.fpr > 0]))


def test_threshold_for_efficiency():
    x = np.arange(10) / 10.0
    assert M.threshold_for_efficiency(x, None, 0.5) == pytest.approx(0.5)
    assert np.mean(x >= M.threshold_for_efficiency(x, None, 0.35)) >= 0.35
    w = np.r_[np.ones(9), 9.0]  # the top jet carries half the weight
    assert M.threshold_for_efficiency(x, w, 0.5) == pytest.approx(0.9)


def test_normalise_per_class_is_not_in_place_and_guards_empty_classes():
    labels = np.array([0, 0, 1, 1, 1, 2])
    w = np.array([2.0, 2.0, 1.0, 1.0, 1.0, 0.0])
    orig = w.copy()
    w.setflags(write=False)  # pandas 3 hands out read-only arrays: must not be written (bug 11)
    out = M.normalise_per_class(labels, w)
    np.testing.assert_array_equal(w, orig)
    assert out[labels == 0].sum() == pytest.approx(2) and out[labels == 1].sum() == pytest.approx(3)
    assert np.all(out[labels == 2] == 0)  # Σw = 0: cannot be normalised (the reference divided by zero)
    out = M.normalise_per_class(labels, orig, {0: 1.0})
    assert out[labels == 0].sum() == pytest.approx(1) and out[labels == 1].sum() == pytest.approx(3)


def test_significance_scan_by_hand():
    sig = np.array([0.9, 0.8, 0.2, 0.1])
    qcd = np.array([0.85] + [0.05] * 99)
    bib = np.array([0.3] * 50)
    totals = M.sb_totals({0: 100, 1: 4, 2: 50})
    assert totals == {0: 50.0, 1: 4.0, 2: 50.0}  # QCD normalised to the BIB count (the reference)
    assert M.sb_totals({0: 100, 1: 4})[0] == 100.0  # no BIB: QCD keeps its count
    assert M.sb_totals({0: 100, 1: 4, 2: 50}, qcd_to_bib=False)[0] == 100.0
    t = np.array([0.0, 0.25, 0.5, 0.95])
    scan = M.significance_scan((sig, None, 4.0), {"QCD": (qcd, None, 50.0), "BIB": (bib, None, 50.0)},
                               label="x", thresholds=t, b_min=0.4)  # fmt: skip
    np.testing.assert_allclose(scan.s, [4, 2, 2, 0])
    np.testing.assert_allclose(scan.b, [100, 50 * 0.01 + 50, 0.5, 0])
    np.testing.assert_allclose(scan.sob[:3], [4 / 10, 2 / math.sqrt(50.5), 2 / math.sqrt(0.5)])
    assert math.isnan(scan.sob[3])  # B ≤ b_min: stopped
    assert scan.max_sob == pytest.approx(2 / math.sqrt(0.5)) and scan.threshold_at_max == 0.5
    assert scan.aus == pytest.approx(np.trapezoid(scan.sob[:3], t[:3]))
    # Weighted signal: S uses weighted efficiencies (the reference counted S unweighted).
    scan_w = M.significance_scan((sig, np.array([3.0, 1, 1, 1]), 4.0), {"QCD": (qcd, None, 50.0)}, thresholds=[0.5])
    assert scan_w.s[0] == pytest.approx(4 * 4 / 6)


def test_significance_scan_guards():
    with pytest.raises(M.EmptySample):
        M.significance_scan(([], None, 0.0), {"QCD": ([0.1], None, 1.0)})
    with pytest.raises(M.EmptySample, match="no background"):
        M.significance_scan(([0.5], None, 1.0), {"BIB": ([], None, 0.0)})
    # One empty background (no BIB) is skipped, the other counts.
    scan = M.significance_scan(([0.5], None, 1.0), {"QCD": ([0.1] * 20, None, 20.0), "BIB": ([], None, 0.0)})
    assert scan.b[0] == pytest.approx(20.0)
    # Every point below b_min: no maximum, but no crash either.
    small = M.significance_scan(([0.5], None, 1.0), {"QCD": ([0.1], None, 1.0)})
    assert math.isnan(small.max_sob)
    t = M.reference_thresholds()
    assert len(t) == 720 and t[0] == pytest.approx(1e-5) and t[-1] == pytest.approx(1.0) and np.all(np.diff(t) > 0)


def test_efficiency_per_point():
    mh = np.array([125, 125, 125, 600, 600, 60])
    ms = np.array([55, 55, 55, 275, 275, 5])
    passed = np.array([1, 1, 0, 1, 0, 0], bool)
    w = np.array([1, 1, 2, 1, 1, 0.0])
    effs = {(e.mH, e.mS): e for e in M.efficiency_per_point(mh, ms, passed, w)}
    assert list(effs) == [(60.0, 5.0), (125.0, 55.0), (600.0, 275.0)]
    assert effs[125, 55].efficiency == pytest.approx(0.5) and effs[125, 55].n == 3
    assert effs[600, 275].efficiency == pytest.approx(0.5)
    assert effs[600, 275].error == pytest.approx(math.sqrt(0.25 / 2))
    assert math.isnan(effs[60, 5].efficiency) and effs[60, 5].n == 1  # zero weight: reported, not dropped
    unweighted = {(e.mH, e.mS): e.efficiency for e in M.efficiency_per_point(mh, ms, passed)}
    assert unweighted[125, 55] == pytest.approx(2 / 3)
    assert M.mass_points([], []) == []


def test_efficiency_curve_matches_direct_count():
    rng = np.random.default_rng(5)
    x, w = rng.random(500), rng.uniform(0.5, 1.5, 500)
    t = np.array([-1, 0.1, 0.5, 0.99, 2.0, x[17]])
    expect = [(w * (x >= ti)).sum() / w.sum() for ti in t]
    np.testing.assert_allclose(M.efficiency_curve(x, w, t), expect)


# --- uncertainties and the field's tools ------------------------------------------------------------


def test_clopper_pearson_intervals():
    from scipy.stats import beta

    e, lo, hi = M.binomial_interval([3, 0, 10], [10, 10, 10])
    np.testing.assert_allclose(e, [0.3, 0.0, 1.0])
    c = M.COVERAGE
    # the exact Clopper-Pearson limits, from the beta quantiles
    assert lo[0] == pytest.approx(beta.ppf((1 - c) / 2, 3, 8)) and hi[0] == pytest.approx(beta.ppf((1 + c) / 2, 4, 7))
    assert lo[1] == 0 and hi[1] == pytest.approx(beta.ppf((1 + c) / 2, 1, 10)) and hi[2] == 1
    # weighted: the interval of the Kish effective counts (equal weights of 2: the same as unweighted)
    e2, lo2, hi2 = M.binomial_interval(6.0, 20.0, 12.0, 40.0)
    assert (e2[0], lo2[0], hi2[0]) == pytest.approx((0.3, lo[0], hi[0]))
    assert np.isnan(M.binomial_interval(0.0, 0.0)[0][0])  # an empty sample: no number, not a 0
    r = M.rejection_interval(0.0, 0.0, 0.1)
    assert r == (math.inf, 10.0, math.inf)  # nothing passes: only a lower limit on the rejection


def test_binned_efficiency():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 10, 5000)
    passed = rng.random(5000) < x / 10
    be = M.binned_efficiency(x, passed, [0, 2, 5, 10])
    assert be.jets.sum() == 5000
    np.testing.assert_allclose(be.eff, [0.1, 0.35, 0.75], atol=0.04)
    assert np.all(be.low < be.eff) and np.all(be.eff < be.high)
    # weights: a jet of weight 2 counts as two (the point estimate), outside values are not counted
    be = M.binned_efficiency([1, 1, 3, 20], [True, False, True, True], [0, 2, 4], [2.0, 1.0, 1.0, 5.0])
    np.testing.assert_allclose(be.eff, [2 / 3, 1.0])
    assert be.jets.tolist() == [2, 1]


def test_rejection_agrees_with_ftag_tools():
    """Our rejection at a working point agrees with atlas-ftag-tools' (the FTAG convention: a jet passes
    when its discriminant is ≥ the cut), at our cut and at the target efficiency."""
    fm = pytest.importorskip("ftag.utils.metrics")
    rng = np.random.default_rng(11)
    s, b = rng.normal(1.5, 1, 4000), rng.normal(0, 1, 6000)
    ws, wb = rng.uniform(0.5, 1.5, 4000), rng.uniform(0.5, 1.5, 6000)
    roc = M.roc_curve(s, b, ws, wb)
    for wp in M.rejection_at(roc, (0.3, 0.5, 0.7, 0.9)):
        ours = wp.rejection
        at_cut = fm.calculate_rejection(s, b, cut_value=wp.threshold, sig_weights=ws, bkg_weights=wb)
        assert float(np.ravel(at_cut)[0]) == pytest.approx(ours, rel=1e-9)
        at_eff = fm.calculate_rejection(s, b, target_eff=wp.target, sig_weights=ws, bkg_weights=wb)
        # ftag interpolates the cut from a weighted percentile; we take the first ROC point reaching it
        assert float(np.ravel(at_eff)[0]) == pytest.approx(ours, rel=0.02)
    # their binomial efficiency error and our interval agree in size (unweighted, large sample)
    eff = M.efficiency_curve(b, None, [wp.threshold])[0]
    err = fm.calculate_efficiency_error(np.array([eff]), 6000)[0]
    _, lo, hi = M.binomial_interval(eff * 6000, 6000)
    assert (hi[0] - lo[0]) / 2 == pytest.approx(err, rel=0.05)
