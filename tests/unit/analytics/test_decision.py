"""The decision on per-user sums: which check decides, the report's JSON, and that a heavy user or a
missing history cannot fool it. Users are generated with numpy and summed as `ab_users` sums them."""

import json
import math

import numpy as np

from analytics.decision import SUM_COLUMNS, Arm, decide, report, user_terms
from core.learning_settings import ABTestingSettings, VariantSettings

AB = ABTestingSettings(experiment="exp", min_users_per_variant=200)


def arm(
    variant: str,
    users: int = 4000,
    up: float = 0.45,
    down: float = 0.2,
    high: float = 0.6,
    exposed: int | None = None,
    history: float = 0.0,
    spread: float = 0.1,
    seed: int = 0,
    heavy: int = 0,
) -> Arm:
    """Users giving 1-5 feedback events: thumbs up with probability `up`, down with `down`, else a
    rating (5 with probability `high`, else 2). `history`: share of users with pre-experiment
    feedback at their own propensity; `spread`: how much users' propensities differ. `heavy`: one
    extra user with that many thumbs up."""
    rng = np.random.default_rng(seed + sum(map(ord, variant)))
    lean = rng.normal(0, spread, users)
    f = rng.integers(1, 6, users)
    u = rng.binomial(f, (up + lean).clip(0, 1))
    d = rng.binomial(f - u, min(down / (1 - up), 1))
    r = f - u - d
    hi = rng.binomial(r, high)
    p, s = u + hi, 5 * hi + 2 * (r - hi)
    if heavy:
        f, p, d, r, s = (np.r_[a, b] for a, b in zip((f, p, d, r, s), (heavy, heavy, 0, 0, 0), strict=True))
    pre = np.where(rng.random(len(f)) < history, rng.integers(5, 30, len(f)), 0)
    h = (pre > 0).astype(float)
    x = np.divide(
        rng.binomial(pre, (up + high * (1 - up - down) + np.r_[lean, np.zeros(len(f) - users)]).clip(0, 1)),
        pre,
        out=np.zeros(len(f)),
        where=pre > 0,
    )
    per_user = user_terms(f, p, d, r, s, h, x)
    sums = {k: np.sum(v) for k, v in per_user.items()}
    assert set(sums) | {"users_exposed"} == set(SUM_COLUMNS)
    return Arm.from_sums(variant, {**sums, "users_exposed": exposed or len(f)}, f"{variant}-model", "assistant")


def only(decisions):
    assert len(decisions) == 1
    return decisions[0]


def test_promote_on_a_significant_rise_with_guardrails_held():
    d = only(decide([arm("control"), arm("variant_a", up=0.52, down=0.19)], AB))
    assert (
        d.action == "promote"
        and d.rule == "positive_rate_rose"
        and d.treatment_model == "variant_a-model"
        and d.policy == "assistant"
    )
    assert d.primary.lift.low > 0 and d.primary.sequential_p <= AB.alpha and d.primary.n_treatment == 4000
    json.dumps(d.as_dict(), allow_nan=False)  # the HTTP endpoint serves it as strict JSON


def test_rollback_when_thumbs_down_rises_even_if_positives_rise():
    d = only(decide([arm("control"), arm("variant_a", up=0.5, down=0.26)], AB))
    assert d.action == "rollback" and "thumbs-down" in d.reasons[0]


def test_rollback_when_mean_rating_falls():
    d = only(decide([arm("control"), arm("variant_a", high=0.45)], AB))
    assert d.action == "rollback" and d.rule == "rating_fell" and "rating" in d.reasons[0]


def test_rollback_on_a_significant_drop():
    d = only(decide([arm("control"), arm("variant_a", up=0.38, down=0.2)], AB))
    assert d.action == "rollback" and d.rule in ("positive_rate_fell", "thumbs_down_rose")


def test_keep_running_without_a_difference_or_enough_users():
    d = only(decide([arm("control"), arm("variant_a")], AB))
    assert d.action == "keep_running" and "no significant difference" in d.reasons[0] and 0 < d.mde_abs < 0.1
    few = only(decide([arm("control", users=150), arm("variant_a", users=150, up=0.9, down=0.05)], AB))
    assert few.action == "keep_running" and "needs 200 users" in few.reasons[0]


def test_keep_running_below_min_lift():
    ab = AB.model_copy(update={"min_lift": 0.5})
    d = only(decide([arm("control"), arm("variant_a", up=0.52, down=0.19)], ab))
    assert d.action == "keep_running" and "min_lift" in d.reasons[0]


def test_sample_ratio_mismatch_on_exposed_users_blocks_any_verdict():
    d = only(decide([arm("control", exposed=10_400), arm("variant_a", exposed=9_600, up=0.6)], AB))
    assert d.action == "keep_running" and d.srm.mismatch and "sample ratio mismatch" in d.reasons[0]


def test_one_heavy_user_cannot_make_noise_significant():
    d = only(decide([arm("control"), arm("variant_a", heavy=3000)], AB))
    assert d.per_event.p_value < 1e-6  # counted per event, one enthusiast looks like a win
    assert d.action == "keep_running" and d.primary.sequential_p > AB.alpha


def test_cuped_uses_history_and_falls_back_cleanly_without_it():
    without = only(decide([arm("control"), arm("variant_a")], AB))
    assert without.cuped_variance_ratio == 1.0
    with_history = only(decide([arm("control", history=0.8, spread=0.3), arm("variant_a", history=0.8, spread=0.3)], AB))
    assert with_history.cuped_variance_ratio < 0.9


def test_one_decision_per_treatment_and_missing_variants_count_as_empty():
    ab = ABTestingSettings(
        variants=(
            VariantSettings(name="c", model="serving"),
            VariantSettings(name="t1", model="cand-1"),
            VariantSettings(name="t2", model="cand-2"),
        )
    )
    ds = decide([arm("c", users=100), arm("t1", users=100)], ab)
    assert [d.treatment for d in ds] == ["t1", "t2"]
    assert ds[1].treatment_model == "cand-2" and ds[1].action == "keep_running"


def test_report_puts_the_first_verdict_on_top_with_flat_finite_statistics():
    r = report(decide([arm("control"), arm("variant_a", up=0.52, down=0.19)], AB))
    assert set(r) == {"experiment", "decision", "reason", "users", "statistics", "decisions"}
    assert r["decision"] == "promote" and r["experiment"] == "exp" and r["reason"].startswith("exp: promote variant_a")
    assert r["users"] == {"control": 4000, "variant_a": 4000} and len(r["decisions"]) == 1
    stats = r["statistics"]
    assert {"lift", "lift_low", "lift_high", "p_value", "sequential_p", "users_control", "users_treatment", "srm_p"} <= set(stats)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["lift_low"] < stats["lift"] < stats["lift_high"] and stats["users_treatment"] == 4000
    json.dumps(r, allow_nan=False)


def test_report_says_no_data_on_an_empty_experiment():
    r = report(decide([], AB))
    assert r["decision"] == "no_data" and "no data yet" in r["reason"] and r["users"] == {"control": 0, "variant_a": 0}
    assert r["decisions"][0]["action"] == "keep_running" and r["decisions"][0]["rule"] == "no_data"
    json.dumps(r, allow_nan=False)
