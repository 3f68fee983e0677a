"""The trainer consumer's outcome rule, without a broker: a trigger counts as done (its offset may be
committed) only when its outcome's events were acknowledged."""

from __future__ import annotations

import threading

from confluent_kafka import Message

from consumers.emitter import EventEmitter
from consumers.trainer.consumer import RetryPolicy, handle_trigger
from core.errors import DeliveryError, TrainingError
from schemas import DeadLetter, OffsetRange, TrainTrigger

TRIGGER = TrainTrigger(
    policy="assistant", model_version="base", ranges=(OffsetRange(topic="f", partition=0, start=0, end=10),), event_ids=("e1",)
)


class RecordingEmitter(EventEmitter):
    """Stands in for EventEmitter (no producer): records what would be written, or fails like an unreachable broker."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.sent: list[tuple[str, object]] = []

    def emit(self, topic: str, event, key: str | None = None) -> None:
        if self.fail:
            raise DeliveryError(f"{topic}: broker unreachable")
        self.sent.append((topic, event))

    def status(self, trigger, state, stage="", message="", metrics=None) -> None:
        self.emit("training-status", (state, message))


def message(value: bytes) -> Message:
    return Message(topic="rlhf.train-triggers", partition=0, offset=7, key=b"assistant", value=value)


def failing_job(trigger, emitter, stop):
    raise TrainingError("its offset ranges hold no accepted feedback")


def test_a_failed_job_is_recorded_and_dead_lettered():
    emitter = RecordingEmitter()
    assert handle_trigger(message(TRIGGER.to_bytes()), failing_job, emitter, threading.Event(), RetryPolicy(attempts=1)) is True
    topics = [t for t, _ in emitter.sent]
    assert topics == ["training-status", "train-triggers-dlq"]
    letter = emitter.sent[1][1]
    assert isinstance(letter, DeadLetter) and letter.origin_offset == 7 and "no accepted feedback" in letter.reason


def test_an_unacknowledged_outcome_leaves_the_trigger_uncommitted():
    emitter = RecordingEmitter(fail=True)
    outcome = handle_trigger(
        message(TRIGGER.to_bytes()), failing_job, emitter, threading.Event(), RetryPolicy(attempts=1, first_backoff_s=0)
    )
    assert outcome is False


def test_a_corrupt_trigger_goes_to_the_dead_letter_topic():
    emitter = RecordingEmitter()
    ran = []
    assert handle_trigger(message(b"{not json"), lambda *a: ran.append(a), emitter, threading.Event(), RetryPolicy()) is True
    assert not ran and [t for t, _ in emitter.sent] == ["train-triggers-dlq"]
