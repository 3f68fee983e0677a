"""The open experiment of each policy, as the assistant service learns it from the `experiments` topic.

The events are folded by `schemas.experiments.ExperimentBook`; `ExperimentFollower` feeds one from a background thread:
a plain consumer assigned to the topic's partitions from the beginning, without a consumer group,
so every start of the service rebuilds the book and no offsets are committed.

    book = ExperimentBook()
    follower = ExperimentFollower(settings, book)
    threading.Thread(target=follower.run, args=(stop,), daemon=True).start()
    follower.caught_up.wait(10)          # the topic was read to its end once
    book.open("assistant")               # ExperimentStarted | None
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from core.errors import EventValidationError
from core.kafka_clients import client_config
from core.settings import Settings
from schemas import parse_event
from schemas.experiments import ExperimentBook, ExperimentEvent
from schemas.topics import group_id, topic_name

log = logging.getLogger("rlhf.serve")
POLL_S = 0.5
METADATA_TIMEOUT_S = 10.0


class ExperimentFollower:
    """Reads the experiments topic into `book` until `stop`; `caught_up` is set once every
    partition has been read to the end it had when reached."""

    def __init__(self, settings: Settings, book: ExperimentBook):
        self.connection = client_config(settings.kafka)
        self.topic = topic_name(settings.kafka.topic_prefix, "experiments")
        # The client insists on a group id; no group is joined (partitions are assigned) and nothing is committed.
        self.group = group_id(settings.kafka.topic_prefix, "assistant-experiments")
        self.book = book
        self.caught_up = threading.Event()

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer(
            {
                **self.connection,
                "group.id": self.group,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = self._partitions(consumer, stop)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            while not stop.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                error = msg.error()
                if error is None:
                    self._apply(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    partition = msg.partition()
                    if partition is not None:  # an end-of-partition event always names its partition
                        at_end.add(partition)
                    if at_end >= set(partitions):
                        self.caught_up.set()
                else:
                    log.warning("reading %s: %s", self.topic, error)
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, stop: threading.Event) -> list[int]:
        """The topic's partitions, waiting (and saying so once) while the topic does not exist."""
        warned = False
        while not stop.is_set():
            metadata = consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S).topics.get(self.topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if not warned:
                log.warning("topic %s is not there yet (`rlhf topics create`); serving without experiments meanwhile", self.topic)
                warned = True
            stop.wait(1.0)
        return []

    def _apply(self, msg: Message) -> None:
        try:
            step = parse_event(ExperimentEvent, msg.value()).root
        except EventValidationError as exc:
            # The topic has no DLQ: a record no experiment can be read from changes no routing.
            log.error("ignoring invalid experiment record %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            return
        self.book.apply(step)
