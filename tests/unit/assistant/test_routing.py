"""Routing follows the policy's open experiment (its salt, arms and weights), and the book of open
experiments follows the experiments topic's starts and decisions. Pure: no Kafka, no models."""

from __future__ import annotations

from collections import Counter

from analytics.assignment import assign
from assistant.routing import Route, route
from schemas.experiments import Arm, ExperimentBook, ExperimentDecided, ExperimentStarted

USERS = [f"u{i}" for i in range(2000)]


def started(
    candidate: str = "v2", policy: str = "assistant", salt: str = "salt-1", weights: tuple[float, float] = (1.0, 1.0)
) -> ExperimentStarted:
    arms = (
        Arm(name="control", model_version="v1", weight=weights[0]),
        Arm(name="variant_a", model_version=candidate, weight=weights[1]),
    )
    return ExperimentStarted(
        experiment_id=f"policy-ab:{candidate}",
        policy=policy,
        trigger_id=f"trg-{candidate}",
        control_version="v1",
        treatment_version=candidate,
        arms=arms,
        salt=salt,
        horizon_users=100,
        horizon_s=3600.0,
    )


def decided(candidate: str = "v2", policy: str = "assistant") -> ExperimentDecided:
    return ExperimentDecided(
        experiment_id=f"policy-ab:{candidate}",
        policy=policy,
        trigger_id=f"trg-{candidate}",
        outcome="promote",
        serving_version=candidate,
    )


def test_without_an_experiment_everyone_gets_serving_unlabelled():
    assert {route(u, "v1", None, {"v1"}) for u in USERS} == {Route("v1")}


def test_an_open_experiment_assigns_by_its_own_salt_and_serves_each_arm_its_version():
    experiment = started()
    for user in USERS[:200]:
        r = route(user, "v1", experiment, {"v1", "v2"})
        arm = assign("salt-1", user, [("control", 1.0), ("variant_a", 1.0)])
        assert r == Route({"control": "v1", "variant_a": "v2"}[arm], "policy-ab:v2", arm)
    reshuffled = started(salt="salt-2")
    assert [route(u, "v1", experiment, {"v1", "v2"}).variant for u in USERS] != [
        route(u, "v1", reshuffled, {"v1", "v2"}).variant for u in USERS
    ]


def test_arm_weights_set_the_traffic_split():
    shares = Counter(route(u, "v1", started(weights=(3.0, 1.0)), {"v1", "v2"}).variant for u in USERS)
    assert 0.70 < shares["control"] / len(USERS) < 0.80


def test_until_every_arm_is_loaded_the_experiment_is_not_routed():
    assert {route(u, "v1", started(), {"v1"}) for u in USERS} == {Route("v1")}


def opened(book: ExperimentBook, policy: str = "assistant") -> str | None:
    experiment = book.open(policy)
    return None if experiment is None else experiment.experiment_id


def test_a_start_opens_its_policys_experiment_and_its_decision_closes_it():
    book = ExperimentBook()
    book.apply(started())
    book.apply(started("s2", policy="search"))
    assert (opened(book), opened(book, "search")) == ("policy-ab:v2", "policy-ab:s2")
    book.apply(decided("other"))  # another experiment's decision leaves this one open
    assert opened(book) == "policy-ab:v2"
    book.apply(decided())
    assert (opened(book), opened(book, "search")) == (None, "policy-ab:s2")


def test_a_start_read_again_after_its_decision_does_not_reopen_it():
    book = ExperimentBook()
    for step in (started(), decided(), started()):
        book.apply(step)
    assert opened(book) is None
    book.apply(started("v3"))  # the next round's experiment
    assert opened(book) == "policy-ab:v3"
