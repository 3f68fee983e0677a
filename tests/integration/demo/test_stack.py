"""`rlhf stack up` as a library (demo/stack.py): one Kafka node, a stream worker, the sink, a trainer,
a decider and two assistant replicas behind the balancer come up; the balancer alternates between
the replicas; a SIGKILLed service is started again."""

from __future__ import annotations

import os

import httpx
import pytest

from demo.stack import Stack, StackPlan
from devtools.kafka_local import free_port

pytestmark = pytest.mark.integration


def replica_of(url: str) -> str:
    """Which replica answered (a new connection each call, so the balancer takes its next turn)."""
    response = httpx.get(f"{url}/healthz", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    return str(response.json()["replica"])


def test_a_stack_comes_up_alternates_between_replicas_and_restarts_what_dies(micro_policy, tmp_path):
    environ = {**os.environ, "RLHF_POLICY__BASE_MODEL": micro_policy, "RLHF_ASSISTANT__MAX_TOKENS": "8"}
    stack = Stack(StackPlan(assistants=2, port=free_port()), tmp_path, environ)
    try:
        stack.up(timeout=150)
        services = {"kafka-1", "worker-1", "sink", "trainer-1", "decider-1", "assistant-1", "assistant-2", "balancer"}
        assert set(stack.running()) == services
        # Two replicas: they share a secret the stack made, and each knows it is one of two.
        assert stack.settings.assistant.replicas == 2 and stack.settings.assistant.feedback_secret is not None
        wiring = (tmp_path / "stack.env").read_text()
        assert (tmp_path / "stack.env").stat().st_mode & 0o077 == 0 and f"={stack.broker.bootstrap_servers}\n" in wiring

        replicas = {replica_of(url) for url in stack.replica_urls.values()}
        seen = [replica_of(stack.url) for _ in range(4)]
        assert len(replicas) == 2 and set(seen) == replicas
        assert all(one != two for one, two in zip(seen, seen[1:], strict=False)), seen  # in turn
        answer = httpx.post(f"{stack.url}/chat", json={"user_id": "u-1", "query": "How do I reset my password?"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["interaction_id"], answer.text

        before = stack.pid("trainer-1")
        stack.kill("trainer-1")
        assert stack.pid("trainer-1") is None
        assert stack.check() == ["trainer-1"]
        assert stack.pid("trainer-1") not in (None, before)
    finally:
        stack.down()
    assert stack.running() == []
