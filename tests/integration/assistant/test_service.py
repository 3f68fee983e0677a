"""The assistant service on the real broker: every user gets a served version, never a rejected
candidate; an offered candidate gets the treatment share, and a promotion is picked up live."""

from __future__ import annotations

import shutil
import time

import pytest
from fastapi.testclient import TestClient

from registry.store import Manifest, ModelRegistry
from assistant.service import create_app

pytestmark = pytest.mark.integration

@pytest.fixture
def registry(settings, micro_policy) -> ModelRegistry:
    registry = ModelRegistry(settings.registry_path)
    copy = lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True)  # noqa: E731
    registry.register_base("assistant", "base", copy)
    for version, status in (("v-rejected", "rejected"), ("v-good", "candidate")):
        registry.publish("policies", version, lambda d, v=version, s=status: (copy(d), Manifest(
            version=v, kind="policies", policy="assistant", status=s, trigger_id="t" * 20, parent_version="base"))[1])  # fmt: skip
    return registry


def chat(client: TestClient, users: int) -> list[dict]:
    response = client.post("/chat/batch", json=[{"user_id": f"u{n}", "query": "How do I reset my password?"} for n in range(users)])
    assert response.status_code == 200
    return response.json()


def test_a_rejected_candidate_is_never_served(settings, registry):
    with TestClient(create_app(settings, registry)) as client:
        assert client.get("/versions").json() == {"serving": "base", "candidate": None}
        assert {r["model_version"] for r in chat(client, 40)} == {"base"}

        registry.offer_candidate("assistant", "v-good")
        replies = _after_refresh(client, lambda: client.get("/versions").json()["candidate"] == "v-good", 40)
        assert {r["model_version"] for r in replies} == {"base", "v-good"}
        assert all(r["experiment"] == f"{settings.ab_testing.experiment}:v-good" for r in replies)

        registry.promote("assistant", "v-good")
        replies = _after_refresh(client, lambda: client.get("/versions").json() == {"serving": "v-good", "candidate": None}, 40)
        assert {r["model_version"] for r in replies} == {"v-good"}
        assert "v-rejected" not in {r["model_version"] for r in replies}


def _after_refresh(client: TestClient, ready, users: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while not ready():
        assert time.monotonic() < deadline, "the service never picked up the registry change"
        time.sleep(0.2)
    return chat(client, users)
