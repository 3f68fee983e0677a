"""The assistant service on the real broker: users follow the experiments topic (an experiment's
start routes its arms by its own salt, its decision ends it), a promotion is picked up live, only
the versions named are served (never the registry's rejected one), and a service started later
rebuilds the open experiment from the topic."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from analytics.assignment import assign
from assistant.service import create_app
from core.settings import AssistantSettings
from registry.store import Manifest, ModelRegistry, Status
from schemas.experiments import Arm, ExperimentDecided, ExperimentStarted
from sdk.client import FeedbackClient

pytestmark = pytest.mark.integration

EXPERIMENT = "policy-ab:v-good"
START = ExperimentStarted(
    experiment_id=EXPERIMENT,
    policy="assistant",
    trigger_id="t" * 20,
    control_version="base",
    treatment_version="v-good",
    arms=(Arm(name="control", model_version="base", weight=1.0), Arm(name="variant_a", model_version="v-good", weight=1.0)),
    salt="salt-it",
    horizon_users=100,
    horizon_s=3600.0,
)
DECISION = ExperimentDecided(
    experiment_id=EXPERIMENT, policy="assistant", trigger_id="t" * 20, outcome="promote", serving_version="v-good"
)


@pytest.fixture
def registry(settings, micro_policy) -> ModelRegistry:
    registry = ModelRegistry.of(settings)
    copy = lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True)  # noqa: E731

    def published(version: str, status: Status) -> Callable[[Path], Manifest]:
        def build(d: Path) -> Manifest:
            copy(d)
            return Manifest(
                version=version, kind="policies", policy="assistant", status=status, trigger_id="t" * 20, parent_version="base"
            )

        return build

    registry.register_base("assistant", "base", copy)
    releases: tuple[tuple[str, Status], ...] = (("v-rejected", "rejected"), ("v-good", "candidate"))
    for version, status in releases:
        registry.publish("policies", version, published(version, status))
    return registry


def produce(settings, *events) -> None:
    with FeedbackClient.from_settings(settings) as client:
        for event in events:
            client.send("experiments", event, key=event.policy)


def chat(client: TestClient, users: int) -> list[dict]:
    """One answer per user u0..u<users>, in /chat/batch requests of at most `assistant.max_batch_items`."""
    items = [{"user_id": f"u{n}", "query": "How do I reset my password?"} for n in range(users)]
    replies = []
    for i in range(0, users, AssistantSettings().max_batch_items):
        response = client.post("/chat/batch", json=items[i : i + AssistantSettings().max_batch_items])
        assert response.status_code == 200, response.text
        replies += response.json()
    return replies


def in_experiment(replies: list[dict]) -> None:
    for n, reply in enumerate(replies):
        arm = assign(START.salt, f"u{n}", [(a.name, a.weight) for a in START.arms])
        assert (reply["experiment"], reply["variant"], reply["model_version"]) == (
            EXPERIMENT,
            arm,
            {"control": "base", "variant_a": "v-good"}[arm],
        )
    assert {r["model_version"] for r in replies} == {"base", "v-good"}


def test_users_follow_the_experiment_from_its_start_to_its_decision(settings, registry):
    with TestClient(create_app(settings, registry)) as client:
        assert client.get("/versions").json() == {"serving": "base", "experiment": None, "candidate": None}
        assert {(r["model_version"], r["experiment"]) for r in chat(client, 40)} == {("base", None)}

        produce(settings, START)
        in_experiment(_after(client, lambda: client.get("/versions").json()["experiment"] == EXPERIMENT, 40))

        registry.promote("assistant", "v-good")
        produce(settings, DECISION)
        replies = _after(
            client, lambda: client.get("/versions").json() == {"serving": "v-good", "experiment": None, "candidate": None}, 40
        )
        assert {(r["model_version"], r["experiment"], r["variant"]) for r in replies} == {("v-good", None, None)}


def test_a_service_started_during_an_experiment_routes_it_from_its_first_request(settings, registry):
    produce(
        settings,
        START.model_copy(update={"experiment_id": "policy-ab:old"}),
        DECISION.model_copy(update={"experiment_id": "policy-ab:old"}),
        START,
    )
    with TestClient(create_app(settings, registry)) as client:
        in_experiment(chat(client, 40))


def _after(client: TestClient, ready, users: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while not ready():
        assert time.monotonic() < deadline, "the service never picked up the change"
        time.sleep(0.2)
    return chat(client, users)
