"""The decider's rules without a broker: when an experiment ends, and that it ends once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.decider.service import Decider, verdict
from consumers.emitter import EventEmitter
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


def outcome(started: ExperimentStarted, report: dict | None, now: datetime) -> str:
    """The outcome of a verdict that must end the experiment."""
    decided = verdict(started, report, now)
    assert decided is not None
    return decided[0]


def test_a_verdict_ends_the_experiment_and_no_verdict_waits_for_the_horizon():
    assert verdict(STARTED, {"decision": "promote", "reason": "lift +30%"}, T0) == ("promote", "lift +30%")
    assert outcome(STARTED, {"decision": "rollback", "reason": "worse"}, T0) == "rollback"
    running = {"decision": "keep_running", "users": {"control": 60, "variant_a": 70}}
    assert verdict(STARTED, running, T0 + timedelta(minutes=5)) is None
    assert outcome(STARTED, {**running, "users": {"control": 100, "variant_a": 100}}, T0) == "expired"  # users horizon
    assert outcome(STARTED, running, T0 + timedelta(hours=1)) == "expired"  # duration horizon
    assert verdict(STARTED, None, T0 + timedelta(minutes=5)) is None  # no analysis: only the duration can end it
    assert outcome(STARTED, {"decision": "no_data", "users": {}}, T0 + timedelta(hours=2)) == "expired"


def test_an_experiment_started_by_0_1_0_still_reads_and_its_horizon_keeps_control():
    # 0.1.0 wrote `non_inferiority_margin` on every ExperimentStarted (removed, read until 0.3.0).
    old = ExperimentStarted.model_validate_json(STARTED.model_dump_json()[:-1] + ',"non_inferiority_margin":0.02}')
    assert old == STARTED
    ahead = {"decision": "keep_running", "decisions": [{"rule": "no_verdict"}], "statistics": {"lift": 0.01, "lift_low": -0.01}}
    assert verdict(old, ahead, T0 + timedelta(hours=1)) == (
        "expired",
        "horizon: 3600 s without a significant result; control kept",
    )


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


class Recorder(EventEmitter):
    def __init__(self):  # no producer: records what it would send
        self.sent: list[tuple[str, object]] = []

    def emit(self, topic, event, key=None):
        self.sent.append((topic, event))


def test_a_second_decider_announces_the_recorded_decision_not_its_own(tmp_path):
    settings = Settings(home=tmp_path)
    registry = ModelRegistry.of(settings)
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
