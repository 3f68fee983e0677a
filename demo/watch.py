"""What the driver reads of the loop as it happens: the trainer's status, the versions published
and the experiments started and decided (no consumer group, every topic from the start), so a
round's outcome is what the services decided, never what the driver guessed."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from core.kafka_clients import client_config
from core.settings import Settings
from schemas import ModelPublished, TrainingStatus, parse_event
from schemas.experiments import ExperimentDecided, ExperimentEvent, ExperimentStarted
from schemas.topics import topic_name


class StatusWatch:
    """Reads training-status, model-published and experiments as they happen (no group, from the start)."""

    TOPICS = ("training-status", "model-published", "experiments")

    def __init__(self, settings: Settings):
        self.consumer = Consumer({**client_config(settings.kafka), "group.id": "demo-driver", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic_name(settings.kafka.topic_prefix, t), 0, 0) for t in self.TOPICS])
        self.training: TrainingStatus | None = None
        self.published: list[ModelPublished] = []
        self.started: dict[str, ExperimentStarted] = {}
        self.decided: dict[str, ExperimentDecided] = {}

    def poll(self) -> None:
        for msg in self.consumer.consume(500, timeout=0.05):
            topic = msg.topic()
            if msg.error() or topic is None:
                continue
            if topic.endswith("model-published"):
                self.published.append(parse_event(ModelPublished, msg.value()))
            elif topic.endswith("experiments"):
                event = parse_event(ExperimentEvent, msg.value()).root
                (self.started if isinstance(event, ExperimentStarted) else self.decided).setdefault(event.experiment_id, event)  # type: ignore[arg-type]
            else:
                self.training = parse_event(TrainingStatus, msg.value())

    def open_experiment(self) -> str | None:
        return next((i for i in self.started if i not in self.decided), None)

    def close(self) -> None:
        self.consumer.close()
