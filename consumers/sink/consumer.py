"""ClickHouse sink (`rlhf sink run`): consumer group "sink" batches events into the analytics tables.

    rlhf sink run                  # embedded chdb under RLHF_HOME; dashboard on clickhouse.dashboard_port
    RLHF_CLICKHOUSE__URL=http://default:@host:8123/ rlhf sink run    # a ClickHouse server instead

At-least-once with idempotent effects: a batch (by `clickhouse.batch_rows` or
`clickhouse.batch_seconds`) is validated, inserted with Arrow, and only then are its offsets
committed. A crash between insert and commit re-delivers the batch; the warehouse skips ids it
already holds and the tables are ReplacingMergeTree on the event id, so nothing is lost or
counted twice. Records that fail their schema go to the DLQ with topic/partition/offset and the
reason, never into a table.

In embedded mode this process owns the chdb path, so it also serves the dashboard and `/sql`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel

from analytics.clickhouse import ID_COLUMNS, Warehouse, open_warehouse
from analytics.errors import ClickHouseError
from core.settings import Settings
from core.errors import DeliveryError, EventValidationError
from sdk.client import PRODUCER_DEFAULTS
from schemas.topics import TOPICS, group_id, topic_name
from schemas import (
    DeadLetter,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    TrainingStatus,
    WindowMetrics,
    parse_event,
)

log = logging.getLogger("rlhf.sink")

GROUP = "sink"
# Test hook: SIGKILL this process after the Nth batch's inserts, before its commit.
KILL_AFTER_INSERT_ENV = "SINK_TEST_KILL_AFTER_INSERT"
# Topics without a DLQ of their own dead-letter into the feedback DLQ, the events' generic one.
DEFAULT_DLQ = "feedback-dlq"

_TS = pa.timestamp("ms", tz="UTC")
_STR = pa.string()
_METRICS = pa.map_(pa.string(), pa.float64())


def _ab(event: InteractionEvent | FeedbackEvent | ExposureEvent | WindowMetrics) -> dict[str, Any]:
    return {"model_version": event.model_version, "experiment": event.experiment or "", "variant": event.variant or ""}


def interaction_row(e: InteractionEvent, _: Settings) -> dict[str, Any]:
    return {"interaction_id": e.interaction_id, "user_id": e.user_id, **_ab(e), "latency_ms": e.latency_ms,
            "query": e.query, "response": e.response, "ts": e.timestamp}  # fmt: skip


def feedback_row(e: FeedbackEvent, settings: Settings) -> dict[str, Any]:
    return {"event_id": e.event_id, "interaction_id": e.interaction_id, "user_id": e.user_id, **_ab(e), "policy": e.policy,
            "feedback_type": e.feedback_type, "rating": e.rating, "correction": e.correction or "", "positive": int(e.is_positive(settings.feedback.min_rating)),
            "reward": e.reward, "query": e.query, "response": e.response, "metadata": json.dumps(e.metadata),
            "ts": e.timestamp}  # fmt: skip


def exposure_row(e: ExposureEvent, _: Settings) -> dict[str, Any]:
    return {"exposure_id": e.exposure_id, "user_id": e.user_id, **_ab(e), "interaction_id": e.interaction_id or "", "ts": e.timestamp}


def metrics_row(e: WindowMetrics, _: Settings) -> dict[str, Any]:
    return {"window_start": e.window_start, "window_end": e.window_end, **_ab(e), "feedback_type": e.feedback_type,
            "count": e.count, "rating_sum": e.rating_sum, "rating_count": e.rating_count, "ts": e.timestamp}  # fmt: skip


def status_row(e: TrainingStatus, _: Settings) -> dict[str, Any]:
    return {"trigger_id": e.trigger_id, "policy": e.policy, "state": e.state, "stage": e.stage, "message": e.message,
            "metrics": list(e.metrics.items()), "ts": e.timestamp}  # fmt: skip


def published_row(e: ModelPublished, _: Settings) -> dict[str, Any]:
    return {"version": e.version, "policy": e.policy, "trigger_id": e.trigger_id, "parent_version": e.parent_version or "",
            "reward_model_version": e.reward_model_version or "", "decision": e.decision, "metrics": list(e.metrics.items()),
            "reason": e.reason, "ts": e.timestamp}  # fmt: skip


@dataclass(frozen=True)
class Route:
    """Where one topic's events go: the schema they must pass, the table, and the row they become."""

    model: type[BaseModel]
    table: str
    row: Callable[[Any, Settings], dict[str, Any]]
    schema: pa.Schema


_AB_FIELDS = [("model_version", _STR), ("experiment", _STR), ("variant", _STR)]

