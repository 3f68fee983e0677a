"""Who asked to be forgotten: the users on the compacted `erasures` topic (`rlhf privacy forget`).

    from trainers.erasures import erased_users
    erased = erased_users(settings)        # frozenset of user ids, read whole, now

Every replay reads it just before it trains (trainers/replay.py), so a dataset rebuilt after an
erasure holds none of that user's events, whenever the erasure was made and whatever restarted
since: the topic is compacted (the latest request per user is kept forever), not time-retained.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from core.kafka_clients import client_config
from core.errors import EventValidationError, TrainingError
from core.settings import Settings
from schemas import ErasureRequest, parse_event
from schemas.topics import topic_name


def erased_users(settings: Settings, timeout: float = 30.0) -> frozenset[str]:
    """Every user id on the erasures topic (a missing topic: none). TrainingError when it cannot be
    read in `timeout` seconds: training without knowing who was erased would be worse than waiting."""
    name = topic_name(settings.kafka.topic_prefix, "erasures")
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"erasures-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})  # fmt: skip
    try:
        try:
            partitions = consumer.list_topics(name, timeout=timeout).topics[name].partitions
        except Exception as exc:  # KafkaException: the broker is away
            raise TrainingError(f"erasures topic {name!r} cannot be read: {exc}") from None
        if not partitions:
            return frozenset()
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        users: set[str] = set()
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TrainingError(f"erasures topic {name!r}: not read to its end in {timeout}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
                    continue
                raise TrainingError(f"erasures topic {name!r}: {msg.error().str()}")
            try:
                users.add(parse_event(ErasureRequest, msg.value()).user_id)
            except EventValidationError:
                pass  # not an erasure request; the producer (`rlhf privacy forget`) validates what it sends
            if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                ends.pop(msg.partition(), None)
        return frozenset(users)
    finally:
        consumer.close()
