"""The A/B decision the registry acts on: promote, roll back, or keep the experiment running.

    from analytics.decision import analyze
    for d in analyze(warehouse, settings):          # one Decision per treatment variant
        if d.action == "promote":  registry.promote(d.policy, d.treatment_model, reason=d.summary())
        if d.action == "rollback": registry.rollback(d.policy, reason=d.summary())

The first configured variant is the control. The primary metric is the positive-feedback rate;
guardrails are the thumbs-down rate (must not rise) and the mean rating (must not fall). Every
verdict uses the always-valid mSPRT p-value, because this runs again and again as data arrives;
fixed-horizon p-values (z, Welch) are reported alongside for people reading the results.
Order of checks: sample-ratio mismatch (data untrustworthy) -> enough samples -> guardrails ->
primary metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from analytics import stats
from analytics.assignment import expected_shares, variants_of
from analytics.queries import QueryRunner, run_query
from core.settings import ABTestingSettings, Settings

Action = Literal["promote", "rollback", "keep_running"]


@dataclass(frozen=True)
class VariantSummary:
    """One row of the `ab_summary` query."""

    variant: str
    model_version: str = ""
    policy: str = ""
    users_exposed: int = 0
    feedback: int = 0
    positives: int = 0
    thumbs_down: int = 0
    ratings: int = 0
    rating_mean: float = math.nan
    rating_var: float = math.nan

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "VariantSummary":
        # Counts arrive as numpy integers (or floats after an outer join); the fields say what they are.
        return cls(**{f.name: int(row[f.name]) if f.type == "int" else row[f.name] for f in fields(cls) if f.name in row})


@dataclass(frozen=True)
class Comparison:
    metric: str
    control: stats.Interval
    treatment: stats.Interval
    lift: stats.Interval  # relative: treatment / control - 1
    p_value: float  # fixed horizon, for reading only
    sequential_p: float  # always valid: what the verdict uses
    n_control: int
    n_treatment: int

    def significant(self, alpha: float) -> bool:
        return self.sequential_p <= alpha

    @property
    def diff(self) -> float:
        return self.treatment.estimate - self.control.estimate


@dataclass(frozen=True)
class Decision:
    experiment: str
    action: Action
    control: str
    treatment: str
    policy: str
    control_model: str
    treatment_model: str  # the version a promote makes serving
    reasons: tuple[str, ...]
    primary: Comparison
    guardrails: tuple[Comparison, ...]
    srm: stats.SrmResult
    mde_abs: float  # smallest absolute rise of the positive rate detectable at the current sample size

    def summary(self) -> str:
        return f"{self.experiment}: {self.action} {self.treatment} ({self.treatment_model}) vs {self.control}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN and infinities become None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def compare_rate(metric: str, x_t: int, n_t: int, x_c: int, n_c: int, alpha: float) -> Comparison:
    return Comparison(
        metric, stats.wilson_interval(x_c, n_c, alpha), stats.wilson_interval(x_t, n_t, alpha),
        stats.relative_lift_proportions(x_t, n_t, x_c, n_c, alpha) if n_t and n_c else stats.Interval(math.nan, -math.inf, math.inf),
        stats.two_proportion_ztest(x_t, n_t, x_c, n_c).p_value if n_t and n_c else 1.0,
        stats.msprt_proportions(x_t, n_t, x_c, n_c).p_value, n_c, n_t,
    )  # fmt: skip


def compare_mean(metric: str, t: tuple[float, float, int], c: tuple[float, float, int], alpha: float) -> Comparison:
    """t and c are (mean, sample variance, n)."""
    enough = t[2] >= 2 and c[2] >= 2
    return Comparison(
        metric, stats.mean_interval(*c, alpha), stats.mean_interval(*t, alpha),
        stats.relative_lift_means(*t, *c, alpha),
        stats.welch_ttest(*t, *c).p_value if enough else 1.0,
        stats.msprt_means(*t, *c).p_value, c[2], t[2],
    )  # fmt: skip


def decide(summaries: Sequence[VariantSummary], ab: ABTestingSettings) -> tuple[Decision, ...]:
    """One decision per treatment variant, each against the control (the first configured variant)."""
    by_name = {s.variant: s for s in summaries}
    configured = [v.name for v in ab.variants]
    rows = [by_name.get(name, VariantSummary(name)) for name in configured]
    srm = stats.srm_check({r.variant: r.users_exposed for r in rows}, expected_shares(variants_of(ab)))
    models = {v.name: v.model for v in ab.variants}
    return tuple(_decide_one(rows[0], t, srm, ab, models) for t in rows[1:])


def _decide_one(c: VariantSummary, t: VariantSummary, srm: stats.SrmResult, ab: ABTestingSettings, models: Mapping[str, str]) -> Decision:
    alpha = ab.alpha
    primary = compare_rate("positive_rate", t.positives, t.feedback, c.positives, c.feedback, alpha)
    thumbs_down = compare_rate("thumbs_down_rate", t.thumbs_down, t.feedback, c.thumbs_down, c.feedback, alpha)
    rating = compare_mean("mean_rating", (t.rating_mean, t.rating_var, t.ratings), (c.rating_mean, c.rating_var, c.ratings), alpha)
    base_rate = primary.control.estimate if 0 < primary.control.estimate < 1 else 0.5
    mde = stats.mde_proportions(base_rate, max(min(c.feedback, t.feedback), 1), alpha)

    action: Action = "keep_running"
    reasons: list[str] = []
    if srm.mismatch:
        observed = ", ".join(f"{k}={v}" for k, v in srm.observed.items())
        reasons.append(f"sample ratio mismatch (users {observed}, chi2={srm.chi2:.1f}, p={srm.p_value:.2g}): fix assignment or exposure logging first")
    elif min(c.feedback, t.feedback) < ab.min_samples_per_variant:
        reasons.append(f"needs {ab.min_samples_per_variant} feedback events per variant, has {c.variant}={c.feedback}, {t.variant}={t.feedback}")
    elif thumbs_down.significant(alpha) and thumbs_down.diff > 0:
        action = "rollback"
        reasons.append(f"guardrail: thumbs-down rate rose {_fmt_rates(thumbs_down)}")
    elif rating.significant(alpha) and rating.diff < 0:
        action = "rollback"
        reasons.append(f"guardrail: mean rating fell {rating.control.estimate:.2f} -> {rating.treatment.estimate:.2f} (sequential p={rating.sequential_p:.2g})")
    elif primary.significant(alpha) and primary.diff > 0 and primary.lift.estimate > ab.min_lift:
        action = "promote"
        reasons.append(f"positive rate rose {_fmt_rates(primary)}, lift {primary.lift.estimate:+.1%} [{primary.lift.low:+.1%}, {primary.lift.high:+.1%}]")
    elif primary.significant(alpha) and primary.diff < 0:
        action = "rollback"
        reasons.append(f"positive rate fell {_fmt_rates(primary)}")
    else:
        why = f"lift {primary.lift.estimate:+.1%} does not beat min_lift {ab.min_lift:+.1%}" if primary.significant(alpha) else "no significant difference yet"
        reasons.append(f"{why} {_fmt_rates(primary)}; detectable rise at this size: {mde:.3f}")
    return Decision(
        experiment=ab.experiment, action=action, control=c.variant, treatment=t.variant, policy=t.policy or c.policy or "assistant",
        control_model=c.model_version or models[c.variant], treatment_model=t.model_version or models[t.variant],
        reasons=tuple(reasons), primary=primary, guardrails=(thumbs_down, rating), srm=srm, mde_abs=mde,
    )  # fmt: skip


def _fmt_rates(cmp: Comparison) -> str:
    return f"{cmp.control.estimate:.3f} -> {cmp.treatment.estimate:.3f} (sequential p={cmp.sequential_p:.2g}, z-test p={cmp.p_value:.2g})"


def load_summaries(runner: QueryRunner, experiment: str) -> list[VariantSummary]:
    frame = run_query(runner, "ab_summary", {"experiment": experiment})
    return [VariantSummary.from_row(row) for row in frame.to_dict("records")]


def current_experiment(runner: QueryRunner, ab: ABTestingSettings) -> str:
    """The configured experiment, or its most recently exposed `<experiment>:<candidate>` instance
    (the assistant service starts one per candidate version)."""
    seen = run_query(runner, "experiments")["experiment"].tolist()
    return next((e for e in seen if e == ab.experiment or e.startswith(f"{ab.experiment}:")), ab.experiment)


def analyze(runner: QueryRunner, settings: Settings, experiment: str | None = None) -> tuple[Decision, ...]:
    """Decide for each treatment of `experiment` (default: the current one) with the configured variants."""
    ab = settings.ab_testing.model_copy(update={"experiment": experiment or current_experiment(runner, settings.ab_testing)})
    return decide(load_summaries(runner, ab.experiment), ab)


def report(decisions: Sequence[Decision]) -> dict[str, Any]:
    """The JSON form served at /api/ab: the first treatment's verdict on top (two-variant experiments
    are the common case), feedback per variant, and every decision in full."""
    first = decisions[0]
    samples = {first.control: first.primary.n_control, **{d.treatment: d.primary.n_treatment for d in decisions}}
    return {"experiment": first.experiment, "decision": first.action, "reason": first.summary(), "samples": samples,
            "decisions": [{"summary": d.summary(), **d.as_dict()} for d in decisions]}  # fmt: skip
