"""Producer SDK for chat apps: validated, sampled, keyed, idempotent events into Kafka.

    from sdk.client import FeedbackClient
    with FeedbackClient.from_settings(load_settings()) as client:
        client.interaction(user_id="u1", query=q, response=a, model_version="v1", latency_ms=120)
        client.feedback(interaction_id=..., user_id="u1", query=q, response=a, model_version="v1",
                        feedback_type="rating", rating=5)

Events are validated before anything is queued (bad input raises `EventValidationError` and
sends nothing), keyed by user id so one user's events stay ordered, and sampled per interaction
at `feedback.collection_rate` with a stable hash so every process makes the same choice.
Delivery failures are collected and raised from `flush()` (and so from the context manager).
"""

from __future__ import annotations

from typing import Any, TypeVar

from confluent_kafka import KafkaError, Message, Producer

from core.settings import Settings
from core.errors import DeliveryError
from core.hashing import stable_fraction
from schemas.topics import topic_name
from schemas import Event, ExposureEvent, FeedbackEvent, InteractionEvent, validate_event

PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    # Only failures come back as delivery reports: a Python callback per acknowledged event costs
    # about as much as the produce call itself, and success is what flush() returning means.
    "delivery.report.only.error": True,
}
POLL_EVERY = 256
E = TypeVar("E", InteractionEvent, FeedbackEvent)


def is_sampled(interaction_id: str, collection_rate: float) -> bool:
    """Whether this interaction's events are collected: the same answer in every process."""
    return collection_rate >= 1.0 or stable_fraction("collect", interaction_id) < collection_rate


class FeedbackClient:
    """Thread-safe producer of interaction, feedback and exposure events."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str = "", collection_rate: float = 1.0, **producer_config: Any):
        self._producer = Producer({"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **producer_config})
        self.topic_prefix = topic_prefix
        self.collection_rate = collection_rate
        self._topics: dict[str, str] = {}  # registry name -> prefixed name, checked once
        self._failures: list[str] = []
        self._failed = 0
        self._queued = 0

    @classmethod
    def from_settings(cls, settings: Settings, **producer_config: Any) -> "FeedbackClient":
        return cls(settings.kafka.bootstrap_servers, settings.kafka.topic_prefix, settings.feedback.collection_rate, **producer_config)

    @property
    def delivered(self) -> int:
        """Events the broker acknowledged so far: queued, minus failed, minus still in flight."""
        return self._queued - self._failed - len(self._producer)

    def sampled(self, interaction_id: str) -> bool:
        return is_sampled(interaction_id, self.collection_rate)

    def interaction(self, event: InteractionEvent | None = None, /, **fields: Any) -> InteractionEvent | None:
        return self._send_sampled(InteractionEvent, "interactions", event or fields)

    def feedback(self, event: FeedbackEvent | None = None, /, **fields: Any) -> FeedbackEvent | None:
        return self._send_sampled(FeedbackEvent, "feedback", event or fields)

    def _send_sampled(self, model: type[E], topic: str, event: E | dict[str, Any]) -> E | None:
        """Validate, then send only if the interaction is sampled (the same choice in every process)."""
        ev = validate_event(model, event)
        if not self.sampled(ev.interaction_id):  # type: ignore[attr-defined]
            return None
        self.send(topic, ev, key=ev.user_id)  # type: ignore[attr-defined]
        return ev

    def exposure(self, event: ExposureEvent | None = None, /, **fields: Any) -> ExposureEvent:
        # Exposures are never sampled: A/B analysis needs every assignment.
        ev = validate_event(ExposureEvent, event or fields)
        self.send("exposures", ev, key=ev.user_id)
        return ev

    def send(self, topic: str, event: Event, key: str | None) -> None:
        """Queue an already-validated event on a registry topic; blocks briefly if the local queue is full."""
        full_topic = self._topics.get(topic) or self._topics.setdefault(topic, topic_name(self.topic_prefix, topic))
        self.send_bytes(full_topic, event.to_bytes(), key)

    def send_bytes(self, full_topic: str, value: bytes, key: str | None) -> None:
        while True:
            try:
                self._producer.produce(full_topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # the local queue is full: let librdkafka drain it, then queue
                self._producer.poll(0.05)
        self._queued += 1
        if self._queued % POLL_EVERY == 0:  # serve (failure) callbacks without a syscall per event
            self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed += 1
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued event; raise DeliveryError if any was not acknowledged."""
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            failures.append(f"{remaining} events still queued after {timeout}s")
        if failures:
            raise DeliveryError(f"{len(failures)} delivery failures: " + "; ".join(failures[:5]))

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "FeedbackClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
