"""A consumed record's position, typed: confluent-kafka's `Message` getters are optional because a
producer-side message has no position yet; a message `poll` returned without error always has one."""

from __future__ import annotations

from confluent_kafka import Message, TopicPartition


def position(msg: Message, offset_delta: int = 0) -> TopicPartition:
    """The record's topic, partition and offset (plus `offset_delta`: 1 is the offset to commit after it)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a message without a position: it was not consumed")
    return TopicPartition(topic, partition, offset + offset_delta)
