"""The per-user statistics on literal numbers and against statsmodels on the same data: the delta
method is the cluster-robust variance of the event-level mean with users as clusters, and CUPED's
pooled coefficient is ANCOVA's. Each test seeds its own generator."""

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from analytics import stats
from analytics.assignment import assign, expected_shares

NO_HISTORY = stats.history_covariates(0, 0, 0, 0, 0, 0, 0)


def moments(y: np.ndarray, w: np.ndarray) -> stats.RatioMoments:
    return stats.RatioMoments(len(y), y.sum(), w.sum(), (y * y).sum(), (w * w).sum(), (y * w).sum())


def users(rng: np.random.Generator, n: int, rate: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(positives, feedback) per user: heavy-tailed counts, propensities that differ between users."""
    w = np.minimum(rng.zipf(1.8, n), 60)
    return rng.binomial(w, rng.beta(3 * rate / 0.6, 2, n).clip(0, 1)), w


def event_level(y: np.ndarray, w: np.ndarray, first_user: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One 0/1 outcome per event, and its user: what an event-level regression sees."""
    outcome = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for k, n in zip(y, w, strict=True)])
    return outcome, np.repeat(np.arange(len(w)) + first_user, w)


def test_delta_method_on_literal_numbers():
    # Four users (positives, feedback): (1, 2), (0, 1), (3, 4), (2, 2). r = 6/9; y - r w = -1/3, -2/3, 1/3, 2/3.
    e = stats.ratio(moments(np.array([1, 0, 3, 2]), np.array([2, 1, 4, 2])))
    assert e.value == pytest.approx(6 / 9, rel=1e-12) and e.n == 4
    assert e.variance == pytest.approx((10 / 9) / (9 / 4) ** 2 / (3 * 4), rel=1e-12)
    assert stats.ratio(moments(np.array([1]), np.array([2]))).variance == math.inf  # one user says nothing of the spread


def test_delta_method_is_statsmodels_cluster_robust_ols_by_user():
    rng = np.random.default_rng(20240611)
    (yt, wt), (yc, wc) = users(rng, 700), users(rng, 900, rate=0.55)
    t, c = stats.ratio(moments(yt, wt)), stats.ratio(moments(yc, wc))
    # Per arm: the mean of the events with users as clusters (G / (G - 1) correction: the sample variance's n - 1).
    outcome, cluster = event_level(yt, wt)
    fit = sm.OLS(outcome, np.ones_like(outcome)).fit(cov_type="cluster", cov_kwds={"groups": cluster})
    assert (t.value, t.variance) == pytest.approx((fit.params[0], fit.bse[0] ** 2), rel=1e-10)
    # The difference: the event outcome on a treatment dummy, clustered by user.
    outcome_c, cluster_c = event_level(yc, wc, first_user=10_000)
    x = sm.add_constant(np.r_[np.ones_like(outcome), np.zeros_like(outcome_c)])
    fit = sm.OLS(np.r_[outcome, outcome_c], x).fit(
        cov_type="cluster", cov_kwds={"groups": np.r_[cluster, cluster_c], "use_correction": False}
    )
    assert t.value - c.value == pytest.approx(fit.params[1], rel=1e-10)
    # Without statsmodels' small-sample correction its variance is ours with n in place of n - 1.
    assert t.variance * (t.n - 1) / t.n + c.variance * (c.n - 1) / c.n == pytest.approx(fit.bse[1] ** 2, rel=1e-10)
    diff = stats.interval(stats.Estimate(t.value - c.value, t.variance + c.variance, t.n), 0.05)
    low, high = fit.conf_int(0.05)[1]
    assert (diff.low, diff.high) == pytest.approx((low, high), rel=2e-3)


def test_per_event_moments_give_the_binomial_variance():
    e = stats.ratio(stats.events_as_units(600, 1000))
    assert e.value == 0.6 and e.variance == pytest.approx(0.6 * 0.4 / 999, rel=1e-12)


def test_functions_take_arrays_of_experiments_as_well():
    rng = np.random.default_rng(7)
    arms = [users(rng, 300) for _ in range(4)]
    one_by_one = [stats.ratio(moments(y, w)) for y, w in arms]
    together = stats.ratio(
        stats.RatioMoments(*(np.array([getattr(moments(y, w), f) for y, w in arms]) for f in ("n", "y", "w", "yy", "ww", "yw")))
    )
    # One experiment at a time gives floats (asserted below).
    assert np.allclose(together.value, [float(e.value) for e in one_by_one]) and np.allclose(
        together.variance, [float(e.variance) for e in one_by_one]
    )
    assert isinstance(one_by_one[0].value, float)  # one experiment: plain floats, JSON-safe


