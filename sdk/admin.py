"""Kafka administration for the registered topics: create them, and read a consumer group's progress.

Topics are created up front by `rlhf topics create` (idempotent); no app relies on auto-create.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from schemas.topics import TOPICS, partitions_of, topic_name


def create_topics(bootstrap_servers: str, prefix: str, keyed_partitions: int, timeout: float = 30.0) -> dict[str, str]:
    """Create every registered topic that does not exist yet; returns {name: 'created'|'exists'}."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(topic_name(prefix, s.name), num_partitions=partitions_of(s, keyed_partitions), replication_factor=1, config=s.config)
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
                    raise
                result[name] = "exists"
    return result


@dataclass(frozen=True)
class GroupProgress:
    committed: int  # records the group has committed, summed over partitions
    end: int  # the topics' high watermarks, summed

    @property
    def lag(self) -> int:
        return self.end - self.committed


def group_progress(bootstrap_servers: str, group: str, prefix: str, names: list[str], keyed_partitions: int, timeout: float = 10.0) -> GroupProgress:
    """How far consumer group `group` has committed into the registry topics `names`."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    # A group the broker has not seen yet gets its coordinator assigned on first use: until then the
    # broker answers "not coordinator" or "loading", which only means "ask again in a moment".
    settling = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE}
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic_name(prefix, n), p) for n in names for p in range(partitions_of(TOPICS[n], keyed_partitions))]
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