ROUTES: Mapping[str, Route] = {
    "interactions": Route(InteractionEvent, "interactions", interaction_row, pa.schema(
        [("interaction_id", _STR), ("user_id", _STR), *_AB_FIELDS, ("latency_ms", pa.float64()), ("query", _STR),
         ("response", _STR), ("ts", _TS)])),
    "feedback": Route(FeedbackEvent, "feedback", feedback_row, pa.schema(
        [("event_id", _STR), ("interaction_id", _STR), ("user_id", _STR), *_AB_FIELDS, ("policy", _STR), ("feedback_type", _STR),
         ("rating", pa.uint8()), ("correction", _STR), ("positive", pa.uint8()), ("reward", pa.float64()), ("query", _STR),
         ("response", _STR), ("metadata", _STR), ("ts", _TS)])),
    "exposures": Route(ExposureEvent, "exposures", exposure_row, pa.schema(
        [("exposure_id", _STR), ("user_id", _STR), *_AB_FIELDS, ("interaction_id", _STR), ("ts", _TS)])),
    "metrics": Route(WindowMetrics, "metrics", metrics_row, pa.schema(
        [("window_start", _TS), ("window_end", _TS), *_AB_FIELDS, ("feedback_type", _STR), ("count", pa.uint64()),
         ("rating_sum", pa.uint64()), ("rating_count", pa.uint64()), ("ts", _TS)])),
    "training-status": Route(TrainingStatus, "training_status", status_row, pa.schema(
        [("trigger_id", _STR), ("policy", _STR), ("state", _STR), ("stage", _STR), ("message", _STR), ("metrics", _METRICS),
         ("ts", _TS)])),
    "model-published": Route(ModelPublished, "model_published", published_row, pa.schema(
        [("version", _STR), ("policy", _STR), ("trigger_id", _STR), ("parent_version", _STR), ("reward_model_version", _STR),
         ("decision", _STR), ("metrics", _METRICS), ("reason", _STR), ("ts", _TS)])),
}  # fmt: skip


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
        self.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if route is None or row is None:
            return
        id_col = ID_COLUMNS.get(ROUTES[route].table)
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


class Sink:
    """The consume -> insert -> commit loop. `run(stop)` returns when `stop` is set."""

    def __init__(self, settings: Settings, warehouse: Warehouse, consumer_config: Mapping[str, Any] | None = None):
        self.settings = settings
        self.warehouse = warehouse
        self.stats = SinkStats()
        self._prefix = settings.kafka.topic_prefix
        self._topics = {topic_name(self._prefix, name): name for name in ROUTES}
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group_id(settings.kafka.topic_prefix, GROUP), "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            # A restarted sink should take its partitions back quickly, not after the default 45 s.
            "session.timeout.ms": 10_000, **(consumer_config or {}),
        })  # fmt: skip
        self._dlq = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, **PRODUCER_DEFAULTS})
        self._batch = Batch()
        self._dlq_failures: list[str] = []
        self._kill_after = int(os.environ.get(KILL_AFTER_INSERT_ENV, "0"))

    def run(self, stop: threading.Event) -> None:
        c = self.settings.clickhouse
        self._consumer.subscribe(list(self._topics), on_revoke=self._on_revoke, on_lost=self._on_lost)
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

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
            return
        name = self._topics[msg.topic()]
        route = ROUTES[name]
        try:
            event = parse_event(route.model, msg.value())
        except EventValidationError as exc:
            self._dead_letter(msg, name, str(exc))
            self._batch.add(msg)
            return
        self._batch.add(msg, name, route.row(event, self.settings))

    def _dead_letter(self, msg: Message, name: str, reason: str) -> None:
        letter = DeadLetter(
            reason=f"sink: {reason}"[:4000], origin_topic=msg.topic(), origin_partition=msg.partition(), origin_offset=msg.offset(),
            key=msg.key().decode(errors="replace") if msg.key() else None, value=(msg.value() or b"").decode(errors="replace"),
        )  # fmt: skip
        self._dlq.produce(topic_name(self._prefix, TOPICS[name].dlq or DEFAULT_DLQ), value=letter.to_bytes(), on_delivery=self._on_dlq_delivery)
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
        for name, rows in batch.rows.items():
            route = ROUTES[name]
            arrow = pa.Table.from_pylist(rows, schema=route.schema)
            self.stats.inserted += _with_retries(lambda: self.warehouse.insert_new(route.table, arrow))
        remaining, failures = self._dlq.flush(30), self._dlq_failures
        self._dlq_failures = []
        if remaining or failures:
            raise DeliveryError(f"dead letters not acknowledged ({remaining} queued, errors: {failures[:3]}); not committing")
        self.stats.batches += 1
        if self._kill_after and self.stats.batches >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()], asynchronous=False)
        self.stats.messages += batch.messages
        log.info("batch %d: %d messages, %d rows stored", self.stats.batches, batch.messages, self.stats.inserted)

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


def run_sink(settings: Settings, stop: threading.Event | None = None, dashboard: bool = True) -> SinkStats:
    """Open the warehouse, serve the dashboard on it (same process, so embedded chdb works) and run the sink.

    SIGTERM / SIGINT stop it cleanly (the last batch is inserted and committed) when called from
    the main thread.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    warehouse = open_warehouse(settings)
    server = None
    try:
        if dashboard:
            from analytics.dashboard import serve_dashboard

            server = serve_dashboard(warehouse, settings)
            print(f"dashboard: {server.url}", flush=True)
        sink = Sink(settings, warehouse)
        print(f"sink: group {GROUP!r} on {settings.kafka.bootstrap_servers}, ClickHouse {warehouse.mode}", flush=True)
        sink.run(stop)
        return sink.stats
    finally:
        if server is not None:
            server.stop()
        warehouse.close()
