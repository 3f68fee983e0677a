"""The sink's lag sampler on the real broker: one row per (group, topic) the registry names."""

from __future__ import annotations

import pytest

from consumers.sink.lag import lag_rows
from schemas.topics import CONSUMER_GROUPS, TOPICS
from tests.integration.consumers.test_trainer import produce_feedback

pytestmark = pytest.mark.integration


def test_every_group_topic_pair_is_sampled_and_unread_events_count_as_lag(settings):
    produce_feedback(settings, 7, seed=3)
    rows = {(r["consumer_group"], r["topic"]): r for r in lag_rows(settings)}
    expected = {
        (group, spec.name) for process, group in CONSUMER_GROUPS.items() for spec in TOPICS.values() if process in spec.consumers
    }
    assert set(rows) == expected
    for group in ("streams", "sink"):  # nobody has consumed yet: everything produced is lag
        row = rows[(group, "feedback")]
        assert row["end_offset"] == 7 and row["committed_offset"] == 0 and row["lag"] == 7
    assert rows[("trainers", "train-triggers")]["lag"] == 0
