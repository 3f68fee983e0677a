"""Topics the assistant reads in the background: a plain consumer assigned to every partition of its
topics, without a consumer group (each replica reads everything) and committing nothing, so each start
rebuilds what it keeps from the topics alone.

    follower = TopicFollower(settings, ["experiments"], apply, start=OFFSET_BEGINNING)
    threading.Thread(target=follower.run, args=(stop,), daemon=True).start()
    follower.caught_up.wait(10)          # every partition was read to the end it had when reached
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from core.kafka_clients import client_config
from core.settings import Settings
from schemas.topics import group_id, topic_name

log = logging.getLogger("rlhf.serve")
POLL_S = 0.5
METADATA_TIMEOUT_S = 10.0


class TopicFollower:
    """Reads `topics` (registry names) into `apply` until `stop`. `start` is a logical offset
    (OFFSET_BEGINNING) or, when `since_s` is given instead, each partition starts at its first record
    written in the last `since_s` seconds."""

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        apply: Callable[[Message], None],
        name: str,
        start: int = OFFSET_END,
        since_s: float | None = None,
    ):
        self.connection = client_config(settings.kafka)
        self.topics = [topic_name(settings.kafka.topic_prefix, t) for t in topics]
        # The client insists on a group id; no group is joined (partitions are assigned) and nothing is committed.
        self.group = group_id(settings.kafka.topic_prefix, name)
        self.apply, self.start, self.since_s = apply, start, since_s
        self.caught_up = threading.Event()

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer(
            {**self.connection, "group.id": self.group, "enable.auto.commit": False, "enable.partition.eof": True}
        )
        try:
            partitions = self._starts(
                consumer, [TopicPartition(t, p) for t in self.topics for p in self._partitions(consumer, t, stop)]
            )
            consumer.assign(partitions)
            at_end: set[tuple[str, int]] = set()
            while not stop.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                error = msg.error()
                if error is None:
                    self.apply(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add((msg.topic() or "", msg.partition() or 0))
                    if len(at_end) >= len(partitions):
                        self.caught_up.set()
                else:
                    log.warning("reading %s: %s", msg.topic(), error)
        finally:
            consumer.close()

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        if self.since_s is None or not partitions:
            return [TopicPartition(tp.topic, tp.partition, self.start) for tp in partitions]
        since_ms = int((time.time() - self.since_s) * 1000)
        found = consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, since_ms) for tp in partitions], METADATA_TIMEOUT_S
        )
        return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]

    def _partitions(self, consumer: Consumer, topic: str, stop: threading.Event) -> list[int]:
        """The topic's partitions, waiting (and saying so once) while the topic does not exist."""
        warned = False
        while not stop.is_set():
            metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if not warned:
                log.warning("topic %s is not there yet (`rlhf topics create`); waiting for it", topic)
                warned = True
            stop.wait(1.0)
        return []