def test_cuped_without_history_is_the_plain_ratio():
    rng = np.random.default_rng(3)
    t, c = moments(*users(rng, 400)), moments(*users(rng, 400))
    adjusted = stats.cuped(t, c, NO_HISTORY, NO_HISTORY)
    assert adjusted == (stats.ratio(t), stats.ratio(c))


def test_cuped_is_ancova_for_a_per_user_mean_and_reduces_its_variance():
    rng = np.random.default_rng(11)
    n_t, n_c = 500, 600
    x_t, x_c = rng.beta(3, 2, n_t), rng.beta(3, 2, n_c)  # pre-experiment rate; everyone has history here
    y_t, y_c = 2 * x_t + 0.1 + rng.normal(0, 0.3, n_t), 2 * x_c + rng.normal(0, 0.3, n_c)
    ones_t, ones_c = np.ones(n_t), np.ones(n_c)

    def covariates(x: np.ndarray, y: np.ndarray) -> stats.Covariates:
        return stats.history_covariates(len(x), x.sum(), (x * x).sum(), y.sum(), (x * y).sum(), len(x), x.sum())

    t, c = stats.cuped(moments(y_t, ones_t), moments(y_c, ones_c), covariates(x_t, y_t), covariates(x_c, y_c))
    fit = sm.OLS(np.r_[y_t, y_c], np.column_stack([np.ones(n_t + n_c), np.r_[ones_t, 0 * ones_c], np.r_[x_t, x_c]])).fit(
        cov_type="HC0"
    )
    assert t.value - c.value == pytest.approx(fit.params[1], rel=1e-10)
    assert t.variance + c.variance == pytest.approx(fit.bse[1] ** 2, rel=0.02)
    plain = stats.ratio(moments(y_t, ones_t)).variance + stats.ratio(moments(y_c, ones_c)).variance
    assert t.variance + c.variance < 0.5 * plain


def test_interval_z_test_lift_and_mde_on_literal_numbers():
    t, c = stats.Estimate(0.62, 1e-4, 500), stats.Estimate(0.60, 1e-4, 500)
    z = 0.02 / math.sqrt(2e-4)
    assert stats.z_test(t, c) == pytest.approx(2 * sps.norm.sf(z), rel=1e-12)
    assert stats.interval(t, 0.05).low == pytest.approx(0.62 - 1.959963984540054 * 0.01, rel=1e-12)
    lift, q = stats.relative_lift(t, c, 0.05), 0.62 / 0.60
    half = 1.959963984540054 * math.sqrt(1e-4 / 0.36 + q * q * 1e-4 / 0.36)
    assert (lift.estimate, lift.low, lift.high) == pytest.approx((q - 1, q - 1 - half, q - 1 + half), rel=1e-12)
    assert stats.mde(t, c, 0.05, 0.8) == pytest.approx((1.959963984540054 + 0.8416212335729143) * math.sqrt(2e-4), rel=1e-12)


def test_msprt_on_literal_numbers_and_without_information():
    # tau^2 sigma^2 = 0.0025: log LR = ln(1e-4 / 0.0026) / 2 + 0.0025 * 0.03^2 / (2 * 1e-4 * 0.0026)
    log_lr = 0.5 * math.log(1e-4 / 0.0026) + 0.0025 * 0.03**2 / (2 * 1e-4 * 0.0026)
    result = stats.msprt(0.03, 1e-4, 0.25, tau=0.1)
    assert result.likelihood_ratio == pytest.approx(math.exp(log_lr), rel=1e-12) and result.p_value == pytest.approx(
        math.exp(-log_lr), rel=1e-12
    )
    assert stats.sequential(stats.Estimate(0.7, math.inf, 1), stats.Estimate(0.5, math.inf, 1)).p_value == 1.0


def test_sequential_p_is_never_below_the_fixed_horizon_p():
    rng = np.random.default_rng(5)
    t, c = stats.ratio(moments(*users(rng, 3000, rate=0.62))), stats.ratio(moments(*users(rng, 3000)))
    assert stats.sequential(t, c).p_value >= stats.z_test(t, c)


def test_srm_matches_scipy_and_fires_on_a_planted_52_48_split():
    planted = stats.srm_check({"control": 10_400, "variant_a": 9_600}, {"control": 0.5, "variant_a": 0.5})
    chi2, p = sps.chisquare([10_400, 9_600])
    assert (planted.chi2, planted.p_value) == pytest.approx((chi2, p), rel=1e-10)
    assert planted.mismatch and planted.p_value < 1e-7
    # The real assignment of 20k users passes.
    variants = [("control", 1.0), ("variant_a", 1.0)]
    assigned = [assign("rlhf-ab-1", f"user-{n}", variants) for n in range(20_000)]
    fair = stats.srm_check({name: assigned.count(name) for name, _ in variants}, expected_shares(variants))
    assert not fair.mismatch, fair
