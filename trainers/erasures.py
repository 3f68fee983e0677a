"""Who asked to be forgotten: the users on the compacted `erasures` topic (`rlhf privacy forget`).

    from trainers.erasures import erased_users
    erased = erased_users(settings)        # frozenset of user ids, read whole, now

Every replay reads it just before it trains (trainers/replay.py), so a dataset rebuilt after an
erasure holds none of that user's events, whenever the erasure was made and whatever restarted
since: the topic is compacted (the latest request per user is kept forever), not time-retained.
"""

from __future__ import annotations

from confluent_kafka import TopicPartition

from core.errors import EventValidationError, TrainingError
from core.kafka_clients import client_config
from core.settings import Settings
from schemas import ErasureRequest, parse_event
from schemas.topics import topic_name
from trainers.topic_reader import range_consumer, read_ranges


def erased_users(settings: Settings, timeout: float = 30.0) -> frozenset[str]:
    """Every user id on the erasures topic (a missing topic: none). TrainingError when it cannot be
    read in `timeout` seconds: training without knowing who was erased would be worse than waiting."""
    name = topic_name(settings.kafka.topic_prefix, "erasures")
    consumer = range_consumer(client_config(settings.kafka), "erasures")
    try:
        try:
            partitions = consumer.list_topics(name, timeout=timeout).topics[name].partitions
        except Exception as exc:  # KafkaException: the broker is away
            raise TrainingError(f"erasures topic {name!r} cannot be read: {exc}") from None
        ranges = {(name, p): consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout) for p in partitions}
        users: set[str] = set()
        for msg in read_ranges(consumer, ranges, timeout, f"erasures topic {name!r}"):
            try:
                users.add(parse_event(ErasureRequest, msg.value()).user_id)
            except EventValidationError:
                pass  # not an erasure request; the producer (`rlhf privacy forget`) validates what it sends
        return frozenset(users)
    finally:
        consumer.close()
