"""Two assistant replicas behind a load balancer that alternates: each on a home of its own, sharing
only Kafka, the registry on S3 and the feedback secret (issue 37)."""

from __future__ import annotations

import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from assistant.routing import assign
from demo.supervisor import Supervisor
from devtools.kafka_local import free_port
from registry.store import Manifest, ModelRegistry
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.assistant.test_service import EXPERIMENT, START, produce

pytestmark = pytest.mark.integration
USERS = 1_000
BATCH = 25  # users per /chat/batch request (at most `assistant.max_batch_items`)


def shared_registry(url: str, cache: Path, micro_policy: str) -> None:
    registry = ModelRegistry(url, cache=cache)
    copy = lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True)  # noqa: E731

    def candidate(d: Path) -> Manifest:
        copy(d)
        return Manifest(version="v-good", kind="policies", policy="assistant", status="candidate", parent_version="base")

    registry.register_base("assistant", "base", copy)
    registry.publish("policies", "v-good", candidate)
    registry.offer_candidate("assistant", "v-good")


def wait_healthy(url: str, services: Supervisor, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        services.check()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy in {timeout} s"
        time.sleep(0.5)


def test_users_alternating_between_two_replicas(settings, s3_environ, micro_policy, tmp_path):
    url = f"s3://{s3_environ.bucket}/{uuid.uuid4().hex[:8]}"
    shared_registry(url, tmp_path / "setup", micro_policy)
    produce(settings, START)
    sink = SinkProcess(settings)
    replicas, urls = [], []
    for n in range(2):
        port = free_port()
        env = {
            "RLHF_ASSISTANT__MAX_TOKENS": "8",
            **sink.env,
            "RLHF_HOME": str(tmp_path / f"replica-{n}"),
            "RLHF_REGISTRY__URL": url,
            "RLHF_ASSISTANT__REPLICAS": "2",
            "RLHF_ASSISTANT__FEEDBACK_SECRET": "one secret for every replica",
            "RLHF_FEEDBACK__COLLECTION_RATE": "1.0",
        }
        replicas.append(Supervisor(tmp_path / f"replica-{n}" / "logs", env))
        replicas[-1].start("assistant", "serve", "--port", str(port))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        sink.wait_ready()
        for replica_url, services in zip(urls, replicas, strict=True):
            wait_healthy(replica_url, services)
        users = [f"r-{n}" for n in range(USERS)]

        def chat(batch: list[str], replica: int) -> list[dict]:
            items = [{"user_id": u, "query": "How do I reset my password?"} for u in batch]
            for _ in range(60):  # eight threads from one address can exceed its share of the queue: honour 429
                response = httpx.post(f"{urls[replica]}/chat/batch", json=items, timeout=300)
                if response.status_code != 429:
                    break
                time.sleep(float(response.headers["Retry-After"]))
            assert response.status_code == 200, response.text
            return list(response.json())

        batches = [(users[i : i + BATCH], (i // BATCH) % 2) for i in range(0, USERS, BATCH)]
        with ThreadPoolExecutor(8) as pool:  # first answers: half the batches on each replica
            first = [r for replies in pool.map(lambda b: chat(*b), batches) for r in replies]
            again = [r for replies in pool.map(lambda b: chat(b[0], 1 - b[1]), batches) for r in replies]  # then the other

        arms = [(a.name, a.weight) for a in START.arms]
        for one, two in zip(first, again, strict=True):
            assert one["user_id"] == two["user_id"] and one["experiment"] == two["experiment"] == EXPERIMENT
            assert one["variant"] == two["variant"] == assign(START.salt, one["user_id"], arms)  # one arm, on both replicas
        assert {r["variant"] for r in first} == {"control", "variant_a"}

        def feedback(args: tuple[int, dict]) -> int:  # on the replica that did not answer
            n, reply = args
            other = 1 - batches[n // BATCH][1]
            body = {"interaction_id": reply["interaction_id"], "type": "thumbs_up", "token": reply["feedback_token"]}
            return httpx.post(f"{urls[other]}/v1/feedback", json=body, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(feedback, enumerate(first)))
            # a double click, on the replica that answered this time: the same event, counted once
            repeated = list(pool.map(lambda n: feedback((n, first[n])), range(0, USERS, 10)))
        assert statuses.count(200) == USERS and repeated.count(200) == USERS // 10, sorted(set(statuses + repeated))
        counts = sink.wait_counts({"feedback": USERS}, timeout=180)
        time.sleep(2)  # anything late would show now
        assert sink.counts()["feedback"] == USERS, counts
    finally:
        for services in replicas:
            services.stop_all()
        sink.stop()
