"""A/B statistics at the unit of randomisation, from per-user sums: no data frames, no I/O.

Users are randomised, so users are the independent units. One user's feedback events are
correlated (some users like everything), and a test that counts events as independent understates
the variance by the design effect, 1 + ICC * (events per user - 1), which lets a few heavy users
make noise look significant. Each metric is therefore a ratio of sums over users, e.g. positive
rate = sum(positives) / sum(feedback), with its variance from the delta method (the ratio-metric
analysis of GrowthBook, Statsig and Eppo; Deng et al. 2018, "Applying the delta method in metric
analytics"): the cluster-robust variance of the event-level mean with users as clusters, which
tests/unit/analytics checks against statsmodels.

CUPED (Deng et al. 2013) then removes the part of that variance which each user's pre-experiment
behaviour predicts, by regressing the linearised metric on pre-experiment covariates with one
coefficient pooled over the arms (as ANCOVA does).

Verdicts re-evaluated as data arrives use the mixture sequential probability ratio test (mSPRT,
Johari et al. 2017, "Always valid inference"): its p-value stays valid however often one peeks,
whereas a z-test checked after every batch reaches alpha far more often than alpha under no effect.

Every function takes floats or numpy arrays of them (`Real`): the decider analyses one experiment,
analytics.simulate thousands at once, through the same code. Direction convention: two-sample
functions take (treatment, control); positive differences and lifts mean the treatment is higher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

Real: TypeAlias = float | npt.NDArray[np.float64]
Vector: TypeAlias = npt.NDArray[np.float64]  # covariates on the last axis (and the one before it for matrices)

# Coefficients of covariates with no variation of their own (everyone, or no one, has history)
# are set to zero instead of blowing up: singular values below this share of the largest are cut.
_PINV_RTOL = 1e-9


def as_real(value: npt.ArrayLike) -> Real:
    """A Python float for one experiment (JSON-safe), the array for many."""
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else array


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


@dataclass(frozen=True)
class Interval:
    estimate: Real
    low: Real
    high: Real


@dataclass(frozen=True)
class SrmResult:
    chi2: float
    p_value: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]


@dataclass(frozen=True)
class SequentialResult:
    likelihood_ratio: Real
    p_value: Real  # always valid: 1 / likelihood ratio, capped at 1


@dataclass(frozen=True)
class RatioMoments:
    """One arm's sums over its n users behind the ratio sum(y) / sum(w), y and w being per-user
    counts (e.g. y = positives, w = feedback events): the sums of y, w, y^2, w^2 and y*w."""

    n: Real
    y: Real
    w: Real
    yy: Real
    ww: Real
    yw: Real


def events_as_units(successes: Real, events: Real) -> RatioMoments:
    """The moments when every event counts as its own user (a 0/1 outcome per event): the per-event
    analysis, which ignores who gave the feedback. Descriptive only."""
    return RatioMoments(events, successes, events, successes, events, successes)


@dataclass(frozen=True)
class Covariates:
    """Sums over the same users as a `RatioMoments` of k pre-experiment covariates z per user:
    sum(z) (..., k), sum(z z^T) (..., k, k), sum(z y) and sum(z w) (..., k)."""

    z: Vector
    zz: Vector
    zy: Vector
    zw: Vector


def history_covariates(
    users: Real, rate: Real, rate_sq: Real, users_y: Real, rate_y: Real, users_w: Real, rate_w: Real
) -> Covariates:
    """z = (h, x): h = 1 for a user with pre-experiment feedback, x = that feedback's positive rate
    (0 without). The indicator lets users without history keep a mean of their own instead of
    being treated as having a rate of 0. Arguments: sum(h), sum(x), sum(x^2), sum(h y), sum(x y),
    sum(h w), sum(x w); h^2 = h and h x = x need no sums of their own."""

    def pair(a: Real, b: Real) -> Vector:
        return np.stack(np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)), axis=-1)

    return Covariates(
        pair(users, rate),
        np.stack([pair(users, rate), pair(rate, rate_sq)], axis=-2),
        pair(users_y, rate_y),
        pair(users_w, rate_w),
    )


@dataclass(frozen=True)
class Estimate:
    """One arm's estimate of a metric, the variance of that estimate, and the users behind it."""

    value: Real
    variance: Real
    n: Real


@dataclass(frozen=True)
class _Linearised:
    """`_influence` with the covariates: their means, sum(z L) and sum((z - mean z)(z - mean z)^T)."""

    ratio: Real
    ss: Real
    n: Real
    z_mean: Vector
    s_zl: Vector
    s_zz: Vector


