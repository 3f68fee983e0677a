"""Trainer consumer (`rlhf trainer run`): group "trainers" on the train-trigger topic.

For each trigger the job (consumers/trainer/job.py) runs in a worker thread while this loop
keeps polling with its partitions paused (one job at a time, any number of partitions), so a
long training never gets the consumer thrown out of its group. The offset is committed only
after the outcome is recorded (published, rejected, or dead-lettered) and the broker has
acknowledged its events: at-least-once. A re-delivered trigger is recognised by its trigger id
in the registry and is not trained twice. Retryable failures back off and retry a bounded number of
times, then the trigger goes to the DLQ with the error. SIGTERM abandons the current job without
committing, so another trainer (or this one, restarted) retries it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumers.dead_letters import dead_letter_of
from consumers.emitter import EventEmitter
from core.errors import DeliveryError, EventValidationError, TrainingError
from core.kafka_clients import client_config
from core.kafka_messages import position
from core.settings import Settings
from schemas import TrainTrigger, parse_event
from schemas.topics import CONSUMER_GROUPS, group_id, topic_name

log = logging.getLogger("rlhf.trainer")

GROUP = CONSUMER_GROUPS["trainer"]
Job = Callable[[TrainTrigger, EventEmitter, threading.Event], None]


def dead_letter(emitter: EventEmitter, msg: Message, reason: str) -> None:
    emitter.emit("train-triggers-dlq", dead_letter_of(msg, reason))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    first_backoff_s: float = 2.0

    def backoff(self, attempt: int) -> float:
        return self.first_backoff_s * 2**attempt


def handle_trigger(msg: Message, job: Job, emitter: EventEmitter, stop: threading.Event, retry: RetryPolicy) -> bool:
    """Run one trigger to an outcome. True if the outcome is recorded (commit), False if abandoned
    or if the broker did not acknowledge the outcome's events (the trigger is then consumed again)."""
    try:
        return _run_to_outcome(msg, job, emitter, stop, retry)
    except DeliveryError as exc:
        log.error("trigger at offset %d: outcome not acknowledged (%s); left uncommitted for retry", msg.offset(), exc)
        stop.wait(retry.first_backoff_s)
        return False


def _run_to_outcome(msg: Message, job: Job, emitter: EventEmitter, stop: threading.Event, retry: RetryPolicy) -> bool:
    try:
        trigger = parse_event(TrainTrigger, msg.value())
    except EventValidationError as exc:
        dead_letter(emitter, msg, str(exc))
        return True
    for attempt in range(retry.attempts):
        try:
            job(trigger, emitter, stop)
            return True
        except TrainingError as exc:  # bad data: retrying cannot help
            log.error("trigger %s failed permanently: %s", trigger.trigger_id, exc)
            emitter.status(trigger, "failed", message=str(exc))
            dead_letter(emitter, msg, f"TrainingError: {exc}")
            return True
        except Exception as exc:
            if stop.is_set():
                return False
            log.exception("trigger %s attempt %d/%d failed", trigger.trigger_id, attempt + 1, retry.attempts)
            if attempt + 1 == retry.attempts:
                emitter.status(trigger, "failed", message=f"{type(exc).__name__}: {exc}")
                dead_letter(emitter, msg, f"failed after {retry.attempts} attempts: {type(exc).__name__}: {exc}")
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
    consumer = Consumer(
        {
            **client_config(settings.kafka),
            "group.id": group_id(settings.kafka.topic_prefix, GROUP),
            "client.id": "rlhf-trainer",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # A trainer joining or dying moves only the partitions that must move: a pool's other
            # trainers keep theirs, and with them the jobs they are running.
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    current: tuple[Message, threading.Thread, list[bool]] | None = None
    abandon = threading.Event()  # the running job's stop: shutdown, or its partition moved to another trainer

    def revoked(_: Consumer, partitions: list[TopicPartition]) -> None:
        if current is not None and any(
            (p.topic, p.partition) == (current[0].topic(), current[0].partition()) for p in partitions
        ):
            log.warning(
                "trigger at offset %d: its partition moved to another trainer, which retries it; abandoning", current[0].offset()
            )
            abandon.set()

    consumer.subscribe([topic_name(settings.kafka.topic_prefix, "train-triggers")], on_revoke=revoked)
    emitter = EventEmitter(settings)
    log.info("trainer consuming %s", topic_name(settings.kafka.topic_prefix, "train-triggers"))
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)  # keeps the group membership alive while a job runs
            if current is not None:
                current = _finish_if_done(consumer, current)
            if msg is None:
                continue
            if (error := msg.error()) is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                continue
            if current is not None:  # a partition assigned mid-job delivered a trigger: it waits its turn
                consumer.seek(position(msg))
                consumer.pause(consumer.assignment())
                continue
            # One job at a time, whatever the number of partitions: every assigned partition pauses
            # (un-fetched triggers wait on the broker) and polling goes on for the group heartbeat.
            consumer.pause(consumer.assignment())
            outcome: list[bool] = []
            abandon = threading.Event()
            worker = threading.Thread(
                target=lambda m=msg, o=outcome, a=abandon: o.append(handle_trigger(m, job, emitter, a, retry)), daemon=True
            )
            worker.start()
            current = (msg, worker, outcome)
    finally:
        abandon.set()
        if current is not None and current[1].is_alive():
            log.warning("shutting down mid-job: trigger at offset %d left uncommitted for retry", current[0].offset())
            current[1].join(timeout=5)
        consumer.close()


def _finish_if_done(
    consumer: Consumer, current: tuple[Message, threading.Thread, list[bool]]
) -> tuple[Message, threading.Thread, list[bool]] | None:
    msg, worker, outcome = current
    if worker.is_alive():
        return current
    partition = position(msg, offset_delta=1)
    owned = any((p.topic, p.partition) == (partition.topic, partition.partition) for p in consumer.assignment())
    # A partition moved to another trainer mid-job is that trainer's to commit: it consumes the trigger
    # again, and the version it would publish exists already (or is published once, by whoever gets there).
    if owned and outcome and outcome[0]:  # the outcome's events are acknowledged (EventEmitter.emit)
        try:
            consumer.commit(offsets=[partition], asynchronous=False)
        except KafkaException as exc:  # the group rebalanced as the job ended: the new owner re-reads the trigger
            log.warning(
                "trigger at offset %d: done, but not committed (%s); its retry finds the version published", msg.offset(), exc
            )
    elif owned:  # abandoned, or its outcome could not be recorded: rewind so the trigger is consumed again
        consumer.seek(position(msg))
    consumer.resume(consumer.assignment())
    return None
