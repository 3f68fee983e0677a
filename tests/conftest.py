"""Session-scoped real services for integration tests.

Kafka: `KAFKA_BOOTSTRAP_SERVERS` if set; else testcontainers' Kafka module when a Docker engine
answers; else the project's own local broker (`devtools.kafka_local`) on free ports in a temp dir.
Each test session uses its own topic prefix, so a developer's broker can be reused safely.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings, load_settings
from devtools.kafka_local import LocalBroker, free_port
from sdk.admin import create_topics


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The project's own broker when neither an external broker nor Docker is available."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _docker_answers():
        yield None
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port())
    broker.up()
    try:
        yield broker
    finally:
        broker.down(timeout=20)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> Iterator[str]:
    if local_broker is not None:
        yield local_broker.bootstrap_servers
    elif os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    else:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(os.environ.get("KAFKA_IMAGE", "apache/kafka:4.1.1")).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()


def make_settings(bootstrap: str, home: Path, **overrides) -> Settings:
    """Settings for one test: its own topic prefix and state directory."""
    kafka = {"bootstrap_servers": bootstrap, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.", **overrides.pop("kafka", {})}
    return load_settings(None, home=home, kafka=kafka, **overrides)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Fresh topics (own prefix) on the session broker, state under tmp_path."""
    s = make_settings(kafka_bootstrap, tmp_path)
    create_topics(s.kafka.bootstrap_servers, s.kafka.topic_prefix, s.kafka.partitions)
    return s


# A policy small enough to build in seconds: for tests of the machinery around policies.
MICRO_POLICY = {"n_examples": 300, "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "warmup_steps": 20, "batch_size": 16}


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    from trainers.tiny_policy import build_tiny_policy

    return str(build_tiny_policy(tmp_path_factory.mktemp("micro"), **MICRO_POLICY))


# Training small enough that one job takes well under a minute on 2 cores, for tests about the
# loop's delivery and bookkeeping rather than model quality.
FAST_TRAINING = {
    "RLHF_CONTINUOUS_LEARNING__TRAIN_THRESHOLD": "100",
    "RLHF_CONTINUOUS_LEARNING__BUFFER_SIZE": "200",
    "RLHF_REWARD_MODEL__TRAINING__EPOCHS": "1",
    "RLHF_REWARD_MODEL__TRAINING__MAX_LENGTH": "48",
    "RLHF_PPO__TRAINING__EPOCHS": "2",
    "RLHF_PPO__TRAINING__BATCH_SIZE": "8",
    "RLHF_PPO__TRAINING__MINI_BATCH_SIZE": "4",
    "RLHF_PPO__TRAINING__MAX_NEW_TOKENS": "16",
}
