"""A/B statistics from per-variant summary numbers (counts, means, variances): no data frames, no I/O.

Fixed-horizon tools (intervals, z-test, Welch, SRM, sample size) are checked against SciPy and
statsmodels in tests/unit/analytics. Decisions that are re-evaluated as data arrives use the
mixture sequential probability ratio test (mSPRT, Johari et al. 2017, "Always valid inference"):
its p-value stays valid however often one peeks, whereas a z-test checked every hour would
reach its alpha far more often than alpha under no effect.

Direction convention: every two-sample function takes (treatment, control); positive statistics
and lifts mean the treatment is higher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as sps


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    df: float = math.inf  # degrees of freedom; inf for normal-theory tests


@dataclass(frozen=True)
class SrmResult:
    chi2: float
    p_value: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]


@dataclass(frozen=True)
class SequentialResult:
    likelihood_ratio: float
    p_value: float  # always valid: 1 / likelihood ratio, capped at 1


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> Interval:
    """Wilson score interval for a proportion: sane near 0 and 1, unlike the Wald interval."""
    if n <= 0:
        return Interval(math.nan, 0.0, 1.0)
    z, p = _z(alpha), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, centre - half, centre + half)


def mean_interval(mean: float, var: float, n: int, alpha: float = 0.05) -> Interval:
    """Student-t interval for a mean from its sample variance."""
    if n < 2 or not math.isfinite(var):
        return Interval(mean if n else math.nan, -math.inf, math.inf)
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half)


def two_proportion_ztest(x_t: int, n_t: int, x_c: int, n_c: int) -> TestResult:
    """Two-sided z-test of equal proportions with the pooled variance (statsmodels' proportions_ztest)."""
    pooled = (x_t + x_c) / (n_t + n_c)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    if se == 0:
        return TestResult(0.0, 1.0)
    z = (x_t / n_t - x_c / n_c) / se
    return TestResult(z, float(2 * sps.norm.sf(abs(z))))


def welch_ttest(mean_t: float, var_t: float, n_t: int, mean_c: float, var_c: float, n_c: int) -> TestResult:
    """Welch's unequal-variance t-test from summary statistics (SciPy's ttest_ind(equal_var=False))."""
    a, b = var_t / n_t, var_c / n_c
    if a + b == 0:
        return TestResult(0.0, 1.0, float(n_t + n_c - 2))
    t = (mean_t - mean_c) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n_t - 1) + b * b / (n_c - 1))
    return TestResult(t, float(2 * sps.t.sf(abs(t), df)), df)


def relative_lift_proportions(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float = 0.05) -> Interval:
    """p_t / p_c - 1 with the log-ratio (Katz) interval (statsmodels' confint_proportions_2indep, ratio/log)."""
    if x_t == 0 or x_c == 0:
        return Interval(x_t / n_t / (x_c / n_c) - 1 if x_c else math.nan, -1.0, math.inf)
    ratio = (x_t / n_t) / (x_c / n_c)
    se = math.sqrt(1 / x_t - 1 / n_t + 1 / x_c - 1 / n_c)
    z = _z(alpha)
    return Interval(ratio - 1, ratio * math.exp(-z * se) - 1, ratio * math.exp(z * se) - 1)


def relative_lift_means(mean_t: float, var_t: float, n_t: int, mean_c: float, var_c: float, n_c: int, alpha: float = 0.05) -> Interval:
    """mean_t / mean_c - 1 with a delta-method interval (means well away from zero, e.g. 1-5 ratings)."""
    if mean_c == 0 or n_t < 2 or n_c < 2:
        return Interval(math.nan, -math.inf, math.inf)
    ratio = mean_t / mean_c
    se = math.sqrt(var_t / n_t / mean_c**2 + mean_t**2 * var_c / n_c / mean_c**4)
    z = _z(alpha)
    return Interval(ratio - 1, ratio - 1 - z * se, ratio - 1 + z * se)


