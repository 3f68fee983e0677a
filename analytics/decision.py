"""The A/B decision the decider acts on: promote, roll back, or keep the experiment running.

    from analytics.decision import analyze, report
    decisions = analyze(warehouse, settings, "policy-ab:assistant-v7")   # one Decision per treatment variant
    report(decisions)        # the JSON served at /api/ab, which the decider reads (analytics.remote)

The first configured variant is the control. Users are the unit of randomisation, so they are the
unit of analysis: the `ab_users` query sums each user's feedback per variant, and every test runs
on those per-user sums (analytics.stats). The primary metric is the positive rate (positives over
feedback, a ratio over users, CUPED-adjusted with each user's pre-experiment positive rate);
guardrails are the thumbs-down rate (must not rise) and the mean rating (must not fall). Every
verdict uses the always-valid mSPRT p-value, because the decider looks again and again as data
arrives; fixed-horizon p-values and the per-event figures (which ignore who gave the feedback) are
reported for people reading the results, never acted on.

The checks run in `RULES` order and the first that holds decides: no data -> sample-ratio mismatch
(data untrustworthy) -> too few users -> guardrails -> primary metric. Comparisons and rules also
work on numpy arrays, so analytics.simulate puts thousands of experiments through this same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from analytics import stats
from analytics.assignment import expected_shares, variants_of
from analytics.queries import QueryRunner, run_query
from analytics.stats import Real
from core.learning_settings import ABTestingSettings
from core.settings import Settings

Action = Literal["promote", "rollback", "keep_running"]
Rule = Literal[
    "no_data",
    "sample_ratio_mismatch",
    "too_few_users",
    "thumbs_down_rose",
    "rating_fell",
    "positive_rate_rose",
    "positive_rate_fell",
    "no_verdict",
]
ACTIONS: Mapping[Rule, Action] = {
    "no_data": "keep_running",
    "sample_ratio_mismatch": "keep_running",
    "too_few_users": "keep_running",
    "thumbs_down_rose": "rollback",
    "rating_fell": "rollback",
    "positive_rate_rose": "promote",
    "positive_rate_fell": "rollback",
    "no_verdict": "keep_running",
}

# The per-user sums of one variant, as the `ab_users` query names them (see its description).
SUM_COLUMNS = (
    "users_exposed",
    "users",
    "feedback",
    "feedback_sq",
    "positives",
    "positives_sq",
    "positives_feedback",
    "thumbs_down",
    "thumbs_down_sq",
    "thumbs_down_feedback",
    "rating_users",
    "ratings",
    "ratings_sq",
    "rating_sum",
    "rating_sum_sq",
    "rating_sum_ratings",
    "history_users",
    "history_rate",
    "history_rate_sq",
    "history_positives",
    "history_rate_positives",
    "history_feedback",
    "history_rate_feedback",
)


def user_terms(
    feedback: Any, positives: Any, thumbs_down: Any, ratings: Any, rating_sum: Any, history: Any, history_rate: Any
) -> dict[str, Any]:
    """Each user's terms whose sums over users are the SUM_COLUMNS but `users_exposed`, as the
    `ab_users` query forms them in SQL: for per-user figures held in numpy or pandas (simulations,
    checks). `history` is 1 for a user with pre-experiment feedback, `history_rate` its positive rate (else 0)."""
    f, p, d, r, s, h, x = feedback, positives, thumbs_down, ratings, rating_sum, history, history_rate
    return {
        "users": f * 0 + 1,
        "feedback": f,
        "feedback_sq": f * f,
        "positives": p,
        "positives_sq": p * p,
        "positives_feedback": p * f,
        "thumbs_down": d,
        "thumbs_down_sq": d * d,
        "thumbs_down_feedback": d * f,
        "rating_users": (r > 0) * 1.0,
        "ratings": r,
        "ratings_sq": r * r,
        "rating_sum": s,
        "rating_sum_sq": s * s,
        "rating_sum_ratings": s * r,
        "history_users": h,
        "history_rate": x,
        "history_rate_sq": x * x,
        "history_positives": h * p,
        "history_rate_positives": x * p,
        "history_feedback": h * f,
        "history_rate_feedback": x * f,
    }


@dataclass(frozen=True)
class Arm:
    """One variant's per-user sums: a row of the `ab_users` query, or many simulated experiments' at once."""

    variant: str
    users_exposed: Real
    positives: stats.RatioMoments  # positives / feedback over users with feedback
    thumbs_down: stats.RatioMoments  # thumbs-down / feedback over the same users
    rating: stats.RatioMoments  # rating sum / ratings over users who rated
    history: stats.Covariates  # pre-experiment positive rate (and whether there is one), same users as positives
    model_version: str = ""
    policy: str = ""

    @classmethod
    def from_sums(cls, variant: str, sums: Mapping[str, Any], model_version: str = "", policy: str = "") -> Arm:
        """From the SUM_COLUMNS (counts may arrive as numpy integers; a missing one is 0)."""
        arrays = {k: np.asarray(sums.get(k, 0.0), dtype=np.float64) for k in SUM_COLUMNS}
        s = {k: float(v) if v.ndim == 0 else v for k, v in arrays.items()}
        users, feedback, feedback_sq = s["users"], s["feedback"], s["feedback_sq"]
        return cls(
            variant,
            s["users_exposed"],
            stats.RatioMoments(users, s["positives"], feedback, s["positives_sq"], feedback_sq, s["positives_feedback"]),
            stats.RatioMoments(users, s["thumbs_down"], feedback, s["thumbs_down_sq"], feedback_sq, s["thumbs_down_feedback"]),
            stats.RatioMoments(
                s["rating_users"], s["rating_sum"], s["ratings"], s["rating_sum_sq"], s["ratings_sq"], s["rating_sum_ratings"]
            ),
            stats.history_covariates(
                s["history_users"],
                s["history_rate"],
                s["history_rate_sq"],
                s["history_positives"],
                s["history_rate_positives"],
                s["history_feedback"],
                s["history_rate_feedback"],
            ),
            model_version,
            policy,
        )


@dataclass(frozen=True)
class Comparison:
    """One metric, treatment against control."""

    metric: str
    control: stats.Interval
    treatment: stats.Interval
    lift: stats.Interval  # relative: treatment / control - 1
    p_value: Real  # fixed horizon, for reading only
    sequential_p: Real  # always valid: what the verdict uses
    n_control: Real  # units: users (events in the per-event figures)
    n_treatment: Real

    def significant(self, alpha: float) -> bool | npt.NDArray[np.bool_]:
        return self.sequential_p <= alpha

    @property
    def diff(self) -> Real:
        return self.treatment.estimate - self.control.estimate


def compare(metric: str, t: stats.Estimate, c: stats.Estimate, alpha: float) -> Comparison:
    return Comparison(
        metric,
        stats.interval(c, alpha),
        stats.interval(t, alpha),
        stats.relative_lift(t, c, alpha),
        stats.z_test(t, c),
        stats.sequential(t, c).p_value,
        c.n,
        t.n,
    )


@dataclass(frozen=True)
class Comparisons:
    primary: Comparison  # positive rate, CUPED-adjusted
    thumbs_down: Comparison
    rating: Comparison
    per_event: Comparison  # the positive rate with every event its own unit: descriptive only
    mde_abs: Real  # smallest absolute rise of the positive rate detectable at this size (fixed horizon)
    cuped_variance_ratio: Real  # variance of the difference with CUPED / without (1: no history to use)


def compare_arms(c: Arm, t: Arm, alpha: float) -> Comparisons:
    adjusted_t, adjusted_c = stats.cuped(t.positives, c.positives, t.history, c.history)
    plain_t, plain_c = stats.ratio(t.positives), stats.ratio(c.positives)
    per_event_t, per_event_c = (stats.ratio(stats.events_as_units(a.positives.y, a.positives.w)) for a in (t, c))
    with np.errstate(divide="ignore", invalid="ignore"):
        variance_ratio = (np.asarray(adjusted_t.variance) + adjusted_c.variance) / (
            np.asarray(plain_t.variance) + plain_c.variance
        )
    return Comparisons(
        compare("positive_rate", adjusted_t, adjusted_c, alpha),
        compare("thumbs_down_rate", stats.ratio(t.thumbs_down), stats.ratio(c.thumbs_down), alpha),
        compare("mean_rating", stats.ratio(t.rating), stats.ratio(c.rating), alpha),
        compare("positive_rate_per_event", per_event_t, per_event_c, alpha),
        stats.mde(adjusted_t, adjusted_c, alpha),
        stats.as_real(variance_ratio),
    )


def rule_of(c: Arm, t: Arm, cmp: Comparisons, srm_mismatch: bool, ab: ABTestingSettings) -> Rule | npt.NDArray[np.str_]:
    """The first check that holds (an array of them for arrays of experiments)."""
    alpha, primary, down, rating = ab.alpha, cmp.primary, cmp.thumbs_down, cmp.rating
    checks: tuple[tuple[Rule, Any], ...] = (
        ("no_data", np.asarray(c.users_exposed) + t.users_exposed + c.positives.n + t.positives.n == 0),
        ("sample_ratio_mismatch", srm_mismatch),
        ("too_few_users", np.minimum(c.positives.n, t.positives.n) < ab.min_users_per_variant),
        ("thumbs_down_rose", down.significant(alpha) & (down.diff > 0)),
        ("rating_fell", rating.significant(alpha) & (rating.diff < 0)),
        ("positive_rate_rose", primary.significant(alpha) & (primary.diff > 0) & (primary.lift.estimate > ab.min_lift)),
        ("positive_rate_fell", primary.significant(alpha) & (primary.diff < 0)),
    )
    rule = np.select([np.asarray(held, dtype=bool) for _, held in checks], [name for name, _ in checks], default="no_verdict")
    return str(rule) if rule.ndim == 0 else rule  # type: ignore[return-value]


@dataclass(frozen=True)
class Decision:
    experiment: str
    action: Action
    rule: Rule  # the check that decided
    control: str
    treatment: str
    policy: str
    control_model: str
    treatment_model: str  # the version a promote makes serving
    reasons: tuple[str, ...]
    users: Mapping[str, int]  # exposed users of the two variants
    primary: Comparison
    guardrails: tuple[Comparison, ...]
    per_event: Comparison
    srm: stats.SrmResult
    mde_abs: float
    cuped_variance_ratio: float

    def summary(self) -> str:
        return f"{self.experiment}: {self.action} {self.treatment} ({self.treatment_model}) vs {self.control}: " + "; ".join(
            self.reasons
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN and infinities become None)."""
        safe: dict[str, Any] = _json_safe(asdict(self))
        return safe

    def statistics(self) -> dict[str, float]:
        """The figures behind the decision, flat and finite (what an ExperimentDecided records)."""
        p, (down, rating), e = self.primary, self.guardrails, self.per_event
        values = {
            "lift": p.lift.estimate,
            "lift_low": p.lift.low,
            "lift_high": p.lift.high,
            "p_value": p.p_value,
            "sequential_p": p.sequential_p,
            "positive_rate_control": p.control.estimate,
            "positive_rate_treatment": p.treatment.estimate,
            "users_control": self.users[self.control],
            "users_treatment": self.users[self.treatment],
            "feedback_users_control": p.n_control,
            "feedback_users_treatment": p.n_treatment,
            "thumbs_down_lift": down.lift.estimate,
            "thumbs_down_sequential_p": down.sequential_p,
            "rating_lift": rating.lift.estimate,
            "rating_sequential_p": rating.sequential_p,
            "srm_chi2": self.srm.chi2,
            "srm_p": self.srm.p_value,
            "mde_abs": self.mde_abs,
            "cuped_variance_ratio": self.cuped_variance_ratio,
            "events_control": e.n_control,
            "events_treatment": e.n_treatment,
            "per_event_p_value": e.p_value,
            "per_event_sequential_p": e.sequential_p,
        }
        return {k: float(v) for k, v in values.items() if math.isfinite(v)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def decide(arms: Sequence[Arm], ab: ABTestingSettings) -> tuple[Decision, ...]:
    """One decision per treatment variant, each against the control (the first configured variant)."""
    by_name = {a.variant: a for a in arms}
    rows = [by_name.get(v.name) or Arm.from_sums(v.name, {}) for v in ab.variants]
    srm = stats.srm_check({r.variant: int(r.users_exposed) for r in rows}, expected_shares(variants_of(ab)))
    models = {v.name: v.model for v in ab.variants}
    return tuple(_decide_one(rows[0], t, srm, ab, models) for t in rows[1:])


def _decide_one(c: Arm, t: Arm, srm: stats.SrmResult, ab: ABTestingSettings, models: Mapping[str, str]) -> Decision:
    cmp = compare_arms(c, t, ab.alpha)
    rule: Rule = rule_of(c, t, cmp, srm.mismatch, ab)  # type: ignore[assignment]
    return Decision(
        experiment=ab.experiment,
        action=ACTIONS[rule],
        rule=rule,
        control=c.variant,
        treatment=t.variant,
        policy=t.policy or c.policy or "assistant",
        control_model=c.model_version or models[c.variant],
        treatment_model=t.model_version or models[t.variant],
        reasons=(_reason(rule, c, t, cmp, srm, ab),),
        users={c.variant: int(c.users_exposed), t.variant: int(t.users_exposed)},
        primary=cmp.primary,
        guardrails=(cmp.thumbs_down, cmp.rating),
        per_event=cmp.per_event,
        srm=srm,
        mde_abs=float(cmp.mde_abs),
        cuped_variance_ratio=float(cmp.cuped_variance_ratio),
    )


def _reason(rule: Rule, c: Arm, t: Arm, cmp: Comparisons, srm: stats.SrmResult, ab: ABTestingSettings) -> str:
    primary, down, rating = cmp.primary, cmp.thumbs_down, cmp.rating
    match rule:
        case "no_data":
            return "no data yet: no exposed users and no feedback"
        case "sample_ratio_mismatch":
            observed = ", ".join(f"{k}={v}" for k, v in srm.observed.items())
            return (
                f"sample ratio mismatch (exposed users {observed}, chi2={srm.chi2:.1f}, p={srm.p_value:.2g}): "
                "fix assignment or exposure logging first"
            )
        case "too_few_users":
            return (
                f"needs {ab.min_users_per_variant} users with feedback per variant, "
                f"has {c.variant}={c.positives.n:.0f}, {t.variant}={t.positives.n:.0f}"
            )
        case "thumbs_down_rose":
            return f"guardrail: thumbs-down rate rose {_fmt(down)}"
        case "rating_fell":
            return (
                f"guardrail: mean rating fell {rating.control.estimate:.2f} -> {rating.treatment.estimate:.2f} "
                f"(sequential p={rating.sequential_p:.2g})"
            )
        case "positive_rate_rose":
            return (
                f"positive rate rose {_fmt(primary)}, "
                f"lift {primary.lift.estimate:+.1%} [{primary.lift.low:+.1%}, {primary.lift.high:+.1%}]"
            )
        case "positive_rate_fell":
            return f"positive rate fell {_fmt(primary)}"
    why = (
        f"lift {primary.lift.estimate:+.1%} does not beat min_lift {ab.min_lift:+.1%}"
        if primary.significant(ab.alpha)
        else "no significant difference yet"
    )
    return f"{why} {_fmt(primary)}; detectable rise at this size: {cmp.mde_abs:.3f}"


def _fmt(cmp: Comparison) -> str:
    return (
        f"{cmp.control.estimate:.3f} -> {cmp.treatment.estimate:.3f} "
        f"(per user: sequential p={cmp.sequential_p:.2g}, z-test p={cmp.p_value:.2g})"
    )


def load_arms(runner: QueryRunner, experiment: str) -> list[Arm]:
    frame = run_query(runner, "ab_users", {"experiment": experiment})
    return [Arm.from_sums(row["variant"], row, row["model_version"], row["policy"]) for row in frame.to_dict("records")]


def current_experiment(runner: QueryRunner, ab: ABTestingSettings) -> str:
    """The configured experiment, or its most recently exposed `<experiment>:<candidate>` instance
    (one per candidate version)."""
    frame = run_query(runner, "experiments")
    seen = frame["experiment"].tolist() if "experiment" in frame else []  # no rows: chdb returns no columns either
    return next((e for e in seen if e == ab.experiment or e.startswith(f"{ab.experiment}:")), ab.experiment)


def analyze(runner: QueryRunner, settings: Settings, experiment: str | None = None) -> tuple[Decision, ...]:
    """Decide for each treatment of `experiment` (default: the current one) with the configured variants."""
    ab = settings.ab_testing.model_copy(update={"experiment": experiment or current_experiment(runner, settings.ab_testing)})
    return decide(load_arms(runner, ab.experiment), ab)


def report(decisions: Sequence[Decision]) -> dict[str, Any]:
    """The JSON form served at /api/ab: the first treatment's verdict on top (two-variant experiments
    are the common case) with its statistics, exposed users per variant, every decision in full.
    "decision" is "no_data" while nothing has arrived, so no one mistakes it for a running test."""
    first = decisions[0]
    empty = all(d.rule == "no_data" for d in decisions)
    users = {name: n for d in decisions for name, n in d.users.items()}
    return {
        "experiment": first.experiment,
        "decision": "no_data" if empty else first.action,
        "reason": f"{first.experiment}: no data yet" if empty else first.summary(),
        "users": users,
        "statistics": first.statistics(),
        "decisions": [{"summary": d.summary(), **d.as_dict()} for d in decisions],
    }
