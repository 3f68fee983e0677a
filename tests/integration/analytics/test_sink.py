"""The sink on the real broker: SIGKILL between insert and commit loses nothing and double-counts
nothing; bad records go to the DLQ; `rlhf sql` works through the sink and, once it stops, alone."""

import json
import signal

import pytest
from confluent_kafka import Consumer

from consumers.sink.consumer import GROUP
from schemas import DeadLetter
from schemas.topics import group_id, topic_name
from sdk.admin import group_progress
from tests.integration.analytics.conftest import SinkProcess, produce, rlhf
from tests.integration.analytics.world import build_world

pytestmark = pytest.mark.integration


def committed_offsets(settings, topic: str) -> int:
    k = settings.kafka
    return group_progress(k, group_id(k.topic_prefix, GROUP), [topic]).committed


def dead_letters(settings, expected: int) -> list[DeadLetter]:
    """Every letter until `expected` distinct origins arrived. A batch re-delivered after the crash
    dead-letters its bad records again (at-least-once), so origins, not letters, are distinct."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "dlq-check", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic_name(settings.kafka.topic_prefix, "feedback-dlq")])
    letters: list[DeadLetter] = []
    try:
        for _ in range(60):
            for m in consumer.consume(100, timeout=0.5):
                if not m.error():
                    value = m.value()
                    assert value is not None  # a dead letter always has a value
                    letters.append(DeadLetter.model_validate_json(value))
            if len({origin(d) for d in letters}) >= expected:
                break
    finally:
        consumer.close()
    return letters


def origin(letter: DeadLetter) -> tuple[str, int, int]:
    return letter.origin_topic, letter.origin_partition, letter.origin_offset


def test_sigkill_between_insert_and_commit_loses_and_duplicates_nothing(settings):
    world = build_world(settings, users=300)
    produce(settings, world, duplicates=150, bad=6)
    expected = {t: world.count(t) for t in ("interactions", "feedback", "exposures")}
    expected |= {
        "training_status": world.count("training-status"),
        "model_published": world.count("model-published"),
        "metrics": world.count("metrics"),
        "experiments": world.count("experiments"),
        "dead_letters": 4,
    }  # the sink stores the letters it wrote, too (none for the 2 bad feedback records: the stream worker letters those)
    produced = len(world.events) + 150 + 6

    # 1. A sink that kills itself (SIGKILL) after inserting its first batch, before committing it.
    crashing = SinkProcess(settings, launcher="tests.integration.analytics.dying_sink")
    assert crashing.proc.wait(120) == -signal.SIGKILL, crashing.output()
    after_crash = rlhf(settings, crashing.port, "sql", "table_counts", "--format", "json")  # no sink: opens the chdb path itself
    assert after_crash.returncode == 0, after_crash.stderr
    stored_before_restart = sum(r["rows"] for r in json.loads(after_crash.stdout))
    assert stored_before_restart > 0, "the first batch should be in ClickHouse"
    assert committed_offsets(settings, "feedback") + committed_offsets(settings, "exposures") == 0, "nothing may be committed yet"

    # 2. A normal sink re-reads everything from the last commit (the start): redelivery is harmless.
    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        counts = sink.wait_counts(expected)
        assert counts == expected
        daily = sink.get_json("/sql/variant_daily")
        cols = daily["columns"]
        total = {c: sum(row[cols.index(c)] for row in daily["data"]) for c in ("feedback", "interactions", "exposures")}
        assert total == {
            "feedback": expected["feedback"],
            "interactions": expected["interactions"],
            "exposures": expected["exposures"],
        }, "the materialized view counted a redelivered event twice"

        letters = dead_letters(settings, 4)
        assert len({origin(d) for d in letters}) == 4 and all(d.reason.startswith("sink: ") for d in letters)
        assert {d.origin_topic.removeprefix(settings.kafka.topic_prefix) for d in letters} == {"exposures", "interactions"}

        via_http = rlhf(settings, sink.port, "sql", "table_counts", "--format", "json")  # the sink owns the path: asks it
        assert via_http.returncode == 0 and {r["table"]: r["rows"] for r in json.loads(via_http.stdout)} == counts
        analyzed = rlhf(settings, sink.port, "ab", "analyze")
        assert analyzed.returncode == 0 and "promote variant_a" in analyzed.stdout, analyzed.stdout + analyzed.stderr
    finally:
        assert sink.stop() == 0, sink.output()
    consumed = sum(
        committed_offsets(settings, t)
        for t in ("interactions", "feedback", "exposures", "training-status", "model-published", "metrics", "experiments")
    )
    assert consumed == produced
    alone = rlhf(settings, sink.port, "sql", "table_counts", "--format", "json")
    assert {r["table"]: r["rows"] for r in json.loads(alone.stdout)} == counts
    print(
        f"\nproduced {produced} records ({sum(expected.values())} distinct events, 150 duplicates, 6 bad); "
        f"{stored_before_restart} rows stored before the SIGKILL, none committed; after restart: {counts}; "
        f"{len(letters)} dead letters for the 4 bad records the sink owns (2 bad feedback records: the stream worker's)"
    )