def _influence(m: RatioMoments) -> tuple[Real, Real, Real]:
    """The ratio r, mean(w), and sum(L^2) of the influence terms L_i = (y_i - r w_i) / mean(w)
    (whose mean is 0), from the sums alone."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = m.y / np.asarray(m.w, dtype=np.float64)
        mean_w = m.w / np.asarray(m.n, dtype=np.float64)
        ss = np.maximum(m.yy - 2 * r * m.yw + r * r * m.ww, 0.0) / (mean_w * mean_w)
    return r, mean_w, ss


def _linearise(m: RatioMoments, cov: Covariates) -> _Linearised:
    r, mean_w, ss = _influence(m)
    n = np.asarray(m.n, dtype=np.float64)
    z_mean = cov.z / np.maximum(n, 1.0)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_zl = (cov.zy - np.asarray(r)[..., None] * cov.zw) / np.asarray(mean_w)[..., None]
    return _Linearised(r, ss, n, z_mean, s_zl, cov.zz - cov.z[..., :, None] * z_mean[..., None, :])


def _estimate(value: Real, ss: Real, n: Real) -> Estimate:
    """Sample variance of the L_i over n users, divided by n: the delta-method variance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(np.asarray(n) >= 2, ss / ((n - 1) * n), np.inf)
    return Estimate(as_real(value), as_real(variance), as_real(n))


def ratio(m: RatioMoments) -> Estimate:
    """sum(y) / sum(w) over users with its delta-method variance (n < 2 users: infinite)."""
    r, _, ss = _influence(m)
    return _estimate(r, ss, m.n)


def cuped(t: RatioMoments, c: RatioMoments, zt: Covariates, zc: Covariates) -> tuple[Estimate, Estimate]:
    """Both arms' ratios adjusted by the covariates, r - theta . (mean z of the arm - mean z of all),
    with theta the pooled within-arm regression of L on z, and their variances (theta taken as
    known, as usual). Where no covariate varies (no user has history) theta is 0: this is `ratio`."""
    lt, lc = _linearise(t, zt), _linearise(c, zc)
    s_zz = np.nan_to_num(lt.s_zz + lc.s_zz)
    theta = (np.linalg.pinv(s_zz, rtol=_PINV_RTOL, hermitian=True) @ np.nan_to_num(lt.s_zl + lc.s_zl)[..., None])[..., 0]
    z_all = (zt.z + zc.z) / np.maximum(lt.n + lc.n, 1.0)[..., None]

    def adjusted(arm: _Linearised) -> Estimate:
        value = arm.ratio - np.sum(theta * (arm.z_mean - z_all), axis=-1)
        explained = 2 * np.sum(theta * arm.s_zl, axis=-1) - np.einsum("...i,...ij,...j->...", theta, arm.s_zz, theta)
        return _estimate(value, np.maximum(arm.ss - explained, 0.0), arm.n)

    return adjusted(lt), adjusted(lc)


def interval(e: Estimate, alpha: float = 0.05) -> Interval:
    half = _z(alpha) * np.sqrt(e.variance)
    return Interval(e.value, as_real(e.value - half), as_real(e.value + half))


def z_test(t: Estimate, c: Estimate) -> Real:
    """Two-sided fixed-horizon p-value of the difference (for reading; verdicts use `sequential`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (t.value - c.value) / np.sqrt(t.variance + c.variance)
    return as_real(np.where(np.isfinite(z), 2 * sps.norm.sf(np.abs(z)), 1.0))


def relative_lift(t: Estimate, c: Estimate, alpha: float = 0.05) -> Interval:
    """t / c - 1 with a delta-method interval (independent arms)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = t.value / c.value
        se = np.sqrt(t.variance / c.value**2 + q * q * c.variance / c.value**2)
    half = _z(alpha) * se
    return Interval(as_real(q - 1), as_real(q - 1 - half), as_real(q - 1 + half))


def mde(t: Estimate, c: Estimate, alpha: float = 0.05, power: float = 0.8) -> Real:
    """Smallest absolute difference a fixed-horizon test at this variance detects with this power."""
    return as_real((_z(alpha) + float(sps.norm.ppf(power))) * np.sqrt(t.variance + c.variance))


def msprt(diff: Real, variance: Real, sigma2: Real, tau: float = 0.1) -> SequentialResult:
    """Mixture SPRT for H0: effect = 0, given the estimate `diff` ~ N(effect, variance).

    The mixing prior is N(0, (tau * sigma)^2): tau is the plausible effect in units of the
    per-user standard deviation `sqrt(sigma2)`. The likelihood ratio is a martingale under H0, so
    P(it ever exceeds 1/alpha) <= alpha (Ville): reject whenever p_value <= alpha.
    """
    d, v, s2 = (np.asarray(a, dtype=np.float64) for a in (diff, variance, sigma2))
    valid = (v > 0) & (s2 > 0) & np.isfinite(v) & np.isfinite(s2) & np.isfinite(d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t2 = tau * tau * s2
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    lr = np.exp(np.where(valid, np.minimum(log_lr, 700.0), 0.0))
    return SequentialResult(as_real(lr), as_real(np.minimum(1.0, 1 / lr)))


def sequential(t: Estimate, c: Estimate, tau: float = 0.1) -> SequentialResult:
    """mSPRT on the difference of two arms' estimates; sigma2 is the per-user variance that the
    difference's variance implies, variance / (1/n_t + 1/n_c)."""
    variance = np.asarray(t.variance) + c.variance
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = variance / (1 / np.asarray(t.n, dtype=np.float64) + 1 / np.asarray(c.n, dtype=np.float64))
    return msprt(np.asarray(t.value) - c.value, variance, sigma2, tau)


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
