"""Topics as code: every topic's name, key, value schema, retention and DLQ, and `create_topics`.

Topics are created up front by `rlhf topics create` (idempotent); no app relies on auto-create.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from schemas import (
    DeadLetter,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    TrainingStatus,
    TrainTrigger,
    WindowMetrics,
)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value_schema: type[BaseModel]
    keyed_partitions: bool = True  # False: one partition, total order (triggers, status)
    config: dict[str, str] = field(default_factory=dict)
    dlq: str | None = None


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("interactions", "user_id", InteractionEvent, config={"retention.ms": str(30 * DAY_MS)}),
        # Feedback is the training source of truth: keep it long enough to replay any trigger.
        TopicSpec("feedback", "user_id", FeedbackEvent, config={"retention.ms": str(365 * DAY_MS)}, dlq="feedback-dlq"),
        TopicSpec("feedback-dlq", "none", DeadLetter, keyed_partitions=False, config={"retention.ms": str(90 * DAY_MS)}),
        TopicSpec("exposures", "user_id", ExposureEvent, config={"retention.ms": str(90 * DAY_MS)}),
        TopicSpec("train-triggers", "policy", TrainTrigger, keyed_partitions=False, dlq="train-triggers-dlq"),
        TopicSpec("train-triggers-dlq", "none", DeadLetter, keyed_partitions=False),
        TopicSpec("training-status", "policy", TrainingStatus, keyed_partitions=False),
        TopicSpec("model-published", "policy", ModelPublished, keyed_partitions=False),
        TopicSpec("metrics", "window", WindowMetrics),
    )
}


def topic_name(prefix: str, name: str) -> str:
    if name not in TOPICS:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(TOPICS)}")
    return f"{prefix}{name}"


def group_id(prefix: str, name: str) -> str:
    """Consumer groups carry the topic prefix too, so deployments (and test sessions) sharing a
    cluster never join each other's groups."""
    return f"{prefix}{name}"


def partitions_of(spec: TopicSpec, keyed_partitions: int) -> int:
    return keyed_partitions if spec.keyed_partitions else 1


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
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic_name(prefix, n), p) for n in names for p in range(partitions_of(TOPICS[n], keyed_partitions))]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=timeout))
        end = sum(consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts)
        return GroupProgress(committed, end)
    finally:
        consumer.close()
