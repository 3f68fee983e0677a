"""SIGKILL the worker right after it accepts event 70 of a 100-threshold run, before that record's
offset can be committed, and restart it: exactly one trigger follows, covering all 100 events, none
lost or counted twice (duplicates of events accepted before the crash are still recognised after it)."""

import signal
import time

import pytest

from schemas import TrainTrigger
from sdk.admin import group_progress
from streams.app import app_id
from tests.integration.streams.conftest import feedback_event
from trainers.replay import replay_trigger

pytestmark = pytest.mark.integration


def committed(settings) -> int:
    """Feedback records the worker's consumer group has committed, over all partitions."""
    k = settings.kafka
    return group_progress(k, app_id(settings), ["feedback"]).committed


def send(client, events):
    for event in events:
        client.send("feedback", event, key=event.user_id)
    client.flush()


def test_sigkill_after_70_accepted_loses_nothing_and_counts_nothing_twice(settings, start_worker, reader, client):
    events = [feedback_event(n) for n in range(100)]
    worker = start_worker(train_threshold=100, die_after_accepting=70)
    triggers = reader("train-triggers")

    send(client, events[:60])
    deadline = time.monotonic() + 60
    while committed(settings) < 60 and time.monotonic() < deadline:  # processed and committed
        time.sleep(0.2)
    assert committed(settings) == 60
    send(client, events[60:75])  # the worker accepts ten of them and dies before acking the tenth
    assert worker.services["streams"].proc.wait(timeout=60) == -signal.SIGKILL
    send(client, events[75:90])  # while the worker is down

    start_worker(train_threshold=100)
    send(client, events[:5] + events[60:65])  # duplicates from both sides of the crash
    send(client, events[90:])
    trigger = TrainTrigger.model_validate_json(triggers.wait_for(1, timeout=90)[0])
    triggers.poll(3.0)  # a re-emitted or second trigger would show up here
    assert len(triggers.values) == 1
    assert sorted(trigger.event_ids) == sorted(e.event_id for e in events) and len(trigger.event_ids) == 100
    assert replay_trigger(settings, trigger) == [{e.event_id: e for e in events}[i] for i in trigger.event_ids]
