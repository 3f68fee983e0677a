"""ClickHouse sink (`rlhf sink run`): consumer group "sink" batches events into the analytics tables.

    rlhf sink run                  # embedded chdb under RLHF_HOME; dashboard on clickhouse.dashboard_port
    RLHF_CLICKHOUSE__URL=http://default:@host:8123/ rlhf sink run    # a ClickHouse server instead

At-least-once with idempotent effects: a batch (by `clickhouse.batch_rows` or
`clickhouse.batch_seconds`) is validated, inserted with Arrow, and only then are its offsets
committed. A crash between insert and commit re-delivers the batch; the warehouse skips ids it
already holds and the tables are ReplacingMergeTree on the event id, so nothing is lost or
counted twice. Records that fail their schema never go into a table; each gets one dead letter,
from the one process that owns its topic's DLQ (`TopicSpec.dlq_owner` in schemas/topics.py): the
sink writes the letters of the topics it owns, with topic/partition/offset and the reason, and
counts and skips the others' (bad feedback is the stream worker's to dead-letter, which it does
before any trainer sees it). The DLQ topics themselves are stored too (`dead_letters`), and a
background thread samples every consumer group's lag into `consumer_lag` (consumers/sink/lag.py),
so the dashboard shows both.

The sink takes an open `Warehouse` rather than opening one: in embedded mode only one process may
open the chdb path, so `rlhf sink run` serves the dashboard and `/sql` on the same warehouse.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from analytics.clickhouse import Warehouse
from analytics.errors import ClickHouseError
from analytics.tables import CONSUMER_LAG, ERASURES
from consumers.dead_letters import dead_letter_of
from consumers.sink.lag import SAMPLE_EVERY_S, lag_rows
from consumers.sink.rows import ROUTES
from core.errors import DeliveryError, EventValidationError
from core.kafka_clients import client_config
from core.kafka_messages import position
from core.redaction import PiiFound, Redactor
from core.settings import Settings
from schemas import DeadLetter, parse_event
from schemas.topics import CONSUMER_GROUPS, TOPICS, group_id, topic_name
from sdk.client import PRODUCER_DEFAULTS

log = logging.getLogger("rlhf.sink")

GROUP = CONSUMER_GROUPS["sink"]
# Topics without a DLQ of their own dead-letter into the feedback DLQ, the events' generic one.
DEFAULT_DLQ = "feedback-dlq"
ERASURES_ROUTE = "erasures"


@dataclass
class Batch:
    """Rows per table plus the next offset to commit per partition; ids seen once per batch."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    messages: int = 0
    started: float = 0.0

    def add(self, msg: Message, route: str | None = None, row: dict[str, Any] | None = None) -> None:
        """Record the message's offset; with a row, queue it unless its id is already queued."""
        if not self.messages:
            self.started = time.monotonic()
        self.messages += 1
        at = position(msg, offset_delta=1)
        self.offsets[(at.topic, at.partition)] = at.offset
        if route is None or row is None:
            return
        id_col = ROUTES[route].table.id_column
        if id_col is not None:
            key = (route, row[id_col])
            if key in self.seen:
                return
            self.seen.add(key)
        self.rows.setdefault(route, []).append(row)

    def due(self, max_rows: int, max_seconds: float) -> bool:
        return self.messages >= max_rows or (self.messages > 0 and time.monotonic() - self.started >= max_seconds)


@dataclass
class SinkStats:
    batches: int = 0
    messages: int = 0
    inserted: int = 0
    dead_letters: int = 0
    skipped_invalid: int = 0  # bad records of topics whose DLQ another process owns: counted, not dead-lettered


