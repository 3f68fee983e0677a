"""Trainer consumer (`rlhf trainer run`): group "trainers" on the train-trigger topic.

For each trigger the job (consumers/trainer/job.py) runs in a worker thread while this loop
keeps polling with the partition paused, so a long training never gets the consumer thrown out
of its group. The offset is committed only after the outcome is recorded (published, rejected,
or dead-lettered): at-least-once. A re-delivered trigger is recognised by its trigger id in the
registry and is not trained twice. Retryable failures back off and retry a bounded number of
times, then the trigger goes to the DLQ with the error. SIGTERM abandons the current job without
committing, so another trainer (or this one, restarted) retries it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from core.settings import Settings
from core.errors import EventValidationError, TrainingError
from sdk.client import PRODUCER_DEFAULTS
from schemas.topics import group_id, topic_name
from schemas import DeadLetter, Event, TrainingStatus, TrainTrigger, parse_event

log = logging.getLogger("rlhf.trainer")

GROUP = "trainers"


class StatusEmitter:
    """Writes TrainingStatus / ModelPublished events, keyed by policy, and waits for the ack."""

    def __init__(self, settings: Settings):
        self._producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, **PRODUCER_DEFAULTS, "linger.ms": 0})
        self._prefix = settings.kafka.topic_prefix

    def emit(self, topic: str, event: Event, key: str) -> None:
        self._producer.produce(topic_name(self._prefix, topic), value=event.to_bytes(), key=key)
        self._producer.flush(30)

    def status(self, trigger: TrainTrigger, state: str, stage: str = "", message: str = "", metrics: dict[str, float] | None = None) -> None:
        event = TrainingStatus(trigger_id=trigger.trigger_id, policy=trigger.policy, state=state, stage=stage, message=message[:4000], metrics=metrics or {})
        self.emit("training-status", event, trigger.policy)

    def dead_letter(self, msg: Message, reason: str) -> None:
        letter = DeadLetter(
            reason=reason[:4000], origin_topic=msg.topic(), origin_partition=msg.partition(), origin_offset=msg.offset(),
            key=msg.key().decode(errors="replace") if msg.key() else None, value=(msg.value() or b"").decode(errors="replace"),
        )  # fmt: skip
        self._producer.produce(topic_name(self._prefix, "train-triggers-dlq"), value=letter.to_bytes())
        self._producer.flush(30)


Job = Callable[[TrainTrigger, StatusEmitter, threading.Event], None]


@dataclass
class RetryPolicy:
    attempts: int = 3
    first_backoff_s: float = 2.0

    def backoff(self, attempt: int) -> float:
        return self.first_backoff_s * 2**attempt


def handle_trigger(msg: Message, job: Job, emitter: StatusEmitter, stop: threading.Event, retry: RetryPolicy) -> bool:
    """Run one trigger to an outcome. True if the outcome is recorded (commit), False if abandoned."""
    try:
        trigger = parse_event(TrainTrigger, msg.value())
    except EventValidationError as exc:
        emitter.dead_letter(msg, str(exc))
        return True
    for attempt in range(retry.attempts):
        try:
            job(trigger, emitter, stop)
            return True
        except TrainingError as exc:  # bad data: retrying cannot help
            log.error("trigger %s failed permanently: %s", trigger.trigger_id, exc)
            emitter.status(trigger, "failed", message=str(exc))
            emitter.dead_letter(msg, f"TrainingError: {exc}")
            return True
        except Exception as exc:
            if stop.is_set():
                return False
            log.exception("trigger %s attempt %d/%d failed", trigger.trigger_id, attempt + 1, retry.attempts)
            if attempt + 1 == retry.attempts:
                emitter.status(trigger, "failed", message=f"{type(exc).__name__}: {exc}")
                emitter.dead_letter(msg, f"failed after {retry.attempts} attempts: {type(exc).__name__}: {exc}")
                return True
            emitter.status(trigger, "progress", stage="retry", message=f"attempt {attempt + 1} failed: {exc}; retrying")
            if stop.wait(retry.backoff(attempt)):
                return False
    return False


def run(settings: Settings, job: Job, retry: RetryPolicy = RetryPolicy(), stop: threading.Event | None = None) -> None:
    """Consume triggers until `stop` is set (SIGTERM/SIGINT set it when run from the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group_id(settings.kafka.topic_prefix, GROUP), "client.id": "rlhf-trainer",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000,
    })  # fmt: skip
    consumer.subscribe([topic_name(settings.kafka.topic_prefix, "train-triggers")])
    emitter = StatusEmitter(settings)
    current: tuple[Message, threading.Thread, list[bool]] | None = None
    log.info("trainer consuming %s", topic_name(settings.kafka.topic_prefix, "train-triggers"))
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)  # keeps the group membership alive while a job runs
            if current is not None:
                current = _finish_if_done(consumer, current)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            partition = TopicPartition(msg.topic(), msg.partition())
            consumer.pause([partition])  # one job at a time; un-fetched triggers wait on the broker
            outcome: list[bool] = []
            worker = threading.Thread(target=lambda m=msg, o=outcome: o.append(handle_trigger(m, job, emitter, stop, retry)), daemon=True)
            worker.start()
            current = (msg, worker, outcome)
    finally:
        if current is not None and current[1].is_alive():
            log.warning("shutting down mid-job: trigger at offset %d left uncommitted for retry", current[0].offset())
            current[1].join(timeout=5)
        consumer.close()


def _finish_if_done(consumer: Consumer, current: tuple[Message, threading.Thread, list[bool]]) -> tuple[Message, threading.Thread, list[bool]] | None:
    msg, worker, outcome = current
    if worker.is_alive():
        return current
    partition = TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)
    if outcome and outcome[0]:
        consumer.commit(offsets=[partition], asynchronous=False)
    else:  # abandoned: rewind so the trigger is consumed again
        consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
    consumer.resume([TopicPartition(msg.topic(), msg.partition())])
    return None

