"""Producer SDK for chat apps: validated, sampled, keyed, idempotent events into Kafka.

    from sdk.client import FeedbackClient
    with FeedbackClient.from_settings(load_settings()) as client:
        client.interaction(user_id="u1", query=q, response=a, model_version="v1", latency_ms=120)
        client.interaction(user_id="u1", messages=messages, response=a, model_version="v1", latency_ms=120)
        client.feedback(interaction_id=..., user_id="u1", query=q, response=a, model_version="v1",
                        feedback_type="rating", rating=5)

A chat app passes the conversation it sent its model as `messages` (OpenAI's shape: the system
prompt, the earlier turns, the user's question last) instead of `query`: it is read as the assistant
reads it (schemas/messages.py) into the event's `context`, `query`, `turn_index` and, unless given,
a `conversation_id` derived from the user, system prompt and first question (the same for every turn).

Events are validated before anything is queued (bad input raises `EventValidationError` and
sends nothing), keyed by user id so one user's events stay ordered, and sampled per interaction
at `feedback.collection_rate` with a stable hash so every process makes the same choice.

A send never waits on Kafka (sdk/pump.py): it is a non-blocking produce, or, while the broker is
unreachable or librdkafka's queue is full, an append to a durable local spool (sdk/spool.py, under
`<home>/spool`) that is re-sent in order, with the same event ids, once the broker answers; a
restarted app re-sends what its predecessor spooled. `flush()` returns once every event accepted
before it is acknowledged by Kafka or written to the spool, and raises `DeliveryError` if events
were lost since the previous flush (refused by the broker, or dropped at the spool's cap by the
`producer.spool_on_full` policy). `stats()` and the `on_notice` callback expose the counters.

What a kill of the process loses: events accepted since the last `flush()` that were still in
librdkafka's queue (direct sends not yet acknowledged) or in the in-memory inbox (spooled sends
the pump had not yet written, at most ~5 ms of them). Anything written to the spool survives a
process kill whatever the fsync policy; the policy only decides what a machine crash loses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.errors import DeliveryError, EventValidationError
from core.hashing import stable_fraction
from core.kafka_clients import client_config
from core.settings import ProducerSettings, Settings, data_home
from schemas import Event, ExposureEvent, FeedbackEvent, InteractionEvent, validate_event
from schemas.messages import QuestionInContext
from schemas.topics import topic_name
from sdk import KAFKA_LOG
from sdk.pump import Notice, ProducerStats, Pump

PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    # Only failures come back as delivery reports: a Python callback per acknowledged event costs
    # about as much as the produce call itself, and success is what flush() returning means.
    "delivery.report.only.error": True,
    # Reconnect to a returning broker within a second, not librdkafka's default 10 s backoff.
    "reconnect.backoff.max.ms": 1000,
}
E = TypeVar("E", InteractionEvent, FeedbackEvent)


def with_conversation(fields: dict[str, Any]) -> dict[str, Any]:
    """Event fields with `messages` read into the conversation fields (`context`, `query`, `turn_index`,
    `conversation_id`); without `messages`, as given. EventValidationError naming `messages.N...`."""
    if "messages" not in fields:
        return fields
    rest = {k: v for k, v in fields.items() if k != "messages"}
    if clash := sorted({"query", "context", "turn_index"} & rest.keys()):
        raise EventValidationError(f"messages: given with {', '.join(clash)}; send the conversation one way")
    asked = QuestionInContext.of(fields["messages"])
    return {**rest, **asked.event_fields(str(rest.get("user_id", "")), rest.get("conversation_id"))}


def is_sampled(interaction_id: str, collection_rate: float) -> bool:
    """Whether this interaction's events are collected: the same answer in every process."""
    return collection_rate >= 1.0 or stable_fraction("collect", interaction_id) < collection_rate


