"""The trigger gate over the experiment lifecycle, on the ledger: an open experiment holds the next
trigger back whatever the clock says, its decision releases it, and the training-status and
experiments topics may be read in either order or again without re-opening a decided round."""

from datetime import UTC, datetime

from schemas import TrainingStatus
from schemas.experiments import Arm, ExperimentDecided, ExperimentStarted
from streams.ledger import DECIDED_MEMORY
from streams.records import PolicyRecord
from tests.unit.streams.test_ledger import T0, Run, fb


def started(trigger_id: str) -> PolicyRecord:
    arms = (
        Arm(name="control", model_version="base", weight=1.0),
        Arm(name="variant_a", model_version=f"v-{trigger_id}", weight=1.0),
    )
    event = ExperimentStarted(
        experiment_id=f"policy-ab:v-{trigger_id}",
        policy="assistant",
        trigger_id=trigger_id,
        control_version="base",
        treatment_version=f"v-{trigger_id}",
        arms=arms,
        salt="s1",
        horizon_users=100,
        horizon_s=3600.0,
    )
    return PolicyRecord(policy="assistant", experiment=event)


def decided(trigger_id: str, outcome: str = "promote") -> PolicyRecord:
    event = ExperimentDecided(
        experiment_id=f"policy-ab:v-{trigger_id}",
        policy="assistant",
        trigger_id=trigger_id,
        outcome=outcome,
        serving_version="base",
    )
    return PolicyRecord(policy="assistant", experiment=event)


def finished(trigger_id: str, stage: str) -> PolicyRecord:
    at = datetime.fromtimestamp(T0, UTC)
    return PolicyRecord(
        policy="assistant",
        status=TrainingStatus(trigger_id=trigger_id, policy="assistant", state="finished", stage=stage, timestamp=at),
    )


def first_trigger(run: Run) -> str:
    """Three events (threshold 3): the first trigger, whose training is then running."""
    return [t for n in range(3) for t in run.feed(fb(n)).triggers][0].trigger_id


def held(run: Run, events: range) -> bool:
    return not [t for n in events for t in run.feed(fb(n)).triggers]


def test_an_open_experiment_holds_the_next_trigger_until_its_decision_however_long():
    run = Run(trigger_timeout_s=30)
    first = first_trigger(run)
    assert run.feed(started(first)).outcome == "experiment"
    assert run.feed(finished(first, "candidate")).outcome == "status"
    assert held(run, range(3, 6))
    run.now = T0 + 10 * 3600  # far past the training timeout: an experiment is ended by its decision only
    assert run.feed(PolicyRecord(policy="assistant", tick=run.now)).triggers == []
    assert list(run.ledger.due(run.now)) == []  # the tick closed the metric windows; the held trigger is not due
    assert run.policy_state().experiments == {first: f"policy-ab:v-{first}"}
    released = run.feed(decided(first, "expired"))
    assert released.outcome == "experiment" and [t.event_ids for t in released.triggers] == [("e1", "e2", "e3", "e4", "e5")]
    assert run.policy_state().experiments == {} and run.policy_state().decided == [first]


def test_a_rejected_candidate_opens_no_experiment():
    run = Run()
    first = first_trigger(run)
    [run.feed(fb(n)) for n in range(3, 6)]
    assert len(run.feed(finished(first, "rejected")).triggers) == 1


def test_the_candidate_status_read_before_its_start_holds_the_round_open():
    run = Run()
    first = first_trigger(run)
    run.feed(finished(first, "candidate"))  # the experiments topic is behind the training-status topic
    assert held(run, range(3, 6))
    assert run.feed(started(first)).triggers == [] and run.policy_state().experiments == {first: f"policy-ab:v-{first}"}
    assert len(run.feed(decided(first)).triggers) == 1


def test_the_decision_read_before_the_candidate_status_does_not_reopen_the_round():
    run = Run()
    first = first_trigger(run)
    run.feed(started(first))
    assert run.feed(decided(first)).triggers == []  # the training's own finished status is not read yet
    assert held(run, range(3, 6))
    assert len(run.feed(finished(first, "candidate")).triggers) == 1
    assert run.policy_state().experiments == {}


def test_a_redelivered_start_after_its_decision_does_not_hold_again():
    run = Run()
    first = first_trigger(run)
    run.feed(started(first))
    run.feed(finished(first, "candidate"))
    run.feed(decided(first))  # nothing buffered since the trigger: nothing to release
    assert [run.feed(r).outcome for r in (started(first), decided(first))] == ["experiment-ignored"] * 2
    assert run.policy_state().experiments == {}
    assert not held(run, range(3, 6))


def test_an_experiment_of_a_round_this_worker_did_not_trigger_holds_too():
    run = Run()
    run.feed(started("by-hand"))
    assert held(run, range(0, 4))
    assert len(run.feed(decided("by-hand", "rollback")).triggers) == 1


def test_decided_rounds_are_remembered_up_to_a_bound():
    run = Run()
    rounds = DECIDED_MEMORY + 5
    for n in range(rounds):
        run.feed(started(f"t{n}"))
        run.feed(decided(f"t{n}"))
    assert run.policy_state().decided == [f"t{n}" for n in range(5, rounds)]
