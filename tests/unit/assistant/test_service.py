"""The service around routing, without Kafka or models: the pool loads the versions the open
experiment names, and chat labels interactions and exposures with the experiment and arm."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

import assistant.answering as service
from assistant import generation
from assistant.answering import Assistant, ChatRequest, PolicyPool
from assistant.generation import Answer, Ask
from core.errors import ConfigError, ModelLoadError
from core.settings import Settings
from schemas.events import ExposureEvent, InteractionEvent, validate_event
from schemas.experiments import ExperimentBook
from sdk.client import is_sampled
from tests.unit.assistant.test_routing import decided, started
from trainers.chat_format import as_conversation


class Registry:
    def __init__(self, serving: str | None):
        self.serving_version = serving

    def serving(self, policy: str) -> str | None:
        return self.serving_version

    def path(self, kind: str, version: str) -> Path:
        return Path(kind) / version  # never read: the tests stand in for `load_version`

    def deployments(self, policy: str) -> dict:
        return {}  # every version generated in process


class Client:
    """The producer SDK's surface without Kafka: events validated as the SDK validates them, and
    sampled as it samples them (`collection_rate`), then kept in lists."""

    def __init__(self, collection_rate: float = 1.0):
        self.collection_rate = collection_rate
        self.interactions: list[dict] = []
        self.exposures: list[dict] = []
        self.feedbacks: list = []

    def sampled(self, interaction_id: str) -> bool:
        return is_sampled(interaction_id, self.collection_rate)

    def interaction(self, **event):
        validate_event(InteractionEvent, event)
        if self.sampled(event["interaction_id"]):
            self.interactions.append(event)

    def send(self, topic: str, event, key):
        assert topic == "feedback" and key == event.user_id
        self.feedbacks.append(event)

    def exposure(self, **event):
        validate_event(ExposureEvent, event)
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
    monkeypatch.setattr(generation, "generate", echo)
    return loaded


def echo(policy, asks: list[Ask], sampling) -> list[Answer]:
    """A stand-in for the model: answers `version: question`, streamed word by word to the rows that stream."""
    answers = []
    for ask in asks:
        question = as_conversation(ask.prompt).query
        text = f"{policy.version}: {question}"
        if ask.sink is not None:
            for word in re.findall(r"\s*\S+", text):
                ask.sink.put(word)
        answers.append(Answer(text, "stop", prompt_tokens=len(question.split()), completion_tokens=len(text.split())))
    return answers


def test_the_pool_loads_the_open_experiments_arms_and_keeps_serving_loaded(loads):
    book = ExperimentBook()
    registry = Registry("v1")
    pool = PolicyPool(registry, book)
    assert pool.served.serving is not None
    assert set(pool.served.versions) == {"v1"} and pool.served.serving.version == "v1"
    book.apply(started())
    pool.refresh()
    assert set(pool.served.versions) == {"v1", "v2"}
    book.apply(decided())
    registry.serving_version = "v2"  # promoted
    pool.refresh()
    assert pool.served.serving is not None
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


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "assistant.example"])
def test_serve_refuses_to_listen_beyond_loopback_without_keys_before_anything_loads(host, monkeypatch):
    """Issue 33, finding 2: a host name is resolved before deciding (assistant.example: a public address here)."""
    import argparse
    import socket

    import uvicorn

    import assistant.service as served

    real = socket.getaddrinfo
    public = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **kw: public if h == "assistant.example" else real(h, *a, **kw))
    monkeypatch.setattr(served, "create_app", lambda *a, **kw: pytest.fail("create_app ran before the check"))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("uvicorn started"))
    with pytest.raises(ConfigError, match=r"assistant\.api_keys: none configured, but the server would listen on"):
        served.serve(Settings(), argparse.Namespace(host=host, port=8300))
    started = []
    monkeypatch.setattr(served, "create_app", lambda *a, **kw: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw["host"])))
    served.serve(Settings(assistant={"api_keys": ["sk-1"]}), argparse.Namespace(host=host, port=8300))
    served.serve(Settings(), argparse.Namespace(host="localhost", port=8300))
    assert started == [("app", host), ("app", "localhost")]