class Sink:
    """The consume -> insert -> commit loop. `run(stop)` returns when `stop` is set."""

    def __init__(self, settings: Settings, warehouse: Warehouse, consumer_config: Mapping[str, Any] | None = None):
        self.settings = settings
        self.warehouse = warehouse
        self.stats = SinkStats()
        self._prefix = settings.kafka.topic_prefix
        self._topics = {topic_name(self._prefix, name): name for name in ROUTES}
        self._consumer = Consumer(
            {
                **client_config(settings.kafka),
                "group.id": group_id(settings.kafka.topic_prefix, GROUP),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # A restarted sink should take its partitions back quickly, not after the default 45 s.
                "session.timeout.ms": 10_000,
                **(consumer_config or {}),
            }
        )
        self._dlq = Producer({**client_config(settings.kafka), **PRODUCER_DEFAULTS})
        self._batch = Batch()
        self._dlq_failures: list[str] = []
        self._erased = warehouse.erased_users()
        self._redactor = Redactor.from_settings(settings.privacy)

    def run(self, stop: threading.Event) -> None:
        c = self.settings.clickhouse
        self._consumer.subscribe(list(self._topics), on_revoke=self._on_revoke, on_lost=self._on_lost)
        threading.Thread(target=self._sample_lag, args=(stop,), daemon=True, name="lag-sampler").start()
        try:
            while not stop.is_set():
                for msg in self._consumer.consume(num_messages=min(c.batch_rows, 10_000), timeout=min(c.batch_seconds, 0.5)):
                    self._take(msg)
                if self._batch.due(c.batch_rows, c.batch_seconds):
                    self.flush()
            self.flush()
        finally:
            self._consumer.close()
            self._dlq.flush(10)

    def _sample_lag(self, stop: threading.Event) -> None:
        """At start and every SAMPLE_EVERY_S, each consumer group's lag into `consumer_lag` (a view for
        people: a failed sample is logged and the next one tries again)."""
        while True:
            try:
                self.warehouse.insert_new(CONSUMER_LAG, CONSUMER_LAG.to_arrow(lag_rows(self.settings)))
            except Exception as exc:
                log.warning("consumer lag not sampled: %s", exc)
            if stop.wait(SAMPLE_EVERY_S):
                return

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
            return
        name = self._topics[position(msg).topic]
        route = ROUTES[name]
        try:
            event = self._private(parse_event(route.model, msg.value()))
        except (EventValidationError, PiiFound) as exc:
            owner = TOPICS[name].dlq_owner
            if owner == "sink":
                self._dead_letter(msg, name, str(exc))
            else:
                self.stats.skipped_invalid += 1
                log.info("skipping invalid %s[%d]@%d (%s dead-letters it): %s", name, msg.partition(), msg.offset(), owner, exc)
            self._batch.add(msg)
            return
        self._batch.add(msg, name, route.row(event, self.settings))

    def _private(self, event: Any) -> Any:
        """What may be stored of `event` under `privacy.mode`: its text redacted (or PiiFound, in mode
        drop), a dead letter's raw text redacted. The stream app counts the PII it finds; the sink
        redacts again because events reach it straight from the topics, not through the stream app."""
        if isinstance(event, DeadLetter):
            return event.model_copy(update={"value": self._redactor.kept(event.value)})
        return self._redactor.apply(event).event

    def _dead_letter(self, msg: Message, name: str, reason: str) -> None:
        letter = dead_letter_of(msg, f"sink: {reason}", self._redactor)
        self._dlq.produce(
            topic_name(self._prefix, TOPICS[name].dlq or DEFAULT_DLQ), value=letter.to_bytes(), on_delivery=self._on_dlq_delivery
        )
        self._dlq.poll(0)
        self.stats.dead_letters += 1

    def _on_dlq_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._dlq_failures.append(err.str())

    def flush(self) -> None:
        """Insert the batch, make the dead letters durable, then commit its offsets."""
        batch, self._batch = self._batch, Batch()
        if not batch.messages:
            return
        self._forget(batch.rows.pop(ERASURES_ROUTE, []))
        for name, rows in batch.rows.items():
            table = ROUTES[name].table
            arrow = table.to_arrow([r for r in rows if r.get("user_id") not in self._erased])
            self.stats.inserted += _with_retries(functools.partial(self.warehouse.insert_new, table, arrow))
        remaining, failures = self._dlq.flush(30), self._dlq_failures
        self._dlq_failures = []
        if remaining or failures:
            raise DeliveryError(f"dead letters not acknowledged ({remaining} queued, errors: {failures[:3]}); not committing")
        self.stats.batches += 1
        self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()], asynchronous=False)
        self.stats.messages += batch.messages
        log.info("batch %d: %d messages, %d rows stored", self.stats.batches, batch.messages, self.stats.inserted)

    def _forget(self, erasures: list[dict[str, Any]]) -> None:
        """Erasures first in every batch: recorded, the users' stored rows deleted, and none of their
        events stored again (this batch's included), also after a restart (`erased_users` at start)."""
        if not erasures:
            return
        _with_retries(lambda: self.warehouse.insert_new(ERASURES, ERASURES.to_arrow(erasures)))
        users = sorted({r["user_id"] for r in erasures})
        _with_retries(lambda: self.warehouse.forget_users(users))
        self._erased.update(users)
        log.info("forgot %d users: their rows are deleted and no new ones are stored", len(users))

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Commit what we hold for partitions we are about to lose, so the next owner starts after it.
        self.flush()

    def _on_lost(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Offsets of lost partitions can no longer be committed; the next owner re-delivers them
        # and the id check makes that harmless.
        self._batch = Batch()


def _with_retries(insert: Callable[[], int], attempts: int = 3, backoff_s: float = 1.0) -> int:
    """A server may blip; after the last attempt the error propagates and the batch is not committed."""
    attempt = 0
    while True:
        try:
            return insert()
        except Exception as exc:
            attempt += 1
            if attempt >= attempts:
                raise ClickHouseError(f"insert failed after {attempts} attempts: {exc}") from exc
            log.warning("insert failed (%s); retrying", exc)
            time.sleep(backoff_s * 2 ** (attempt - 1))
