"""The statistics against SciPy / statsmodels on the same numbers, and the sequential test's
false-positive rate under A/A with peeking. Each test seeds its own generator, so results do not
depend on which tests run."""

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)

from analytics import stats
from analytics.assignment import assign, expected_shares



@pytest.mark.parametrize("x_t,n_t,x_c,n_c", [(620, 1000, 580, 1000), (31, 200, 52, 260), (4_980, 10_000, 5_020, 10_000)])
def test_two_proportion_ztest_matches_statsmodels(x_t, n_t, x_c, n_c):
    ours = stats.two_proportion_ztest(x_t, n_t, x_c, n_c)
    z, p = proportions_ztest([x_t, x_c], [n_t, n_c])
    assert ours.statistic == pytest.approx(z, rel=1e-12) and ours.p_value == pytest.approx(p, rel=1e-10)


@pytest.mark.parametrize("x,n", [(620, 1000), (0, 50), (3, 40), (199, 200)])
def test_wilson_interval_matches_statsmodels(x, n):
    ours = stats.wilson_interval(x, n, 0.05)
    low, high = proportion_confint(x, n, alpha=0.05, method="wilson")
    assert (ours.low, ours.high) == pytest.approx((low, high), abs=1e-12)


def test_relative_lift_interval_matches_statsmodels_log_ratio():
    ours = stats.relative_lift_proportions(620, 1000, 580, 1000, 0.05)
    low, high = confint_proportions_2indep(620, 1000, 580, 1000, method="log", compare="ratio", alpha=0.05)
    assert (ours.low, ours.high) == pytest.approx((low - 1, high - 1), rel=1e-10)
    assert ours.estimate == pytest.approx(0.62 / 0.58 - 1)


@pytest.mark.parametrize("sizes", [(300, 250), (40, 900)])
def test_welch_and_mean_interval_match_scipy(sizes):
    rng = np.random.default_rng(20240611)
    a, b = rng.normal(3.6, 1.1, sizes[0]), rng.normal(3.4, 1.6, sizes[1])
    ours = stats.welch_ttest(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert (ours.statistic, ours.p_value, ours.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df), rel=1e-10)
    interval = stats.mean_interval(a.mean(), a.var(ddof=1), len(a), 0.05)
    assert (interval.low, interval.high) == pytest.approx(sps.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=sps.sem(a)), rel=1e-12)


def test_relative_lift_of_means_covers_the_truth():
    rng = np.random.default_rng(20240611)
    # Delta-method interval: check its coverage instead of a library (none computes it from moments).
    hits = 0
    for _ in range(400):
        a, b = rng.normal(3.3, 1.2, 400), rng.normal(3.0, 1.2, 400)
        iv = stats.relative_lift_means(a.mean(), a.var(ddof=1), 400, b.mean(), b.var(ddof=1), 400, 0.05)
        hits += iv.low <= 3.3 / 3.0 - 1 <= iv.high
    assert 0.92 <= hits / 400 <= 0.98


def test_sample_size_and_mde_match_statsmodels():
    ours = stats.sample_size_proportions(0.30, 0.02, alpha=0.05, power=0.8)
    assert ours == pytest.approx(samplesize_proportions_2indep_onetail(0.02, 0.30, 0.8, alpha=0.05), abs=1)
    mde = stats.mde_proportions(0.30, ours, alpha=0.05, power=0.8)
    assert mde == pytest.approx(0.02, abs=1e-4)


def test_srm_matches_scipy_and_fires_on_a_planted_52_48_split():
    planted = stats.srm_check({"control": 10_400, "variant_a": 9_600}, {"control": 0.5, "variant_a": 0.5})
    chi2, p = sps.chisquare([10_400, 9_600])
    assert (planted.chi2, planted.p_value) == pytest.approx((chi2, p), rel=1e-10)
    assert planted.mismatch and planted.p_value < 1e-7
    # The real assignment of 20k users passes.
    variants = [("control", 1.0), ("variant_a", 1.0)]
    users = [assign("rlhf-ab-1", f"user-{n}", variants) for n in range(20_000)]
    fair = stats.srm_check({name: users.count(name) for name, _ in variants}, expected_shares(variants))
    assert not fair.mismatch, fair


def _ever_rejects(p_values_at_peeks: np.ndarray, alpha: float) -> float:
    return float((p_values_at_peeks <= alpha).any(axis=1).mean())


def test_sequential_test_false_positive_rate_under_aa_with_peeking_stays_below_alpha():
    rng = np.random.default_rng(20240611)
    sims, peeks, step, alpha = 1_000, 50, 200, 0.05
    x_t = rng.binomial(step, 0.3, size=(sims, peeks)).cumsum(axis=1)
    x_c = rng.binomial(step, 0.3, size=(sims, peeks)).cumsum(axis=1)
    n = step * np.arange(1, peeks + 1)
    seq = np.array([[stats.msprt_proportions(int(x_t[s, k]), int(n[k]), int(x_c[s, k]), int(n[k])).p_value for k in range(peeks)] for s in range(sims)])
    naive = np.array([[stats.two_proportion_ztest(int(x_t[s, k]), int(n[k]), int(x_c[s, k]), int(n[k])).p_value for k in range(peeks)] for s in range(sims)])
    fpr_seq, fpr_naive = _ever_rejects(seq, alpha), _ever_rejects(naive, alpha)
    print(f"A/A, {sims} runs x {peeks} peeks: mSPRT false-positive rate {fpr_seq:.3f}, peeking z-test {fpr_naive:.3f}, alpha {alpha}")
    assert fpr_seq <= alpha
    assert fpr_naive > 2 * alpha  # what the sequential test protects against


def test_sequential_test_detects_a_real_effect():
    n = 20_000
    result = stats.msprt_proportions(int(0.33 * n), n, int(0.30 * n), n)
    assert result.p_value < 0.001 and result.likelihood_ratio > 1000


def test_sequential_means_agree_in_direction_with_welch():
    rng = np.random.default_rng(20240611)
    a, b = rng.normal(3.5, 1.0, 3000), rng.normal(3.3, 1.0, 3000)
    seq = stats.msprt_means(a.mean(), a.var(ddof=1), 3000, b.mean(), b.var(ddof=1), 3000)
    assert seq.p_value < 0.05
    assert seq.p_value >= stats.welch_ttest(a.mean(), a.var(ddof=1), 3000, b.mean(), b.var(ddof=1), 3000).p_value
