"""Session-wide test isolation, and session-scoped real services for integration tests.

Isolation: tests read no developer config. Every RLHF_* variable is dropped and RLHF_CONFIG points
at an empty file, so neither the environment nor ./rlhf.yaml leaks in; a subprocess started with
`{**os.environ, "RLHF_...": ...}` gets exactly the variables its test sets.

Kafka: `KAFKA_BOOTSTRAP_SERVERS` if set; else Apache Kafka 4.x in a container (testcontainers) when
a Docker engine answers; else the project's own local broker (`devtools.kafka_local`) on free ports
in a temp dir. Each test session uses its own topic prefix, so a developer's broker can be reused safely.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from core.settings import Settings, load_settings
from devtools.kafka_local import LocalBroker, free_port
from sdk.admin import create_topics

_ISOLATION = pytest.StashKey[tuple[pytest.MonkeyPatch, Path]]()


def isolate_from_user_config(mp: pytest.MonkeyPatch, directory: Path) -> Path:
    """Drop every RLHF_* variable and point RLHF_CONFIG at an empty YAML file in `directory`.
    (Not RLHF_HOME: environment beats explicit values in `load_settings`, so a global RLHF_HOME would
    override the per-test `home` every fixture sets.)"""
    config = directory / "rlhf.yaml"
    config.write_text("")
    for name in [n for n in os.environ if n.startswith("RLHF_")]:
        mp.delenv(name)
    mp.setenv("RLHF_CONFIG", str(config))
    return config


def pytest_configure(config: pytest.Config) -> None:
    # A hook, not an autouse fixture: some test modules read settings at import, during collection,
    # before any fixture runs.
    mp, directory = pytest.MonkeyPatch(), Path(tempfile.mkdtemp(prefix="rlhf-test-config-"))
    isolate_from_user_config(mp, directory)
    config.stash[_ISOLATION] = (mp, directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    mp, directory = config.stash[_ISOLATION]
    mp.undo()
    shutil.rmtree(directory, ignore_errors=True)


KAFKA_IMAGE = "apache/kafka:4.1.1"


def kraft_env(advertised: str) -> dict[str, str]:
    """One node that is broker and controller, like `devtools.kafka_local`'s. Clients are sent to
    `advertised` (host:port as they reach it); the broker's own traffic stays on a second listener
    inside the container, where the host's port means nothing."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:19092,CONTROLLER://0.0.0.0:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised},BROKER://localhost:19092",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }


class ApacheKafkaContainer(DockerContainer):
    """Apache Kafka 4.x (the official image) as one KRaft node. testcontainers' own KafkaContainer
    drives Confluent's image: its start script is Confluent's, and its `with_kraft()` rejects
    `apache/kafka:4.1.1` (ValueError from a Confluent version check)."""

    def __init__(self, image: str = KAFKA_IMAGE, host_port: int | None = None, **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        host_port = host_port or free_port()
        # The broker tells clients to reconnect to its advertised address, which is fixed before the
        # container starts; so the host port is bound, not left for Docker to map.
        self.bootstrap_servers = f"{self.get_docker_client().host()}:{host_port}"
        self.with_bind_ports(9092, host_port)
        self.with_envs(**kraft_env(self.bootstrap_servers))
        self.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))


def _docker_answers() -> bool:
    try:
        import docker

        # mypy takes `docker` for the repository's docker/ folder (the library ships no types).
        docker.from_env(timeout=2).ping()  # type: ignore[attr-defined]
        return True
    except Exception:
        return False


def choose_kafka_source() -> Literal["external", "docker", "local"]:
    """Where this session's broker comes from (see the module docstring)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    return "docker" if _docker_answers() else "local"


@pytest.fixture(scope="session")
def kafka_source() -> str:
    return choose_kafka_source()


@pytest.fixture(scope="session")
def local_broker(kafka_source: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The project's own broker when neither an external broker nor Docker is available."""
    if kafka_source != "local":
        yield None
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port())
    broker.up()
    try:
        yield broker
    finally:
        broker.down(timeout=20)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_source: str, local_broker: LocalBroker | None) -> Iterator[str]:
    if local_broker is not None:
        yield local_broker.bootstrap_servers
    elif kafka_source == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    else:
        with ApacheKafkaContainer(os.environ.get("KAFKA_IMAGE", KAFKA_IMAGE)) as kafka:
            yield kafka.bootstrap_servers


def make_settings(bootstrap: str, home: Path, **overrides) -> Settings:
    """Settings for one test: its own topic prefix and state directory."""
    kafka = {"bootstrap_servers": bootstrap, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.", **overrides.pop("kafka", {})}
    return load_settings(None, home=home, kafka=kafka, **overrides)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Fresh topics (own prefix) on the session broker, state under tmp_path."""
    s = make_settings(kafka_bootstrap, tmp_path)
    create_topics(s.kafka)
    return s


# A policy small enough to build in seconds: for tests of the machinery around policies.
MICRO_POLICY = {
    "n_examples": 300,
    "vocab_size": 400,
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "warmup_steps": 20,
    "batch_size": 16,
}


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
    "RLHF_POLICY__TRAINING__EPOCHS": "2",
    "RLHF_POLICY__TRAINING__BATCH_SIZE": "8",
    "RLHF_POLICY__TRAINING__MINI_BATCH_SIZE": "4",
    "RLHF_POLICY__TRAINING__MAX_NEW_TOKENS": "16",
}