class FeedbackClient:
    """Thread-safe producer of interaction, feedback and exposure events; sends never block."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic_prefix: str = "",
        collection_rate: float = 1.0,
        *,
        options: ProducerSettings | None = None,
        spool_dir: Path | None = None,
        on_notice: Callable[[Notice], None] | None = None,
        **producer_config: Any,
    ):
        options = options or ProducerSettings()
        self.topic_prefix = topic_prefix
        self.collection_rate = collection_rate
        self._topics: dict[str, str] = {}  # registry name -> prefixed name, checked once
        spool_dir = spool_dir or options.spool_dir or data_home() / "spool"
        self._pump = Pump(
            {"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **producer_config}, options, spool_dir, on_notice
        )
        self._losses_seen = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, on_notice: Callable[[Notice], None] | None = None, **producer_config: Any
    ) -> FeedbackClient:
        security = {k: v for k, v in client_config(settings.kafka, KAFKA_LOG).items() if k != "bootstrap.servers"}
        return cls(
            settings.kafka.bootstrap_servers,
            settings.kafka.topic_prefix,
            settings.feedback.collection_rate,
            options=settings.producer,
            spool_dir=settings.producer.spool_dir or settings.home / "spool",
            on_notice=on_notice,
            **security,
            **producer_config,
        )

    @property
    def delivered(self) -> int:
        """Sends the broker acknowledged so far (a re-sent event counts each time it is acknowledged)."""
        return self._pump.delivered

    def stats(self) -> ProducerStats:
        """Counters: sent, spooled, re-sent, failed, dropped, spool depth, what sits in memory."""
        return self._pump.stats()

    def sampled(self, interaction_id: str) -> bool:
        return is_sampled(interaction_id, self.collection_rate)

    def interaction(self, event: InteractionEvent | None = None, /, **fields: Any) -> InteractionEvent | None:
        """Send an interaction: an event, or its fields, with `messages` (OpenAI-style) in place of `query` if you like."""
        return self._send_sampled(InteractionEvent, "interactions", event or with_conversation(fields))

    def feedback(self, event: FeedbackEvent | None = None, /, **fields: Any) -> FeedbackEvent | None:
        """Send feedback: an event, or its fields, with `messages` in place of `query` (the interaction's conversation)."""
        return self._send_sampled(FeedbackEvent, "feedback", event or with_conversation(fields))

    def _send_sampled(self, model: type[E], topic: str, event: E | dict[str, Any]) -> E | None:
        """Validate, then send only if the interaction is sampled (the same choice in every process)."""
        ev = validate_event(model, event)
        if not self.sampled(ev.interaction_id):
            return None
        self.send(topic, ev, key=ev.user_id)
        return ev

    def exposure(self, event: ExposureEvent | None = None, /, **fields: Any) -> ExposureEvent:
        # Exposures are never sampled: A/B analysis needs every assignment.
        ev = validate_event(ExposureEvent, event or fields)
        self.send("exposures", ev, key=ev.user_id)
        return ev

    def send(self, topic: str, event: Event, key: str | None) -> None:
        """Queue an already-validated event on a registry topic; never waits on Kafka."""
        full_topic = self._topics.get(topic) or self._topics.setdefault(topic, topic_name(self.topic_prefix, topic))
        self._pump.send(full_topic, event.to_bytes(), key)

    def send_bytes(self, full_topic: str, value: bytes, key: str | None) -> None:
        self._pump.send(full_topic, value, key)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event sent so far is acknowledged or spooled; raise DeliveryError if events
        were lost since the previous flush (refused by the broker, or dropped at the spool's cap)."""
        self._pump.flush(timeout)
        if self._pump.refused:
            raise DeliveryError(f"events are being spooled, not delivered: {self._pump.refused}")
        stats = self._pump.stats()
        lost, self._losses_seen = stats.failed + stats.dropped - self._losses_seen, stats.failed + stats.dropped
        if lost:
            detail = self._pump.recent_failures() or f"spool policy {self._pump.o.spool_on_full}"
            raise DeliveryError(
                f"{lost} events lost since the last flush "
                f"({stats.failed} refused by Kafka, {stats.dropped} dropped in all): {detail}"
            )

    def wait_drained(self, timeout: float) -> bool:
        """Wait until nothing is spooled or in memory and sends go straight to Kafka again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self._pump.stats()
            if s.mode == "direct" and not s.spool_depth and not s.inbox:
                self.flush(max(deadline - time.monotonic(), 0.1))
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Deliver or spool everything (a later process re-sends the spool), then stop."""
        try:
            self.flush(timeout)
        finally:
            self._pump.close(timeout)

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
