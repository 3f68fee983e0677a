"""Fixed offset ranges of Kafka partitions, read to their ends without joining a consumer group:
the one loop under every replay (a trigger's ranges, the whole erasures topic).

    consumer = range_consumer(client_config(settings.kafka), "replay")
    for msg in read_ranges(consumer, {("rlhf.feedback", 0): (120, 480)}, timeout=30, what="trigger t-1"):
        ...                     # every record in [120, 480), each partition paused once read
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from core.errors import TrainingError
from core.kafka_messages import position


def range_consumer(connection: dict[str, Any], purpose: str) -> Consumer:
    return Consumer(
        {
            **connection,
            "group.id": f"{purpose}-{uuid.uuid4().hex}",  # required by the client; never joined or committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
        }
    )


def read_ranges(
    consumer: Consumer, ranges: dict[tuple[str, int], tuple[int, int]], timeout: float, what: str
) -> Iterator[Message]:
    """The records of each (topic, partition) in [start, end), in partition order; TrainingError
    when reading fails or takes longer than `timeout` seconds. A log that ends before `end`
    (compaction removed the last offsets) counts as read to its end."""
    ends = {tp: end for tp, (start, end) in ranges.items() if end > start}
    consumer.assign([TopicPartition(t, p, ranges[(t, p)][0]) for t, p in ends])
    deadline = time.monotonic() + timeout
    while ends:
        if time.monotonic() > deadline:
            raise TrainingError(f"{what}: timed out after {timeout}s with {sorted(ends)} not read to their ends")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if (error := msg.error()) is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise TrainingError(f"{what}: reading {msg.topic()}[{msg.partition()}]: {error.str()}")
            at = position(msg)  # an end-of-partition event says where the end is
            if ends.get((at.topic, at.partition), at.offset + 1) <= at.offset:
                del ends[(at.topic, at.partition)]
            continue
        at = position(msg)
        tp = (at.topic, at.partition)
        end = ends.get(tp)
        if end is None:
            continue
        if at.offset >= end - 1:
            del ends[tp]
            consumer.pause([TopicPartition(*tp)])
        if at.offset < end:
            yield msg
