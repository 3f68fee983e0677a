"""Privacy on the real broker and the sink's ClickHouse.

Erasure: `rlhf privacy forget U`: U's feedback was in a trigger's data; afterwards a rebuild of that
trigger's dataset holds none of U's events, ClickHouse holds no row of U (and stores none of U's
later events, also after the sink restarts), and the registry lists the versions that learned from
U, directly or through a parent.

Redaction: PII of every type planted in query, response and correction (and in a record that fails
validation) reaches neither ClickHouse nor the dataset a trigger rebuilds."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from analytics.clickhouse import open_warehouse
from consumers.trainer.job import data_users
from core.hashing import user_fingerprint
from registry.store import Kind, Manifest, ModelRegistry
from schemas import FeedbackEvent, OffsetRange, TrainTrigger
from schemas.topics import topic_name
from sdk.client import FeedbackClient
from tests.integration.analytics.conftest import SinkProcess, rlhf
from trainers.dataset import build_dataset
from trainers.replay import replay_trigger

pytestmark = pytest.mark.integration
U, V = "u-forget-me", "u-stays"


def feedback(user: str, n: int) -> FeedbackEvent:
    return FeedbackEvent(
        interaction_id=f"i-{user}-{n}",
        user_id=user,
        query=f"How do I export report {n}?",
        response=f"Open Reports, pick report {n}, then Export." if n % 2 else "Please contact support.",
        model_version="v1",
        feedback_type="thumbs_up" if n % 2 else "thumbs_down",
    )


def send(settings, events: list[FeedbackEvent]) -> None:
    with FeedbackClient(settings.kafka.bootstrap_servers, settings.kafka.topic_prefix) as client:
        for event in events:
            client.send("feedback", event, key=event.user_id)


def trigger_over(settings, events: list[FeedbackEvent]) -> TrainTrigger:
    """A trigger naming the whole feedback topic as it is now, and these events, as the stream worker would."""
    topic = topic_name(settings.kafka.topic_prefix, "feedback")
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "t-watermarks"})
    try:
        ranges = []
        for p in range(settings.kafka.partitions):
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high > low:
                ranges.append(OffsetRange(topic=topic, partition=p, start=low, end=high))
    finally:
        consumer.close()
    return TrainTrigger(policy="assistant", model_version="v1", ranges=tuple(ranges), event_ids=tuple(e.event_id for e in events))


UNSETTLED = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)


def watermarks(consumer: Consumer, partition: TopicPartition, timeout: float = 60) -> tuple[int, int]:
    """The partition's offsets, asked again while the broker says a retriable no: a topic the
    producer just created may not have elected its leaders yet (NOT_LEADER_FOR_PARTITION, seen in CI)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() not in UNSETTLED or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def publish(registry: ModelRegistry, kind: Kind, version: str, users: list[str], **lineage) -> None:
    registry.publish(
        kind,
        version,
        lambda d: Manifest(version=version, kind=kind, policy="assistant", status="candidate", data_users=users, **lineage),
    )
    time.sleep(0.01)  # created_at orders parents before children


def rows_of(sink: SinkProcess, user: str) -> dict[str, int]:
    j = sink.get_json(f"/sql/user_rows?user={user}")
    return {table: rows for table, rows in j["data"]}


