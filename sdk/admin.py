"""Kafka administration for the registered topics: create them, and read a consumer group's progress.

Topics are created up front by `rlhf topics create` (idempotent); no app relies on auto-create.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.errors import BrokerError
from core.kafka_clients import client_config
from core.settings import KafkaSettings
from schemas.topics import TOPICS, min_insync_replicas_of, partitions_of, topic_name
from sdk import KAFKA_LOG


def create_topics(kafka: KafkaSettings, timeout: float = 30.0) -> dict[str, str]:
    """Create every registered topic that does not exist yet, with `kafka.replication_factor` and
    each topic's min ISR (`min_insync_replicas_of`); returns {name: 'created'|'exists'}."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(kafka, KAFKA_LOG))
    existing = set(_metadata(admin, kafka, timeout).topics)
    wanted = [
        NewTopic(
            topic_name(kafka.topic_prefix, s.name),
            num_partitions=partitions_of(s, kafka.partitions),
            replication_factor=kafka.replication_factor,
            config={**s.config, "min.insync.replicas": str(min_insync_replicas_of(s, kafka))},
        )
        for s in TOPICS.values()
    ]
    result = {t.topic: "exists" for t in wanted if t.topic in existing}
    missing = [t for t in wanted if t.topic not in existing]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                result[name] = "created"
            except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise BrokerError(f"could not create {name}: {exc}") from None
                result[name] = "exists"
    return result


def _metadata(admin, kafka: KafkaSettings, timeout: float):
    """The cluster's metadata, asked in short tries so that refused credentials or certificates
    (raised by the error callback, served by `poll`) surface in seconds, not after `timeout`."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=1.0)
        except KafkaException:
            admin.poll(0)  # an authentication or TLS failure raises BrokerError here
            if time.monotonic() > deadline:
                raise BrokerError(f"no Kafka broker answered at {kafka.bootstrap_servers} within {timeout:.0f}s") from None


@dataclass(frozen=True)
class GroupProgress:
    committed: int  # records the group has committed, summed over partitions
    end: int  # the topics' high watermarks, summed

    @property
    def lag(self) -> int:
        return self.end - self.committed


def group_progress(kafka: KafkaSettings, group: str, names: list[str], timeout: float = 10.0) -> GroupProgress:
    """How far consumer group `group` has committed into the registry topics `names`."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    # A group the broker has not seen yet gets its coordinator assigned on first use: until then the
    # broker answers "not coordinator" or "loading", which only means "ask again in a moment".
    settling = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE}
    consumer = Consumer({**client_config(kafka, KAFKA_LOG), "group.id": group, "enable.auto.commit": False})
    try:
        parts = [
            TopicPartition(topic_name(kafka.topic_prefix, n), p)
            for n in names
            for p in range(partitions_of(TOPICS[n], kafka.partitions))
        ]
        for attempt in range(10):
            try:
                committed = sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=timeout))
                break
            except KafkaException as exc:
                if exc.args[0].code() not in settling or attempt == 9:
                    raise
                time.sleep(0.2 * (attempt + 1))
        end = sum(consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts)
        return GroupProgress(committed, end)
    finally:
        consumer.close()
