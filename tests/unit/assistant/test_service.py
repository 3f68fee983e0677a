"""The service around routing, without Kafka or models: the pool loads the versions the open
experiment names, and chat labels interactions and exposures with the experiment and arm."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import HTTPException

import assistant.answering as service
from assistant.answering import Assistant, ChatRequest, PolicyPool
from core.errors import ModelLoadError
from core.settings import Settings
from schemas.experiments import ExperimentBook
from tests.unit.assistant.test_routing import decided, started


class Registry:
    def __init__(self, serving: str | None):
        self.serving_version = serving

    def serving(self, policy: str) -> str | None:
        return self.serving_version


class Client:
    def __init__(self):
        self.interactions: list[dict] = []
        self.exposures: list[dict] = []

        self.feedbacks: list = []

    def interaction(self, **event):
        self.interactions.append(event)

    def feedback(self, event):
        self.feedbacks.append(event)
        return event

    def exposure(self, **event):
        self.exposures.append(event)

    def flush(self):
        pass


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Versions loaded, in order; `broken` cannot be loaded."""
    loaded: list[str] = []

    def load_version(registry, version):
        if version == "broken":
            raise ModelLoadError(f"{version}: cannot load policy")
        loaded.append(version)
        return SimpleNamespace(version=version)

    monkeypatch.setattr(service, "load_version", load_version)
    monkeypatch.setattr(
        service, "answer", lambda policy, queries, max_new_tokens, **sampling: [f"{policy.version}: {q}" for q in queries]
    )
    return loaded


def test_the_pool_loads_the_open_experiments_arms_and_keeps_serving_loaded(loads):
    book = ExperimentBook()
    pool = PolicyPool(Registry("v1"), book)
    assert set(pool.served.versions) == {"v1"} and pool.served.serving.version == "v1"
    book.apply(started())
    pool.refresh()
    assert set(pool.served.versions) == {"v1", "v2"}
    book.apply(decided())
    pool.registry.serving_version = "v2"  # promoted
    pool.refresh()
    assert set(pool.served.versions) == {"v2"} and pool.served.serving.version == "v2"
    assert loads == ["v1", "v2"]  # nothing loaded twice


def test_an_arm_that_does_not_load_leaves_users_outside_the_experiment(loads):
    book = ExperimentBook()
    book.apply(started("broken"))
    pool = PolicyPool(Registry("v1"), book)
    a = Assistant(Settings(), pool, Client())
    assert {a.route(f"u{n}")[1].experiment for n in range(50)} == {None}


def test_chat_labels_interactions_and_exposures_with_the_experiment_and_arm(loads):
    book = ExperimentBook()
    client = Client()
    a = Assistant(Settings(), PolicyPool(Registry("v1"), book), client)
    requests = [ChatRequest(user_id=f"u{n}", query="q?") for n in range(40)]
    assert {(r.experiment, r.variant, r.model_version) for r in a.chat(requests)} == {(None, None, "v1")}
    assert client.exposures == [] and {(e["experiment"], e["variant"]) for e in client.interactions} == {(None, None)}

    book.apply(started())
    a.pool.refresh()
    client.interactions.clear()
    replies = a.chat(requests)
    assert {(r.variant, r.model_version) for r in replies} == {("control", "v1"), ("variant_a", "v2")}
    assert all(r.response.startswith(r.model_version) for r in replies)
    labels = [(e["user_id"], e["experiment"], e["variant"], e["model_version"]) for e in client.exposures]
    assert labels == [(i["user_id"], i["experiment"], i["variant"], i["model_version"]) for i in client.interactions]
    assert sorted(labels) == sorted(
        (r.user_id, "policy-ab:v2", reply.variant, reply.model_version) for r, reply in zip(requests, replies, strict=True)
    )


def test_no_serving_version_is_a_503(loads):
    with pytest.raises(HTTPException) as err:
        Assistant(Settings(), PolicyPool(Registry(None), ExperimentBook()), Client()).route("u1")
    assert err.value.status_code == 503