def srm_check(observed: Mapping[str, int], expected_shares: Mapping[str, float], threshold: float = 0.001) -> SrmResult:
    """Sample-ratio mismatch: chi-square of the users per variant against the configured weights.

    The threshold is strict (0.001) because SRM is checked on every analysis and a false alarm
    blocks a decision; a real mismatch (broken assignment or logging) gives p far below it.
    """
    names = list(expected_shares)
    total = sum(observed.get(n, 0) for n in names)
    if total == 0:
        return SrmResult(0.0, 1.0, False, dict(observed), dict(expected_shares))
    chi2 = sum((observed.get(n, 0) - total * expected_shares[n]) ** 2 / (total * expected_shares[n]) for n in names)
    p = float(sps.chi2.sf(chi2, len(names) - 1))
    return SrmResult(chi2, p, p < threshold, dict(observed), dict(expected_shares))


def sample_size_proportions(p_control: float, mde_abs: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per variant for a two-sided two-proportion z-test to detect p_control -> p_control + mde_abs."""
    p_t = p_control + mde_abs
    if not (0 < p_control < 1 and 0 < p_t < 1) or mde_abs == 0:
        raise ValueError(f"need 0 < p < 1 for both arms and a non-zero effect, got {p_control} and {p_t}")
    pooled = (p_control + p_t) / 2
    numerator = _z(alpha) * math.sqrt(2 * pooled * (1 - pooled)) + float(sps.norm.ppf(power)) * math.sqrt(
        p_control * (1 - p_control) + p_t * (1 - p_t)
    )
    return math.ceil((numerator / mde_abs) ** 2)


def mde_proportions(p_control: float, n_per_variant: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute rise of p_control that n users per variant detect with this power."""

    def gap(d: float) -> float:
        return sample_size_proportions(p_control, d, alpha, power) - n_per_variant

    high = 1 - p_control - 1e-9
    if gap(high) > 0:
        return math.inf
    return float(optimize.brentq(gap, 1e-9, high, xtol=1e-7))


def msprt(diff: float, variance: float, sigma2: float, tau: float = 0.1) -> SequentialResult:
    """Mixture SPRT for H0: effect = 0, given the estimate `diff` ~ N(effect, variance).

    The mixing prior is N(0, (tau * sigma)^2): tau is the plausible effect in units of the
    per-observation standard deviation `sqrt(sigma2)`. The likelihood ratio is a martingale under
    H0, so P(it ever exceeds 1/alpha) <= alpha (Ville): reject whenever p_value <= alpha.
    """
    if variance <= 0 or sigma2 <= 0:
        return SequentialResult(1.0, 1.0)
    t2 = tau * tau * sigma2
    log_lr = 0.5 * math.log(variance / (variance + t2)) + t2 * diff * diff / (2 * variance * (variance + t2))
    lr = math.exp(min(log_lr, 700.0))
    return SequentialResult(lr, min(1.0, 1 / lr))


def msprt_proportions(x_t: int, n_t: int, x_c: int, n_c: int, tau: float = 0.1) -> SequentialResult:
    """mSPRT on the difference of two proportions, variance pooled under H0 (stable at small n)."""
    if n_t == 0 or n_c == 0:
        return SequentialResult(1.0, 1.0)
    pooled = (x_t + x_c) / (n_t + n_c)
    sigma2 = pooled * (1 - pooled)
    return msprt(x_t / n_t - x_c / n_c, sigma2 * (1 / n_t + 1 / n_c), sigma2, tau)


def msprt_means(mean_t: float, var_t: float, n_t: int, mean_c: float, var_c: float, n_c: int, tau: float = 0.1) -> SequentialResult:
    """mSPRT on the difference of two means (normal approximation, per-arm variances)."""
    if n_t < 2 or n_c < 2:
        return SequentialResult(1.0, 1.0)
    pooled = ((n_t - 1) * var_t + (n_c - 1) * var_c) / (n_t + n_c - 2)
    return msprt(mean_t - mean_c, var_t / n_t + var_c / n_c, pooled, tau)
