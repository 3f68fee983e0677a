"""250 valid feedback events, 20 invalid records and 30 duplicates through a real worker on the
real broker, threshold 100: exactly 2 triggers (the second held back while the first round's
experiment is open, released by its decision), 20 dead letters with reasons, and each trigger's
offset ranges replay to exactly the accepted events it names."""

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import TrainingError
from schemas import DeadLetter, OffsetRange, TrainingStatus, TrainTrigger, WindowMetrics
from schemas.experiments import Arm, ExperimentDecided, ExperimentStarted
from schemas.topics import topic_name
from tests.integration.streams.conftest import feedback_event
from trainers.replay import replay_accepted, replay_trigger

pytestmark = pytest.mark.integration

GOOD = feedback_event(0).model_dump(mode="json")
INVALID = [
    b"not json",
    json.dumps({**GOOD, "feedback_type": "rating"}).encode(),  # rating missing
    json.dumps({**GOOD, "query": "x" * 5_000}).encode(),  # oversize text
    json.dumps({**GOOD, "schema_version": 3}).encode(),  # a version no reader knows
    json.dumps({**GOOD, "feedback_type": "rating", "rating": "five"}).encode(),
]


def send_batch(client, feedback_topic, valid, invalid, duplicates):
    """Valid events with the invalid records and the duplicates (re-sent after their originals) spread between them."""
    extras = [(feedback_topic, bad, "u-bad") for bad in invalid] + [(feedback_topic, e.to_bytes(), e.user_id) for e in duplicates]
    every = max(1, len(valid) // max(1, len(extras)))
    for n, event in enumerate(valid):
        client.send("feedback", event, key=event.user_id)
        if n % every == every - 1 and extras:
            client.send_bytes(*extras.pop(0))
    for extra in extras:
        client.send_bytes(*extra)
    client.flush()


def test_triggers_dead_letters_and_replay(settings, start_worker, reader, client):
    feedback_topic = topic_name(settings.kafka.topic_prefix, "feedback")
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    valid = [feedback_event(n) for n in range(200)] + [feedback_event(n, timestamp=long_ago) for n in range(200, 250)]
    invalid = [INVALID[n % len(INVALID)] for n in range(20)]
    start_worker(train_threshold=100)
    triggers, dlq, metrics = reader("train-triggers"), reader("feedback-dlq"), reader("metrics")

    send_batch(client, feedback_topic, valid[:100], invalid[:7], valid[:10])
    first = TrainTrigger.model_validate_json(triggers.wait_for(1)[0])
    # The trainer's side: its candidate goes to an experiment, which holds the next trigger back ...
    start, decision = experiment(first)
    client.send("experiments", start, key=first.policy)
    client.send(
        "training-status",
        TrainingStatus(trigger_id=first.trigger_id, policy=first.policy, state="finished", stage="candidate"),
        first.policy,
    )
    send_batch(client, feedback_topic, valid[100:200], invalid[7:14], valid[:5] + valid[100:105])
    assert len(triggers.poll(3.0)) == 1
    client.send("experiments", decision, key=first.policy)  # ... until the decider's word
    client.flush()
    second = TrainTrigger.model_validate_json(triggers.wait_for(2)[1])
    send_batch(client, feedback_topic, valid[200:], invalid[14:], valid[195:205] + valid[:5])

    dead = [DeadLetter.model_validate_json(v) for v in dlq.wait_for(20)]
    triggers.poll(3.0)  # everything after the second crossing is in; nothing more may come
    assert len(triggers.values) == 2 and len(dlq.poll(0.5)) == 20
    assert Counter(d.value for d in dead) == Counter(bad.decode() for bad in invalid)
    assert all(d.reason.startswith("invalid FeedbackEvent: ") and d.origin_topic == feedback_topic for d in dead)
    assert len({(d.origin_partition, d.origin_offset) for d in dead}) == 20

    assert set(first.event_ids) == {e.event_id for e in valid[:100]} and len(first.event_ids) == 100
    assert set(second.event_ids) == {e.event_id for e in valid[:200]} and len(second.event_ids) == 200  # rolling buffer
    assert first.counts == dict(Counter(e.feedback_type for e in valid[:100])) and first.model_version == "v1"
    sent = {e.event_id: e for e in valid}
    for trigger in (first, second):
        assert replay_trigger(settings, trigger) == [sent[i] for i in trigger.event_ids]

    # The old events' window (late by 10 minutes) is reported as deltas that add up to the batch.
    late = [m for m in map(WindowMetrics.model_validate_json, metrics.poll(2.0)) if m.window_start <= long_ago < m.window_end]
    by_type: Counter[str] = Counter()
    for m in late:
        by_type[m.feedback_type] += m.count
    assert by_type == Counter(e.feedback_type for e in valid[200:])
    assert sum(m.rating_sum for m in late) == sum(e.rating or 0 for e in valid[200:])


def experiment(trigger: TrainTrigger) -> tuple[ExperimentStarted, ExperimentDecided]:
    ids = {"experiment_id": f"policy-ab:v-{trigger.trigger_id}", "policy": trigger.policy, "trigger_id": trigger.trigger_id}
    arms = (Arm(name="control", model_version="v1", weight=1.0), Arm(name="variant_a", model_version="v2", weight=1.0))
    start = ExperimentStarted(
        **ids, control_version="v1", treatment_version="v2", arms=arms, salt="s1", horizon_users=10, horizon_s=60.0
    )
    return start, ExperimentDecided(**ids, outcome="rollback", serving_version="v1")


def test_replay_refuses_unreadable_or_incomplete_triggers(settings, client):
    events = [feedback_event(n) for n in range(3)]
    for event in events:
        client.send("feedback", event, key="same-user")  # one key: one partition, offsets 0..2
    client.flush()
    topic = topic_name(settings.kafka.topic_prefix, "feedback")
    partition = next(p for p in range(settings.kafka.partitions) if _high(settings, topic, p) == 3)

    def trigger(start, end, ids):
        return TrainTrigger(
            policy="assistant",
            model_version="v1",
            ranges=(OffsetRange(topic=topic, partition=partition, start=start, end=end),),
            event_ids=ids,
        )

    assert replay_trigger(settings.kafka.bootstrap_servers, trigger(0, 3, (events[2].event_id,))) == [events[2]]
    with pytest.raises(TrainingError, match="empty range"):
        replay_trigger(settings, trigger(1, 1, (events[0].event_id,)))
    with pytest.raises(TrainingError, match=r"not readable: the partition now holds \[0, 3\)"):
        replay_trigger(settings, trigger(0, 9, (events[0].event_id,)))
    with pytest.raises(TrainingError, match="1 of 2 event ids are not in its ranges"):
        replay_trigger(settings, trigger(1, 3, (events[0].event_id, events[1].event_id)))


def test_the_feedback_between_triggers_replays_as_the_stream_app_accepts_it(settings, client):
    # What no trigger names by id (an A/B test held triggers back): one policy's valid events, each once.
    events = [feedback_event(n) for n in range(3)] + [feedback_event(3, policy="other")]
    for event in events[:2]:
        client.send("feedback", event, key="same-user")  # one key: one partition, offsets in order
    client.send_bytes(topic_name(settings.kafka.topic_prefix, "feedback"), b"not json", "same-user")
    for event in (events[0], events[3], events[2]):  # a retried copy, another policy's event
        client.send("feedback", event, key="same-user")
    client.flush()
    topic = topic_name(settings.kafka.topic_prefix, "feedback")
    partition = next(p for p in range(settings.kafka.partitions) if _high(settings, topic, p) == 6)
    ranges = [OffsetRange(topic=topic, partition=partition, start=0, end=6)]

    assert replay_accepted(settings.kafka.bootstrap_servers, "assistant", ranges) == events[:3]
    assert replay_accepted(settings.kafka.bootstrap_servers, "other", ranges) == [events[3]]
    assert replay_accepted(settings.kafka.bootstrap_servers, "assistant", ranges, erased=frozenset({events[1].user_id})) == [
        events[0],
        events[2],
    ]
    with pytest.raises(TrainingError, match=r"not readable: the partition now holds \[0, 6\)"):
        replay_accepted(settings, "assistant", [OffsetRange(topic=topic, partition=partition, start=2, end=9)])


def _high(settings, topic, partition, wait_s: float = 30.0):
    """The partition's high watermark; a just-created topic may not have its leader yet
    (NOT_LEADER_FOR_PARTITION), so ask again until `wait_s` has passed."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "unused"})
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()
