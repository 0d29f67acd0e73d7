"""``crbatch.stats``: the weighted two-sample K-S statistic and its p-value helper."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from crbatch.stats import effective_n, ks_pvalue, ks_weighted


@pytest.mark.parametrize(("na", "nb"), [(1, 1), (5, 7), (50, 50), (200, 31), (1000, 3000)])
def test_unit_weights_equal_scipy(na, nb):
    rng = np.random.default_rng(na * 7919 + nb)
    a = rng.normal(0.0, 1.0, na)
    b = rng.normal(0.3, 1.2, nb)
    expected = ks_2samp(a, b).statistic
    assert ks_weighted(a, b) == pytest.approx(expected, abs=1e-12)
    assert ks_weighted(a, b, np.ones(na), np.ones(nb)) == pytest.approx(expected, abs=1e-12)


def test_ties_equal_scipy():
    # integer-valued samples (hit counts) have many ties: the CDF must include all of them
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 6, 400), rng.integers(0, 8, 250)
    assert ks_weighted(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_weights_as_repetition():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=60), rng.normal(0.5, 1.0, size=45)
    ka, kb = rng.integers(1, 5, a.size), rng.integers(1, 5, b.size)
    repeated = ks_weighted(np.repeat(a, ka), np.repeat(b, kb))
    assert ks_weighted(a, b, ka, kb) == pytest.approx(repeated, abs=1e-12)
    assert repeated == pytest.approx(ks_2samp(np.repeat(a, ka), np.repeat(b, kb)).statistic, abs=1e-12)


def test_weight_normalisation_irrelevant():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(size=40)
    wa, wb = rng.uniform(0.1, 2.0, 30), rng.uniform(0.1, 2.0, 40)
    assert ks_weighted(a, b, wa, wb) == pytest.approx(ks_weighted(a, b, 1e-3 * wa, 50 * wb), abs=1e-12)


def test_identical_and_disjoint():
    x = np.array([3.0, 1.0, 2.0, 2.0])
    assert ks_weighted(x, x) == 0.0
    assert ks_weighted(x, x[::-1], np.array([1, 2, 3, 3.0]), np.array([3, 3, 2, 1.0])) == 0.0
    assert ks_weighted([0.0, 1.0, 2.0], [5.0, 6.0]) == 1.0
    assert ks_weighted([5.0, 6.0], [0.0, 1.0, 2.0], [1.0, 3.0], [2.0, 2.0, 2.0]) == 1.0


def test_nan_ignored_and_errors():
    assert ks_weighted([1.0, np.nan, 2.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        ks_weighted([], [1.0])
    with pytest.raises(ValueError, match="not positive"):
        ks_weighted([1.0, 2.0], [1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        ks_weighted([1.0, 2.0], [1.0], [1.0])


def test_negative_weights_allowed():
    # MC generator weights can be negative; the statistic is still the largest CDF difference
    d = ks_weighted([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [2.0, -1.0, 1.0], [1.0, 1.0, 1.0])
    assert d == pytest.approx(abs(2 / 2 - 1 / 3), abs=1e-12)


def test_effective_n_and_pvalue():
    assert effective_n(np.ones(10)) == pytest.approx(10.0)
    assert effective_n([2.0, 0.0]) == pytest.approx(1.0)
    assert effective_n(None, 7) == 7.0
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=500), rng.normal(0.1, 1.0, size=700)
    res = ks_2samp(a, b, method="asymp")
    assert ks_pvalue(ks_weighted(a, b), effective_n(None, 500), effective_n(None, 700)) == pytest.approx(
        res.pvalue, rel=1e-6
    )
    assert ks_pvalue(0.0, 10, 10) == pytest.approx(1.0)
    assert np.isnan(ks_pvalue(0.1, 0, 10))
