"""A three-node KRaft cluster (`rlhf kafka up --brokers 3`'s LocalCluster): topics with replication
3 and min ISR 2, producers with acks=all; one node SIGKILLed mid-stream; every acknowledged
feedback event reaches ClickHouse exactly once, and a train trigger still fires."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from core.kafka_clients import client_config
from demo.supervisor import Supervisor
from devtools.kafka_cluster import LocalCluster
from devtools.kafka_local import free_port
from schemas import TrainTrigger
from schemas.topics import topic_name
from sdk.admin import create_topics
from sdk.client import FeedbackClient
from tests.conftest import make_settings
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.devtools.test_kafka_secure import first_on
from trainers.synthetic import feedback_events, split_questions

pytestmark = pytest.mark.integration
EVENTS = 3_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    nodes = LocalCluster(
        tmp_path_factory.mktemp("kafka-3"), tuple(free_port() for _ in range(3)), tuple(free_port() for _ in range(3))
    )
    nodes.up()
    yield nodes
    nodes.down()


def topic_config(admin: AdminClient, topic: str, deadline: float) -> dict:
    """The topic's configs; the node asked may not know a just-created topic yet (UNKNOWN_TOPIC_OR_PART)."""
    while True:
        try:
            described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
            return next(iter(described.values())).result()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_node_lost_mid_stream_loses_no_acknowledged_event(cluster, tmp_path):
    settings = make_settings(
        cluster.bootstrap_servers,
        tmp_path,
        kafka={"replication_factor": 3, "min_insync_replicas": 2},
        continuous_learning={"train_threshold": 1_000, "buffer_size": 2_000},
    )
    create_topics(settings.kafka)
    feedback = topic_name(settings.kafka.topic_prefix, "feedback")
    admin = AdminClient(client_config(settings.kafka))
    deadline = time.monotonic() + 30
    while not (partitions := admin.list_topics(feedback, timeout=10).topics[feedback].partitions) and time.monotonic() < deadline:
        time.sleep(0.2)  # a just-created topic's metadata reaches every node in a moment
    assert {len(p.replicas) for p in partitions.values()} == {3}
    assert topic_config(admin, feedback, deadline)["min.insync.replicas"].value == "2"

    env = {
        **os.environ,
        "RLHF_HOME": str(settings.home),
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "RLHF_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RLHF_KAFKA__REPLICATION_FACTOR": "3",
        "RLHF_KAFKA__MIN_INSYNC_REPLICAS": "2",
        "RLHF_CONTINUOUS_LEARNING__TRAIN_THRESHOLD": "1000",
        "RLHF_CONTINUOUS_LEARNING__BUFFER_SIZE": "2000",
    }
    services = Supervisor(tmp_path / "logs", env)
    sink = SinkProcess(settings, **{k: v for k, v in env.items() if k.startswith("RLHF_KAFKA__")})
    try:
        services.start("streams", "streams", "worker")
        train, _ = split_questions()
        events = list(feedback_events(train, EVENTS, seed=7))
        halfway = threading.Event()

        def send() -> None:
            with FeedbackClient.from_settings(settings) as client:  # acks=all; flushed (acknowledged) on exit
                client.collection_rate = 1.0
                for n, event in enumerate(events):
                    client.feedback(event)
                    if n == EVENTS // 2:
                        halfway.set()
                    time.sleep(0.001)

        sender = threading.Thread(target=send)
        sender.start()
        assert halfway.wait(60)
        cluster.nodes[1].kill()  # SIGKILL a node holding a third of the leaders and a replica of everything
        sender.join(180)
        assert not sender.is_alive()

        trigger = first_on(settings, "train-triggers", TrainTrigger, 120, services)
        assert len(trigger.event_ids) >= 1_000
        sink.wait_ready()
        sink.wait_counts({"feedback": EVENTS}, timeout=180)  # distinct event ids (the sink stores an id once)
    finally:
        services.stop_all()
        assert sink.stop() == 0, sink.output()
