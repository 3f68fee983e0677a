"""librdkafka's queue full on a healthy broker: the SDK spools instead of waiting, re-sends, and
every event arrives, each user's in the order sent (session broker)."""

from __future__ import annotations

import pytest

from core.settings import ProducerSettings
from schemas.topics import topic_name
from sdk.client import FeedbackClient
from tests.integration.sdk.test_outage_drill import fields, read_topic

pytestmark = pytest.mark.integration
N = 20_000


def test_queue_full_spools_then_everything_arrives_in_order(settings, tmp_path):
    client = FeedbackClient(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic_prefix,
        1.0,
        options=ProducerSettings(queue_max_events=100),
        spool_dir=tmp_path / "spool",
    )
    for n in range(N):
        client.feedback(**fields(n))
    assert client.stats().spooled > 0  # the 100-event queue overflowed
    assert client.wait_drained(60), client.stats()
    client.close()
    records = read_topic(
        settings.kafka.bootstrap_servers, topic_name(settings.kafka.topic_prefix, "feedback"), settings.kafka.partitions
    )
    assert {r[2] for r in records} == {f"e{n:08d}".encode() for n in range(N)}
    first: set[bytes] = set()
    last: dict[bytes, int] = {}
    for _, key, event_id in records:
        if event_id not in first:
            first.add(event_id)
            assert int(event_id[1:]) > last.get(key, -1)
            last[key] = int(event_id[1:])
