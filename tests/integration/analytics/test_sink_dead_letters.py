"""One dead letter per bad record (issue 33, finding 7), with the stream worker and the sink both
reading the feedback topic on the real broker: the worker owns the feedback DLQ and writes one
letter per bad feedback record, the sink counts and skips them; the sink writes the letters of the
topics it owns (interactions here). Before, both wrote one: 26 letters for 13 bad feedback records."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from consumers.sink.consumer import Sink
from schemas import DeadLetter
from schemas.topics import TOPICS, topic_name
from tests.integration.streams.conftest import client, feedback_event, reader, start_worker  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

BAD = [b"not json", b'{"schema_version": 1, "user_id": "u-bad"}', json.dumps({"feedback_type": "rating"}).encode()]


def test_every_bad_record_gets_one_dead_letter_from_its_topics_owner(settings, warehouse, start_worker, reader, client):  # noqa: F811
    prefix = settings.kafka.topic_prefix
    start_worker()
    sink, stop = Sink(settings, warehouse), threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for n in range(13):
            client.send_bytes(topic_name(prefix, "feedback"), BAD[n % 3], "u-bad")
        for n in range(3):
            client.send_bytes(topic_name(prefix, "interactions"), BAD[n % 3], "u-bad")
        for n in range(5):
            client.send("feedback", feedback_event(n), key=f"u{n}")
        client.flush()

        dlq = reader("feedback-dlq")
        letters = [DeadLetter.model_validate_json(v) for v in dlq.wait_for(16, timeout=120)]
        # The sink has read everything, its own letters included, before we look for a second letter.
        deadline = time.monotonic() + 60
        while sink.stats.messages < 13 + 3 + 5 + 16 and time.monotonic() < deadline:
            time.sleep(0.2)
        letters += [DeadLetter.model_validate_json(v) for v in dlq.poll(2.0)[16:]]
    finally:
        stop.set()
        thread.join(30)
    origins = Counter(d.origin_topic.removeprefix(prefix) for d in letters)
    assert origins == {"feedback": 13, "interactions": 3}, origins
    assert len({(d.origin_topic, d.origin_partition, d.origin_offset) for d in letters}) == 16
    assert all(d.reason.startswith("invalid FeedbackEvent") for d in letters if d.origin_topic.endswith(".feedback"))
    assert all(d.reason.startswith("sink: ") for d in letters if d.origin_topic.endswith(".interactions"))
    assert (sink.stats.dead_letters, sink.stats.skipped_invalid) == (3, 13)
    assert TOPICS["feedback"].dlq_owner == "streams" and TOPICS["interactions"].dlq_owner == "sink"
    stored = warehouse.query_df("SELECT count() AS n FROM dead_letters FINAL")
    assert int(stored["n"].iloc[0]) == 16
