"""Stream-app fixtures: a supervised worker subprocess with its own config (topic prefix = app id, RLHF_HOME,
thresholds through RLHF_* variables), a feedback producer, and readers of the output topics."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from core.settings import Settings
from demo.supervisor import Service, Supervisor
from schemas import FeedbackEvent
from schemas.topics import topic_name
from sdk.client import FeedbackClient


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """`rlhf streams worker` as a supervised subprocess configured only through the environment;
    `start_worker(train_threshold=100)` (re)starts it, `.kill("streams")` SIGKILLs it, and
    `start_worker(die_after_accepting=70, ...)` runs it through `crashing_worker`, which SIGKILLs
    itself right after accepting its 70th feedback event (`die_when_file=path`: at its first batch
    of accepted events once `path` exists). `tag` names a second worker of the same app: its own
    RLHF_HOME and log directory under tmp_path/tag."""
    k = settings.kafka
    base = {
        **os.environ,
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": k.topic_prefix,
        "RLHF_HOME": str(settings.home),
    }
    services: list[Supervisor] = []

    def start(
        die_after_accepting: int | None = None, die_when_file: Path | None = None, tag: str = "", **continuous_learning: object
    ) -> Supervisor:
        env = {**base, **{f"RLHF_CONTINUOUS_LEARNING__{key.upper()}": str(v) for key, v in continuous_learning.items()}}
        if tag:
            env["RLHF_HOME"] = str(tmp_path / tag)
        supervisor = Supervisor(tmp_path / tag / "logs" if tag else tmp_path / "logs", env)
        crash_when = (
            str(die_after_accepting)
            if die_after_accepting is not None
            else str(die_when_file)
            if die_when_file is not None
            else None
        )
        if crash_when is not None:
            # A service registered before `start` keeps its own command line instead of `rlhf.cli`'s.
            launcher = [sys.executable, "-m", "tests.integration.streams.crashing_worker", crash_when]
            supervisor.services["streams"] = Service("streams", [*launcher, "streams", "worker"])
        services.append(supervisor)
        supervisor.start("streams", "streams", "worker")
        return supervisor

    yield start
    for supervisor in services:
        supervisor.stop_all()


class Reader:
    """Reads one topic from the beginning (partition 0 .. n) without a consumer group."""

    def __init__(self, settings: Settings, name: str):
        topic = topic_name(settings.kafka.topic_prefix, name)
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "unused", "enable.auto.commit": False}
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.values: list[bytes] = []

    def poll(self, seconds: float) -> list[bytes]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                value = msg.value()
                assert value is not None  # every record here has a value
                self.values.append(value)
        return self.values

    def wait_for(self, count: int, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.values) < count and time.monotonic() < deadline:
            self.poll(0.2)
        assert len(self.values) >= count, f"expected {count} records, got {len(self.values)} in {timeout}s"
        return self.values

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def reader(settings: Settings) -> Iterator[Callable[[str], Reader]]:
    readers: list[Reader] = []

    def make(name: str) -> Reader:
        readers.append(Reader(settings, name))
        return readers[-1]

    yield make
    for r in readers:
        r.close()


def feedback_event(n: int, **fields: object) -> FeedbackEvent:
    kind = ("thumbs_up", "thumbs_down", "rating", "correction")[n % 4]
    extra = {"rating": 1 + n % 5} if kind == "rating" else {"correction": f"fix {n}"} if kind == "correction" else {}
    return FeedbackEvent(
        interaction_id=f"i{n}",
        user_id=f"u{n % 7}",
        query=f"q {n}?",
        response=f"a {n}",
        model_version="v1",
        feedback_type=kind,
        **(extra | fields),
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[FeedbackClient]:
    with FeedbackClient.from_settings(settings) as c:
        c.collection_rate = 1.0
        yield c
