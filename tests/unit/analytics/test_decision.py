import json

from analytics.decision import VariantSummary, decide
from core.settings import ABTestingSettings, VariantSettings

AB = ABTestingSettings(experiment="exp", min_samples_per_variant=200)


def summary(variant, users=5000, feedback=4000, positive_rate=0.6, thumbs_down_rate=0.2, rating=(3.6, 1.2), model=""):
    return VariantSummary(variant, model or f"{variant}-model", "assistant", users, feedback, int(positive_rate * feedback),
                          int(thumbs_down_rate * feedback), feedback // 4, rating[0], rating[1])  # fmt: skip


def only(decisions):
    assert len(decisions) == 1
    return decisions[0]


def test_promote_on_a_significant_rise_with_guardrails_held():
    d = only(decide([summary("control"), summary("variant_a", positive_rate=0.65, thumbs_down_rate=0.19)], AB))
    assert d.action == "promote" and d.treatment_model == "variant_a-model" and d.policy == "assistant"
    assert d.primary.lift.low > 0 and d.primary.sequential_p <= AB.alpha
    json.dumps(d.as_dict(), allow_nan=False)  # the HTTP endpoint serves it as strict JSON


def test_rollback_when_thumbs_down_rises_even_if_positives_rise():
    d = only(decide([summary("control"), summary("variant_a", positive_rate=0.65, thumbs_down_rate=0.25)], AB))
    assert d.action == "rollback" and "thumbs-down" in d.reasons[0]


def test_rollback_when_mean_rating_falls():
    d = only(decide([summary("control"), summary("variant_a", rating=(3.3, 1.2))], AB))
    assert d.action == "rollback" and "rating" in d.reasons[0]


def test_rollback_on_a_significant_drop():
    d = only(decide([summary("control"), summary("variant_a", positive_rate=0.55)], AB))
    assert d.action == "rollback" and "fell" in d.reasons[0]


def test_keep_running_without_a_difference_or_enough_samples():
    d = only(decide([summary("control"), summary("variant_a", positive_rate=0.605)], AB))
    assert d.action == "keep_running" and "no significant difference" in d.reasons[0] and 0 < d.mde_abs < 0.1
    few = only(decide([summary("control", feedback=100), summary("variant_a", feedback=100, positive_rate=0.9)], AB))
    assert few.action == "keep_running" and "needs 200" in few.reasons[0]


def test_keep_running_below_min_lift():
    ab = AB.model_copy(update={"min_lift": 0.2})
    d = only(decide([summary("control"), summary("variant_a", positive_rate=0.65)], ab))
    assert d.action == "keep_running" and "min_lift" in d.reasons[0]


def test_sample_ratio_mismatch_blocks_any_verdict():
    d = only(decide([summary("control", users=10_400), summary("variant_a", users=9_600, positive_rate=0.7)], AB))
    assert d.action == "keep_running" and d.srm.mismatch and "sample ratio mismatch" in d.reasons[0]


def test_one_decision_per_treatment_and_missing_variants_count_as_empty():
    ab = ABTestingSettings(variants=(VariantSettings(name="c", model="serving"), VariantSettings(name="t1", model="cand-1"),
                                     VariantSettings(name="t2", model="cand-2")))  # fmt: skip
    ds = decide([summary("c", users=100), summary("t1", users=100)], ab)
    assert [d.treatment for d in ds] == ["t1", "t2"]
    assert ds[1].treatment_model == "cand-2" and ds[1].action == "keep_running"


def test_report_puts_the_first_verdict_on_top_for_the_registry_driver():
    from analytics.decision import report

    r = report(decide([summary("control"), summary("variant_a", positive_rate=0.65, thumbs_down_rate=0.19)], AB))
    assert r["decision"] == "promote" and r["experiment"] == "exp" and r["reason"].startswith("exp: promote variant_a")
    assert r["samples"] == {"control": 4000, "variant_a": 4000} and len(r["decisions"]) == 1
    json.dumps(r, allow_nan=False)
