"""Writing the loop's own events (training status, published models, dead letters) and knowing
they arrived.

A consumer that commits its input offset after emitting must be sure the emitted events are
durable first: otherwise a broker hiccup between the two loses the event while the input is
already marked done. So `emit` waits for the broker's acknowledgement and raises
`DeliveryError` when it does not come; the caller then leaves its input uncommitted.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, Producer

from core.errors import DeliveryError
from core.kafka_clients import client_config
from core.settings import Settings
from schemas import DeadLetter, Event, TrainingStatus, TrainTrigger
from schemas.topics import topic_name
from sdk.client import PRODUCER_DEFAULTS

ACK_TIMEOUT_S = 30.0


class EventEmitter:
    """Produces events keyed as the topic registry says, one acknowledged write at a time."""

    def __init__(self, settings: Settings):
        self._producer = Producer({**client_config(settings.kafka), **PRODUCER_DEFAULTS, "linger.ms": 0})
        self._prefix = settings.kafka.topic_prefix

    def emit(self, topic: str, event: Event | DeadLetter, key: str | None = None) -> None:
        """Write `event` to `topic` and return once the broker has it; raise DeliveryError otherwise."""
        failures: list[KafkaError] = []
        name = topic_name(self._prefix, topic)
        self._producer.produce(
            name, value=event.to_bytes(), key=key, on_delivery=lambda err, _msg: failures.append(err) if err else None
        )
        unsent = self._producer.flush(ACK_TIMEOUT_S)
        if unsent or failures:
            reason = failures[0] if failures else f"no acknowledgement within {ACK_TIMEOUT_S:.0f} s"
            raise DeliveryError(f"{type(event).__name__} to {name}: {reason}")

    def status(
        self, trigger: TrainTrigger, state: str, stage: str = "", message: str = "", metrics: dict[str, float] | None = None
    ) -> None:
        event = TrainingStatus(
            trigger_id=trigger.trigger_id,
            policy=trigger.policy,
            state=state,
            stage=stage,
            message=message[:4000],
            metrics=metrics or {},
        )
        self.emit("training-status", event, trigger.policy)