def wait_for(check, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_forget_removes_a_user_from_training_data_and_clickhouse_and_lists_their_versions(settings):
    before = [feedback(U, n) for n in range(4)] + [feedback(V, n) for n in range(4)]
    send(settings, before)
    trigger = trigger_over(settings, before)
    replayed = replay_trigger(settings, trigger)
    assert {e.user_id for e in replayed} == {U, V}

    # What the trainer would have published from that trigger: a reward model and a policy on it,
    # a child policy of that one (no new data of U's), and a version that never saw U.
    registry = ModelRegistry.of(settings)
    publish(registry, "reward_models", "rm-1", data_users(replayed))
    publish(registry, "policies", "p-1", data_users(replayed), reward_model_version="rm-1", parent_version="base")
    publish(registry, "policies", "p-2", [user_fingerprint(V)], reward_model_version="rm-2", parent_version="p-1")
    publish(registry, "policies", "p-other", [user_fingerprint(V)], reward_model_version="rm-2", parent_version="base")

    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        wait_for(lambda: rows_of(sink, U)["feedback"] == 4, what="U's feedback in ClickHouse")

        forgotten = rlhf(settings, sink.port, "privacy", "forget", U, "--reason", "ticket 42")
        assert forgotten.returncode == 0, forgotten.stderr
        listed = [line.split()[4] for line in forgotten.stdout.splitlines() if line.startswith("trained on their data")]
        assert listed == ["policies/p-1", "policies/p-2", "reward_models/rm-1"]
        assert registry.manifest("policies", "p-2").erased_users == [user_fingerprint(U)]
        assert registry.manifest("policies", "p-other").erased_users == []
        again = rlhf(settings, sink.port, "privacy", "forget", U)  # idempotent
        assert again.returncode == 0 and registry.manifest("policies", "p-1").erased_users == [user_fingerprint(U)]

        # The next rebuild of that trigger's data, and the dataset from it, hold none of U's events.
        rebuilt = replay_trigger(settings, trigger)
        assert rebuilt == [e for e in replayed if e.user_id == V]
        assert build_dataset(rebuilt).summary["events"]["accepted"] == 4

        wait_for(
            lambda: rows_of(sink, U) == {"interactions": 0, "feedback": 0, "exposures": 0, "dead_letters": 0, "erasures": 1},
            what="U's rows deleted",
        )
        send(settings, [feedback(U, 10), feedback(V, 10)])  # U's app still sends: never stored again
        wait_for(lambda: rows_of(sink, V)["feedback"] == 5, what="V's later feedback")
        assert rows_of(sink, U)["feedback"] == 0
    finally:
        assert sink.stop() == 0, sink.output()

    restarted = SinkProcess(settings, port=sink.port)  # the erasure survives a restart
    try:
        restarted.wait_ready()
        send(settings, [feedback(U, 11), feedback(V, 11)])
        wait_for(lambda: rows_of(restarted, V)["feedback"] == 6, what="V's feedback after the restart")
        assert rows_of(restarted, U)["feedback"] == 0
    finally:
        assert restarted.stop() == 0, restarted.output()


PII = {  # type -> a value of it, as a user might type it
    "email": "ann.lee@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "ip": "203.0.113.77",
}


def planted(n: int, pii_type: str, value: str) -> list[FeedbackEvent]:
    user = f"u-pii-{n}"
    event = FeedbackEvent(
        interaction_id=f"i-pii-{n}",
        user_id=user,
        query=f"My {pii_type} is {value}, why was I charged?",
        response=f"I see {value} on file.",
        model_version="v1",
        feedback_type="thumbs_down",
    )
    correction = event.model_copy(
        update={
            "event_id": f"{event.event_id}-fix",
            "feedback_type": "correction",
            "correction": f"Never repeat {value}; open Billing > Charges.",
        }
    )
    return [event, correction]


def test_planted_pii_reaches_neither_clickhouse_nor_a_rebuilt_dataset(settings):
    events = [e for n, (t, v) in enumerate(PII.items()) for e in planted(n, t, v)]
    send(settings, events)
    with FeedbackClient(
        settings.kafka.bootstrap_servers, settings.kafka.topic_prefix
    ) as client:  # fails validation: a dead letter, written by the sink (the interactions topic's DLQ owner)
        client.send_bytes(
            topic_name(settings.kafka.topic_prefix, "interactions"),
            f'{{"user_id": "u-bad", "query": "{PII["email"]}"}}'.encode(),
            "u-bad",
        )

    rebuilt = replay_trigger(settings, trigger_over(settings, events))
    texts = " ".join(f"{e.query} {e.response} {e.correction or ''}" for e in rebuilt)
    data = build_dataset(rebuilt, eval_fraction=0.0)
    texts += " ".join(str(row) for split in (data.train_pairs, data.train_points) for row in split)
    assert all(f"<{t.upper()}>" in texts for t in PII)
    assert not [t for t, v in PII.items() if v in texts or v.replace(" ", "") in texts]

    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        sink.wait_counts({"feedback": len(events)})
        wait_for(lambda: sink.counts().get("dead_letters", 0) >= 1, what="the invalid record's dead letter")
    finally:
        assert sink.stop() == 0, sink.output()
    warehouse = open_warehouse(settings)  # the sink has let go of the embedded database
    try:
        stored = " ".join(
            str(v)
            for table in ("feedback", "interactions", "dead_letters")
            for row in warehouse.query_df(f"SELECT * FROM {table}").itertuples()
            for v in row
        )
    finally:
        warehouse.close()
    assert "<EMAIL>" in stored and "<CARD>" in stored
    assert not [t for t, v in PII.items() if v in stored or v.replace(" ", "") in stored]
