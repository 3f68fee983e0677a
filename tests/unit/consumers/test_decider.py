"""The decider's rules without a broker: when an experiment ends, and that it ends once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.decider.service import Decider, verdict
from core.settings import Settings
from registry.store import Manifest, ModelRegistry
from schemas import ModelPublished
from schemas.experiments import Arm, ExperimentBook, ExperimentDecided, ExperimentStarted

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STARTED = ExperimentStarted(
    experiment_id="policy-ab:v1",
    policy="assistant",
    trigger_id="t1",
    control_version="base",
    treatment_version="v1",
    arms=(Arm(name="control", model_version="base", weight=1), Arm(name="variant_a", model_version="v1", weight=1)),
    salt="s",
    started_at=T0,
    horizon_users=100,
    horizon_s=3600,
)


def test_a_verdict_ends_the_experiment_and_no_verdict_waits_for_the_horizon():
    assert verdict(STARTED, {"decision": "promote", "reason": "lift +30%"}, T0) == ("promote", "lift +30%")
    assert verdict(STARTED, {"decision": "rollback", "reason": "worse"}, T0)[0] == "rollback"
    running = {"decision": "keep_running", "users": {"control": 60, "variant_a": 70}}
    assert verdict(STARTED, running, T0 + timedelta(minutes=5)) is None
    assert verdict(STARTED, {**running, "users": {"control": 100, "variant_a": 100}}, T0)[0] == "expired"  # users horizon
    assert verdict(STARTED, running, T0 + timedelta(hours=1))[0] == "expired"  # duration horizon
    assert verdict(STARTED, None, T0 + timedelta(minutes=5)) is None  # no analysis: only the duration can end it
    assert verdict(STARTED, {"decision": "no_data", "users": {}}, T0 + timedelta(hours=2))[0] == "expired"


def test_at_the_horizon_a_non_inferior_treatment_is_promoted_when_the_experiment_allows_it():
    started = STARTED.model_copy(update={"non_inferiority_margin": 0.02})
    late = T0 + timedelta(hours=1)

    def report(lift: float, low: float, rule: str = "no_verdict") -> dict:
        return {
            "decision": "keep_running",
            "users": {"control": 60, "variant_a": 70},
            "decisions": [{"rule": rule}],
            "statistics": {"lift": lift, "lift_low": low, "lift_high": lift + 0.02},
        }

    outcome, reason = verdict(started, report(0.004, -0.018), late)
    assert outcome == "promote" and "non-inferior" in reason and "+0.4%" in reason
    assert verdict(started, report(0.004, -0.018), T0 + timedelta(minutes=5)) is None  # before the horizon: keep running
    assert verdict(started, report(0.004, -0.021), late)[0] == "expired"  # the interval reaches past -2%
    assert verdict(started, report(-0.001, -0.010), late)[0] == "expired"  # not ahead
    assert (
        verdict(started, report(0.010, -0.010, rule="too_few_users"), late)[0] == "expired"
    )  # the analysis had a reason to wait
    assert verdict(STARTED, report(0.010, -0.010), late)[0] == "expired"  # no margin: the horizon keeps control
    assert verdict(started, None, late)[0] == "expired"  # no analysis, nothing to judge by


def test_experiments_state_follows_the_topic():
    state = ExperimentBook()
    state.apply(STARTED)
    assert [s.experiment_id for s in state.all_open()] == ["policy-ab:v1"]
    state.apply(
        ExperimentDecided(
            experiment_id="policy-ab:v1", policy="assistant", trigger_id="t1", outcome="expired", serving_version="base"
        )
    )
    state.apply(STARTED)  # redelivered after its decision: stays closed
    assert state.all_open() == []


class Recorder:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    def emit(self, topic, event, key=None):
        self.sent.append((topic, event))


def test_a_second_decider_announces_the_recorded_decision_not_its_own(tmp_path):
    settings = Settings(home=tmp_path)
    registry = ModelRegistry(settings.registry_path)
    registry.register_base("assistant", "base", lambda d: (d / "w").write_text("base"))
    registry.publish(
        "policies",
        "v1",
        lambda d: Manifest(
            version="v1", kind="policies", policy="assistant", status="candidate", trigger_id="t1", parent_version="base"
        ),
    )
    registry.offer_candidate("assistant", "v1")
    first, second = Recorder(), Recorder()
    Decider(settings, analysis=lambda s, e: {}, emitter=first).decide(STARTED, "promote", "lift +30%", {"lift": 0.3})
    Decider(settings, analysis=lambda s, e: {}, emitter=second).decide(STARTED, "rollback", "a later, different view", {})
    for recorder in (first, second):
        topics = [t for t, _ in recorder.sent]
        assert topics == ["model-published", "experiments"]
        published, decided = (e for _, e in recorder.sent)
        assert isinstance(published, ModelPublished) and published.decision == "promoted"
        assert isinstance(decided, ExperimentDecided) and decided.outcome == "promote" and decided.serving_version == "v1"
        assert decided.statistics == {"lift": 0.3}
    assert registry.serving("assistant") == "v1"
